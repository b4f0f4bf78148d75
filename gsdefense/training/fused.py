"""Train M configurations of one job at once: the engine behind ``hydra/launcher=fused``.

Members share the data, architecture, initialisation, schedule and seed, hence
the batches: the sampler depends only on (n, batch size, seed), so every member
sees the same Poisson (DP) or shuffled (vanilla) batches as its separate run
would. They differ in ``dp.clip``, ``dp.noise`` (validated: ``noise_std`` is folded into it), ``dp.delta``
and ``optimizer.lr``.

Per step, for member m with clip C_m, noise σ_m and its own noise generator:

    g_m = ( Σ_{i∈B} g_mi · min(1, C_m / (‖g_mi‖ + 1e-6)) + N(0, (σ_m C_m)² I) ) / ⌊q·n⌋

computed for all members by one forward and one backward of the stacked model
(book-keeping, ``per_sample.BookKeepingClippedSum.members``), then one stacked
optimizer step. Each member's noise is drawn per parameter, in the separate
run's order, from a generator seeded with the member's own ``noise_seed``, and
each member books its steps with its own Opacus accountant, so a member computes
what its separate run computes (to float rounding: batched kernels sum in a
different order). Evaluation, telemetry and checkpoints stay per member.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import dataclass

import torch
from opacus import PrivacyEngine
from torch import nn
from torch.nn import functional as F

from gsdefense.telemetry import COLUMNS, GradientProbe
from gsdefense.telemetry_batches import BatchTelemetry
from gsdefense.training.accounting import PrivateTraining
from gsdefense.training.batches import PaddedBatch, poisson_batches, poisson_plan, use_fixed_shape, vanilla_batches
from gsdefense.training.checkpoint import Checkpointer
from gsdefense.training.dp import DPSGDConfig
from gsdefense.training.engine import check_dp_model, poisson_rate
from gsdefense.training.loop import Evaluate, TrainResult, epoch_range
from gsdefense.training.optim import AdamConfig, SGDConfig
from gsdefense.training.per_sample import BookKeepingClippedSum
from gsdefense.training.stacked import load_member, stack_models
from gsdefense.training.stacked_optim import StackedOptimizer

log = logging.getLogger(__name__)


@dataclass
class FusedMember:
    """One configuration of a fused group, with its per-run hooks (see ``loop.train``)."""

    model: nn.Module  # its initial weights; holds the trained weights afterwards
    optimizer: SGDConfig | AdamConfig
    dp: DPSGDConfig | None
    noise_seed: int
    desc: str = "train"
    evaluate: Evaluate | None = None
    probe: GradientProbe | None = None
    checkpointer: Checkpointer | None = None


class _Member:
    """Training-time state of one member: generators, accountant, result."""

    def __init__(self, spec: FusedMember, *, sample_rate: float, device: torch.device) -> None:
        self.spec, self.result = spec, TrainResult(model=spec.model)
        self.active = True
        self.noise_gen = self.private = None
        if spec.dp is not None:
            self.noise_gen = torch.Generator(device=device).manual_seed(spec.noise_seed)
            engine = PrivacyEngine(accountant=spec.dp.accountant)
            self.private = PrivateTraining(module=spec.model, optimizer=None, engine=engine,
                                           sample_rate=sample_rate, delta=spec.dp.delta)  # fmt: skip
        if spec.probe is not None:
            spec.probe.attach(spec.model)

    def generators(self, sampler: torch.Generator) -> dict[str, torch.Generator]:
        probe = self.spec.probe
        gens = {"sampler": sampler, "noise": self.noise_gen, "probe_noise": probe.noise_gen if probe else None}
        return {k: g for k, g in gens.items() if g is not None}


def train_fused(
    members: list[FusedMember], x: torch.Tensor, y: torch.Tensor, *, seed: int, desc: str = "train"
) -> list[TrainResult]:
    """Train every member on ``(x, y)``; returns one ``TrainResult`` per member, as ``loop.train`` would."""
    first = members[0]
    dp, schedule = first.dp, first.optimizer
    device, n = x.device, len(y)
    if dp is not None:
        check_dp_model(first.model)  # as every route does; members share the architecture
    sample_rate, expected_batch = poisson_rate(n, schedule.batch_size)
    states = [_Member(m, sample_rate=sample_rate, device=device) for m in members]
    stacked = stack_models([m.model for m in members])
    params = [p for p in stacked.parameters() if p.requires_grad]
    optimizer = StackedOptimizer(params, [m.optimizer for m in members])
    engine = BookKeepingClippedSum(stacked) if dp is not None else None
    clips = torch.tensor([m.dp.clip for m in members], device=device)[:, None] if dp is not None else None
    scale = 1.0 / expected_batch
    sampler = torch.Generator(device=device).manual_seed(seed)
    step, first_epoch, start = 0, 1, time.perf_counter()
    resumed = _resume(states, stacked, optimizer, sampler)
    if resumed is not None:
        step, first_epoch = resumed["step"], resumed["epoch"] + 1
        start -= resumed["seconds"]
    probe_every = first.probe.cfg.every_n_steps if first.probe is not None else None
    shared = _batch_telemetry(members, y, stacked)
    desc = f"{desc} fused×{len(members)}"
    for epoch in epoch_range(first_epoch, schedule.epochs, desc):
        stacked.train()
        if dp is None:
            batches = vanilla_batches(n, schedule.batch_size, generator=sampler, device=device)
        elif use_fixed_shape(dp.fixed_shape, device):
            batches = poisson_plan(n, sample_rate, generator=sampler, device=device)
        else:
            batches = poisson_batches(n, sample_rate, generator=sampler, device=device)
        loss_sum = torch.zeros(len(members), device=device)
        seen = 0
        if shared is not None:
            shared.reset()
        for batch in batches:
            idx, weight, size = (batch.idx, batch.weight, batch.size) if isinstance(batch, PaddedBatch) else (
                batch, None, len(batch))  # fmt: skip
            if shared is not None:
                shared.arm()
            if dp is None:
                (grads, losses), norms = _mean_gradients(stacked, params, x[idx], y[idx]), None
            else:
                grads, losses, norms = _private_gradients(engine, states, x[idx], y[idx], weight, clips=clips,
                                                          scale=scale)  # fmt: skip
            if shared is not None:  # the forward above ran at the pre-update parameters; norms: what DP clipped with
                shared.record_captured(idx, weight, norms)
            optimizer.step(grads)
            loss_sum += losses
            seen += size
            step += 1
            if probe_every and step % probe_every == 0:
                for k, st in enumerate(states):
                    if st.active:
                        model = load_member(stacked, k, st.spec.model)
                        row = st.spec.probe.probe_row(model)
                        st.result.step_telemetry.append({"epoch": epoch, "step": step, **row})
        train_loss = (loss_sum / max(seen, 1)).tolist()
        elapsed = time.perf_counter() - start
        rows = shared.end_epoch() if shared is not None else [None] * len(states)
        for k, st in enumerate(states):
            if st.active:
                _end_epoch(st, k, stacked, epoch=epoch, train_loss=train_loss[k], elapsed=elapsed, telemetry=rows[k])
        _save(states, stacked, optimizer, sampler, epoch=epoch, step=step, elapsed=elapsed, last=schedule.epochs)
        active = sum(st.active for st in states)
        if not sys.stderr.isatty():
            log.info("%s epoch %d/%d: %d of %d members training", desc, epoch, schedule.epochs, active, len(states))
        if not active:
            break  # every member diverged
    if shared is not None:
        shared.detach()
    for k, st in enumerate(states):
        if st.active:
            load_member(stacked, k, st.spec.model)
        if st.spec.probe is not None:
            st.spec.probe.detach()
        st.spec.model.eval()
    return [st.result for st in states]


def _batch_telemetry(members: list[FusedMember], y: torch.Tensor, stacked) -> BatchTelemetry | None:
    """One accumulator for every member's batch telemetry (telemetry.mode=batches), hooked on the stacked model.

    It draws from the first member's telemetry generator: every member's separate run draws that same stream.
    """
    probe = members[0].probe
    if probe is None or probe.batches is None:
        return None
    clips = [m.dp.clip if m.dp is not None else None for m in members]
    noises = [m.dp.noise if m.dp is not None else None for m in members]
    shared = BatchTelemetry(y=y, is_poison=probe.batches.is_poison, clips=clips, noises=noises,
                            generator=probe.noise_gen)  # fmt: skip
    shared.attach(stacked)
    return shared


def _mean_gradients(stacked, params, x, y) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Vanilla: every member's gradient of its mean batch loss (members share no parameters)."""
    out = stacked(x)
    losses = F.cross_entropy(out.reshape(-1, out.shape[-1]), y.repeat(len(out)), reduction="none").view(len(out), -1)
    grads = torch.autograd.grad(losses.mean(1).sum(), params)
    return list(grads), losses.detach().sum(1)


def _private_gradients(engine, states, x, y, weight, *, clips, scale) -> tuple[list, torch.Tensor, torch.Tensor | None]:
    """DP: clipped sums for all members, then each member's own noise and accountant step; also returns the
    members' whole-model per-sample norms (M, B) the clipping used."""
    norms = None
    if len(x):
        sums, losses, norms = engine.members(x, y, clip=clips, scale=scale, weight=weight)
    else:  # an empty Poisson batch is still a step: the update is pure noise
        sums = [torch.zeros_like(p) for p in engine.model.parameters() if p.requires_grad]
        losses = torch.zeros(len(states), device=x.device)
    for k, st in enumerate(states):
        dp = st.spec.dp
        std = dp.noise * dp.clip * scale
        if std > 0:
            for s in sums:
                s[k].add_(torch.normal(mean=0.0, std=std, size=s[k].shape, device=s.device, generator=st.noise_gen))
        st.private.engine.accountant.step(noise_multiplier=dp.noise, sample_rate=st.private.sample_rate)
    return sums, losses, norms


def _end_epoch(
    st: _Member, k: int, stacked, *, epoch: int, train_loss: float, elapsed: float, telemetry: dict | None
) -> None:
    """The member's history row, exactly as ``loop.train`` writes it; a non-finite member stops."""
    spec, result = st.spec, st.result
    row: dict = {"epoch": epoch, "train_loss": train_loss, "elapsed_seconds": elapsed}
    if st.private is not None:
        result.epsilon = st.private.epsilon()
        row["noise_std"] = spec.dp.noise * spec.dp.clip
    row["epsilon"] = result.epsilon
    model = load_member(stacked, k, spec.model).eval()
    if not math.isfinite(train_loss) or not all(torch.isfinite(p).all() for p in model.parameters()):
        result.status, result.diverged_epoch, st.active = "diverged", epoch, False
        result.history.append(row)
        log.warning("%s: loss became non-finite at epoch %d; this member stops", spec.desc, epoch)
        return
    if spec.evaluate is not None:
        with torch.no_grad():
            row.update(spec.evaluate(model))
    if spec.probe is not None and (epoch % spec.probe.cfg.every_n_epochs == 0 or epoch == spec.optimizer.epochs):
        row.update(dict.fromkeys(COLUMNS) | telemetry if telemetry is not None else spec.probe.measure(model))
    result.history.append(row)


def _save(states, stacked, optimizer, sampler, *, epoch: int, step: int, elapsed: float, last: int) -> None:
    """Each member's checkpoint holds its own slice; all members are saved at the same epoch."""
    checkpointers = [st.spec.checkpointer for st in states]
    if any(ck is None for ck in checkpointers) or not (checkpointers[0].due(epoch) or epoch == last):
        return  # one decision for the whole group: a resume needs every member at the same epoch
    for k, st in enumerate(states):
        ck = st.spec.checkpointer
        ck.save(
            {
                "fused": True,
                "epoch": epoch,
                "step": step,
                "seconds": elapsed,
                "model": {n: p[k].detach().clone() for n, p in stacked.body.named_parameters()},
                "optimizer": optimizer.member_state(k),
                "accountant": st.private.engine.accountant.state_dict() if st.private else None,
                "history": st.result.history,
                "step_telemetry": st.result.step_telemetry,
                "epsilon": st.result.epsilon,
                "status": [st.result.status, st.result.diverged_epoch, st.active],
                **{name: gen.get_state() for name, gen in st.generators(sampler).items()},
            }
        )


def _resume(states, stacked, optimizer, sampler) -> dict | None:
    """Continue from the members' checkpoints when every member has one from the same epoch."""
    if any(st.spec.checkpointer is None for st in states):
        return None
    saved = [st.spec.checkpointer.load() for st in states]
    if any(s is None or not s.get("fused") for s in saved) or len({s["epoch"] for s in saved}) != 1:
        if any(s is not None for s in saved):
            log.warning("fused members' checkpoints are missing or out of step; the group starts over")
        return None
    with torch.no_grad():
        for name, p in stacked.body.named_parameters():
            p.copy_(torch.stack([s["model"][name] for s in saved]).to(p.device))
    optimizer.load_member_states([s["optimizer"] for s in saved])
    for st, s in zip(states, saved):
        if st.private is not None:
            st.private.engine.accountant.load_state_dict(s["accountant"])
        for name, gen in st.generators(sampler).items():
            gen.set_state(s[name])
        st.result.history, st.result.step_telemetry, st.result.epsilon = s["history"], s["step_telemetry"], s["epsilon"]
        st.result.status, st.result.diverged_epoch, st.active = s["status"]
    return saved[0]
