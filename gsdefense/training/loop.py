"""One training loop for vanilla and DP training, on tensors already on the device.

Batches are index tensors drawn on the device (``batches``): a shuffled partition per epoch for
vanilla training, Poisson samples for DP-SGD (Binomial(n, q) sizes, then uniform subsets: the
distribution of independent Bernoulli(q) masks), padded to one shape for the hook-free DP engines
(``dp.fixed_shape``; exact: padding has weight 0). No per-sample Python runs inside an epoch, and
no per-step host read of a batch size. ``lr``/``mlp`` models train through ``training.chain``.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from gsdefense.telemetry import GradientProbe
from gsdefense.training import fast_dp
from gsdefense.training.batches import PaddedBatch, poisson_batches, poisson_plan, use_fixed_shape, vanilla_batches
from gsdefense.training.chain import Chain
from gsdefense.training.checkpoint import Checkpointer
from gsdefense.training.dp import DPSGDConfig, private_training
from gsdefense.training.fast_dp import FastDPOptimizer
from gsdefense.training.optim import OPTIMIZERS, AdamConfig, SGDConfig, plain_sgd_lr

log = logging.getLogger(__name__)

Evaluate = Callable[[nn.Module], dict[str, float | None]]


@dataclass
class TrainResult:
    model: nn.Module
    history: list[dict] = field(default_factory=list)
    status: str = "ok"  # ok | diverged
    diverged_epoch: int | None = None
    epsilon: float | None = None
    step_telemetry: list[dict] = field(default_factory=list)  # rows every ``every_n_steps`` steps
    accountant_history: list = field(default_factory=list)


def epoch_range(first: int, total: int, desc: str):
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        return tqdm(range(first, total + 1), desc=desc, leave=False, initial=first - 1, total=total)
    return range(first, total + 1)


WATCHED = {"train_loss": "loss", "clean_acc": "clean_acc", "asr": "ASR", "epsilon": "ε"}


def log_epoch(desc: str, epoch: int, epochs: int, row: dict) -> None:
    """The few numbers a person watches at INFO; the whole row (telemetry included) at DEBUG."""
    shown = ", ".join(f"{name} {row[key]:.4g}" for key, name in WATCHED.items() if isinstance(row.get(key), float))
    log.info("%s epoch %d/%d: %s", desc, epoch, epochs, shown)
    if log.isEnabledFor(logging.DEBUG):
        log.debug("%s epoch %d row: %s", desc, epoch, {k: v for k, v in row.items() if v is not None})


def train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    optimizer_cfg: SGDConfig | AdamConfig,
    dp: DPSGDConfig | None,
    seed: int,
    evaluate: Evaluate | None = None,
    probe: GradientProbe | None = None,
    checkpointer: Checkpointer | None = None,
    accountant_history: list | None = None,
    keep_accountant: bool = False,
    noise_seed: int | None = None,
    desc: str = "train",
) -> TrainResult:
    """Train ``model`` on ``(x, y)`` for ``optimizer_cfg.epochs`` epochs.

    ``evaluate(model)`` runs after each epoch; its keys join that epoch's row in
    the history, as do ``probe``'s gradient telemetry columns. A non-finite epoch
    loss stops training with status ``diverged``. With ``checkpointer``, training
    resumes from its last checkpoint and saves a new one every few epochs.
    ``accountant_history`` seeds the DP accountant with earlier private phases;
    ``keep_accountant`` returns its history in ``result.accountant_history``.
    The DP noise stream is seeded with ``noise_seed`` (default ``seed + 1``).
    """
    device = x.device
    n = len(y)
    sampler = torch.Generator(device=device).manual_seed(seed)
    optimizer = OPTIMIZERS.builder(optimizer_cfg)(optimizer_cfg, model.parameters())
    private = None
    module = model
    noise_gen = None
    if probe is not None:
        probe.attach(model)
    if dp is not None:
        noise_gen = torch.Generator(device=device).manual_seed(seed + 1 if noise_seed is None else noise_seed)
        private = private_training(
            model, optimizer, cfg=dp, n_train=n, batch_size=optimizer_cfg.batch_size, noise_generator=noise_gen
        )
        module, optimizer = private.module, private.optimizer
        if probe is not None:  # these engines run the forward under vmap, where a hook sees no batch
            probe.capture_by_forward = getattr(optimizer, "mode", dp.grad_sample_mode) in ("vmap", "functorch")
        if accountant_history:
            private.engine.accountant.history = [tuple(h) for h in accountant_history]

    fast = isinstance(optimizer, FastDPOptimizer)  # hook-free DP: one call does clip, noise and step
    if fast:
        optimizer.bind(x)
    # vanilla training of lr/mlp: the closed-form gradient (training.chain), autograd's to float rounding
    chain = Chain.of(model) if private is None and fast_dp.CHAIN else None
    direct_lr = plain_sgd_lr(optimizer) if chain is not None else None  # the chain applies plain SGD's step itself
    result = TrainResult(model=model)
    start = time.perf_counter()
    step, first_epoch = 0, 1
    generators = {"sampler": sampler, "noise": noise_gen, "probe_noise": probe.noise_gen if probe else None}
    state = None if checkpointer is None else checkpointer.load(  # validated against this run: None if unusable
        model=model, optimizer=optimizer, accountant=private.engine.accountant if private else None,
        generators=generators, epochs=optimizer_cfg.epochs)  # fmt: skip
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if private is not None:
            private.engine.accountant.load_state_dict(state["accountant"])
            if hasattr(optimizer, "load_extra_state"):
                optimizer.load_extra_state(state["optimizer_extra"])
        for name, gen in generators.items():
            if gen is not None:
                gen.set_state(state[name])
        result.history, result.step_telemetry = state["history"], state["step_telemetry"]
        result.epsilon, step, first_epoch = state["epsilon"], state["step"], state["epoch"] + 1
        start -= state["seconds"]
    probe_every = probe.cfg.every_n_steps if probe is not None else None
    for epoch in epoch_range(first_epoch, optimizer_cfg.epochs, desc):
        module.train()
        if private is None:
            batches = vanilla_batches(n, optimizer_cfg.batch_size, generator=sampler, device=device)
        elif fast and use_fixed_shape(dp.fixed_shape, device):
            batches = poisson_plan(n, private.sample_rate, generator=sampler, device=device)
        else:
            batches = poisson_batches(n, private.sample_rate, generator=sampler, device=device)
        loss_sum = torch.zeros((), device=device)
        seen = 0
        if probe is not None:
            probe.begin_epoch()
        for batch in batches:
            idx, weight, size = (batch.idx, batch.weight, batch.size) if isinstance(batch, PaddedBatch) else (
                batch, None, len(batch))  # fmt: skip
            optimizer.zero_grad(set_to_none=True)
            if probe is not None:
                probe.begin_step(model, x, idx)
            xb, yb = x.index_select(0, idx), y.index_select(0, idx)
            if fast:
                loss_sum += optimizer.private_step(xb, yb, weight, rows=idx)
                seen += size
            elif chain is not None and len(idx):
                loss_sum += chain.mean_gradients(xb, yb, lr=direct_lr)
                seen += len(idx)
                if direct_lr is None:
                    optimizer.step()
            else:
                out = module(xb)
                if len(idx):
                    loss = F.cross_entropy(out, yb)
                    loss_sum += loss.detach() * len(idx)
                    seen += len(idx)
                else:
                    # An empty Poisson batch is still a DP step: the update is pure noise.
                    loss = out.sum() * 0.0
                loss.backward()
                optimizer.step()
            step += 1
            if probe is not None:  # the per-sample norms the DP update clipped with, still on the device
                probe.end_step(idx, weight, norms=getattr(optimizer, "last_norms", None))
            if probe_every and step % probe_every == 0:
                result.step_telemetry.append({"epoch": epoch, "step": step, **probe.probe_row(model)})
        train_loss = (loss_sum / max(seen, 1)).item()
        row: dict[str, float | int | None] = {"epoch": epoch, "train_loss": train_loss}
        row["elapsed_seconds"] = time.perf_counter() - start  # cumulative since the run started
        if private is not None:
            result.epsilon = private.epsilon()
            row["noise_std"] = optimizer.noise_multiplier * optimizer.max_grad_norm  # the std used this epoch
            if hasattr(optimizer, "end_epoch"):
                optimizer.end_epoch()
        row["epsilon"] = result.epsilon
        if not math.isfinite(train_loss) or not all(torch.isfinite(p).all() for p in model.parameters()):
            result.status, result.diverged_epoch = "diverged", epoch
            result.history.append(row)
            log.warning("%s: loss became non-finite at epoch %d; stopping", desc, epoch)
            break
        if evaluate is not None:
            module.eval()
            with torch.no_grad():
                row.update(evaluate(model))
        if probe is not None and (epoch % probe.cfg.every_n_epochs == 0 or epoch == optimizer_cfg.epochs):
            row.update(probe.measure(model))
        result.history.append(row)
        if checkpointer is not None and (checkpointer.due(epoch) or epoch == optimizer_cfg.epochs):
            checkpointer.save(
                {
                    "epoch": epoch,
                    "step": step,
                    "seconds": time.perf_counter() - start,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "accountant": private.engine.accountant.state_dict() if private else None,
                    "optimizer_extra": optimizer.extra_state() if hasattr(optimizer, "extra_state") else None,
                    "history": result.history,
                    "step_telemetry": result.step_telemetry,
                    "epsilon": result.epsilon,
                    **{name: gen.get_state() for name, gen in generators.items() if gen is not None},
                }
            )
        if not sys.stderr.isatty():
            log_epoch(desc, epoch, optimizer_cfg.epochs, row)
    if probe is not None:
        probe.detach()
    if private is not None:
        if keep_accountant:
            result.accountant_history = [list(h) for h in private.engine.accountant.history]
        if not fast:
            module._close()  # drop Opacus hooks so the plain model can be evaluated and saved
    model.eval()
    return result
