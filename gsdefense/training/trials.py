"""Retraining trials trained together: M trials as the M members of one stacked model (Poison Frogs).

Each trial resumes the same pretrained weights and retrains on the clean training set (the rows its defense
kept) plus its own extra rows (poisons). One forward and one backward of a ``StackedModel`` per step serve every
member; each member has its own rows, its own DP noise generator, accountant and evaluation, and leaves the
stack once its verdict is known. A trial's batches are defined per trial, so a trial computes the same whether
it trains alone (``TrialRunner.retrain``) or with others (to float rounding of the batched kernels):

* DP-SGD: q = 1/⌈n/B⌉ for the clean set's n rows (before any defense) and round(1/q) steps per epoch. Per
  step the clean rows are Poisson-sampled by one sampler seeded with ``seed`` (exactly ``loop.poisson_batches``),
  a member keeps those its defense kept, and each of its k extra rows joins independently with probability q,
  from the member's own batch generator (a (steps, k) draw of uniforms per epoch). Every row of the member's
  set is so in each batch independently with probability q: Poisson sampling at rate q, which its accountant
  books as (σ, q). The sum is divided by the member's expected batch size E_m = ⌊q·n_m⌋, n_m = its rows.
* Vanilla: the clean rows are shuffled and split into batches of B (``loop.vanilla_batches``); each extra row
  joins the batch of a uniformly random clean position (member's generator), so it is seen once per epoch and
  lands in a batch with probability ∝ its size, as in a shuffle of clean + extra rows.

Without extra rows or defense, a trial's batches, noise and ε are exactly ``loop.train``'s on the clean set.

Per step, member m's rows are the step's clean rows then its chosen extras, padded to the widest member, with
mask μ_mi (0: padding or removed by its defense); by book-keeping (``per_sample``), for member m

    g_m = Σ_i μ_mi · min(1, C / (‖g_mi‖ + 1e-6)) · g_mi / E_m  +  N(0, (σ_m·C/E_m)² I)  (vanilla: masked mean)

with the noise drawn per parameter from the member's generator, as ``fast_dp`` draws it. ``dp=adaptive``:
σ_m follows member m's own mean clipped norm of the previous epoch (Hong et al. §7.2), and ε is None.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import torch
from opacus.accountants import RDPAccountant, create_accountant
from torch import nn

from gsdefense.errors import ConfigError
from gsdefense.training.accounting import rdp_epsilon
from gsdefense.training.adaptive import AdaptiveDPConfig
from gsdefense.training.engine import check_dp_model, poisson_rate, steps_per_epoch
from gsdefense.training.loop import Evaluate, TrainResult, poisson_batches, vanilla_batches
from gsdefense.training.per_sample import bk_unsupported
from gsdefense.training.stacked import load_member
from gsdefense.training.trial_stack import (
    Member,
    Stack,
    TrialSpec,
    chosen_extras,
    private_grads,
    step_rows,
    vanilla_grads,
)

__all__ = ["Trial", "TrialSpec", "check_stackable", "train_trials"]  # TrialSpec lives in trial_stack


@dataclass
class Trial:
    """A retraining trial as an attack states it: its extra rows, per-epoch evaluation, name (seeds it)."""

    x: torch.Tensor
    y: torch.Tensor
    desc: str
    evaluate: Evaluate | None = None


def check_stackable(model: nn.Module) -> None:
    """ConfigError unless every trainable layer has a stacked twin (Linear, Conv2d, GroupNorm)."""
    reason = bk_unsupported(model)
    if reason is not None:
        raise ConfigError("model", f"retraining trials train as a stacked model, but {reason}.",
                          "use model=lr, mlp, cnn or resnet18.")  # fmt: skip


def _epsilon(accountant, delta: float, memo: dict) -> float:
    """The accountant's ε, memoised: members with equal histories share one computation."""
    key = (type(accountant).__name__, tuple(tuple(h) for h in accountant.history), delta)
    if key not in memo:
        if isinstance(accountant, RDPAccountant):
            memo[key] = rdp_epsilon(accountant.history, delta=delta)
        else:
            memo[key] = float(accountant.get_epsilon(delta=delta))
    return memo[key]


def _end_epoch(stack: Stack, epoch: int, train_loss: list, *, dp, last: bool, memo: dict, elapsed: float) -> list:
    """Each member's history row, as ``loop.train`` writes it; the positions of the members that go on."""
    finite = torch.stack([torch.isfinite(p).flatten(1).all(1) for p in stack.params]).all(0).tolist()
    adaptive = isinstance(dp, AdaptiveDPConfig)
    if adaptive:  # σ_next = σ × mean clipped norm / C (NoiseTracker's rule), unchanged without samples
        means, counts = (stack.norm_sum / stack.norm_count.clamp_min(1)).tolist(), stack.norm_count.tolist()
        stack.norm_sum.zero_(), stack.norm_count.zero_()
    going, first = [], {}
    for k, st in enumerate(stack.members):
        spec, result = st.spec, st.result
        row: dict = {"epoch": epoch, "train_loss": train_loss[k], "elapsed_seconds": elapsed}
        if dp is not None:
            result.epsilon = None if adaptive else _epsilon(st.accountant, dp.delta, memo)
            row["noise_std"] = st.sigma * dp.clip
            if adaptive and counts[k]:
                st.sigma = dp.noise * means[k] / dp.clip
        row["epsilon"] = result.epsilon
        ok = finite[k] and math.isfinite(train_loss[k])
        if not ok:
            result.status, result.diverged_epoch = "diverged", epoch
        elif spec.evaluate is not None:
            with torch.no_grad():
                row.update(spec.evaluate(load_member(stack.model, k, stack.template).eval()))
        result.history.append(row)
        if ok and spec.until is not None and spec.until(row):
            result.stopped_epoch = epoch
            if spec.sequence is not None:
                first.setdefault(spec.sequence, st.index)
        elif ok and not last:
            going.append(k)
    for k in list(going):  # a later alternative of a sequence whose earlier trial succeeded adds no verdict
        st = stack.members[k]
        if st.spec.sequence in first and st.index > first[st.spec.sequence]:
            st.result.cancelled = True
            going.remove(k)
    if stack.keep_models:
        for k in sorted(set(range(len(stack.members))) - set(going)):
            stack.members[k].result.model = copy.deepcopy(load_member(stack.model, k, stack.template)).eval()
    return going


def train_trials(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    specs: list[TrialSpec],
    *,
    optimizer_cfg,
    dp,
    seed: int,
    accountant_history: list | None = None,
    keep_models: bool = False,
) -> list[TrainResult]:
    """Retrain ``model``'s weights once per spec on ``(x, y)`` (the clean set) + the spec's extra rows.

    Returns one ``TrainResult`` per spec, in order, as ``loop.train`` would, plus ``stopped_epoch`` (the epoch
    where ``until`` held, else None) and ``cancelled``. A member leaves the stack after an epoch once its
    ``until`` holds, it diverged, or it is *cancelled*: a trial of the same ``sequence`` earlier in ``specs``
    reached ``until``. ``result.model`` holds the final weights with ``keep_models``, else None.
    """
    device, n, batch = x.device, len(y), optimizer_cfg.batch_size
    check_stackable(model)
    if dp is not None:
        check_dp_model(model)
        q, _ = poisson_rate(n, batch)
        steps = steps_per_epoch(q)
    else:
        q, steps = None, -(-n // batch)
    members = []
    for i, spec in enumerate(specs):
        result = TrainResult(model=None)
        result.stopped_epoch, result.cancelled = None, False
        st = Member(i, spec, result, torch.Generator(device=device).manual_seed(spec.batch_seed))
        if dp is not None:
            rows = (int(spec.clean_keep.sum()) if spec.clean_keep is not None else n) + len(spec.y_extra)
            if int(rows * q) < 1:  # a defense left fewer rows than batches: no expected batch to average over
                problem = f"a retraining trial keeps {rows} training rows, fewer than its {steps} batches per epoch."
                raise ConfigError("defense", problem, "use a milder defense or a larger batch size.")
            st.scale, st.sigma = 1.0 / int(rows * q), dp.noise
            st.noise_gen = torch.Generator(device=device).manual_seed(spec.noise_seed)
            st.accountant = create_accountant(dp.accountant)
            st.accountant.history = [tuple(h) for h in accountant_history or []]
        members.append(st)
    stack = Stack(model, members, x, optimizer_cfg=optimizer_cfg, private=dp is not None, keep_models=keep_models)
    sampler = torch.Generator(device=device).manual_seed(seed)
    memo: dict = {}
    start = time.perf_counter()
    for epoch in range(1, optimizer_cfg.epochs + 1):
        stack.model.train()
        if dp is not None:
            clean = poisson_batches(n, q, generator=sampler, device=device)
        else:
            clean = vanilla_batches(n, batch, generator=sampler, device=device)
        chosen = chosen_extras(stack, n=n, batch=batch, steps=steps, q=q)
        widths = chosen.sum(2).amax(0).tolist() if chosen.numel() else [0] * steps
        order = chosen.to(torch.int8).argsort(dim=2, descending=True, stable=True)
        loss_sum = torch.zeros(len(stack.members), dtype=x.dtype, device=device)
        seen = torch.zeros_like(loss_sum)
        for s, idx in enumerate(clean):
            xb, yb, mask = step_rows(x, y, idx, stack, chosen[:, s], order[:, s, : widths[s]])
            if dp is not None:
                grads, losses = private_grads(stack, xb, yb, mask, dp=dp, q=q,
                                               adaptive=isinstance(dp, AdaptiveDPConfig))  # fmt: skip
            else:
                grads, losses = vanilla_grads(stack, xb, yb, mask)
            stack.step(grads)
            loss_sum += losses
            seen += mask.sum(1)
        train_loss = (loss_sum / seen.clamp_min(1)).tolist()
        going = _end_epoch(stack, epoch, train_loss, dp=dp, last=epoch == optimizer_cfg.epochs, memo=memo,
                           elapsed=time.perf_counter() - start)  # fmt: skip
        if not going:
            break
        if len(going) < len(stack.members):
            stack.keep_only(going)
    return [st.result for st in members]
