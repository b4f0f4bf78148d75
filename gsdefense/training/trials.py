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
from collections.abc import Callable
from dataclasses import dataclass

import torch
from opacus.accountants import RDPAccountant, create_accountant
from torch import nn
from torch.nn import functional as F

from gsdefense.errors import ConfigError
from gsdefense.training.accounting import rdp_epsilon
from gsdefense.training.adaptive import AdaptiveDPConfig
from gsdefense.training.engine import check_dp_model, poisson_rate, steps_per_epoch
from gsdefense.training.loop import Evaluate, TrainResult, poisson_batches, vanilla_batches
from gsdefense.training.optim import OPTIMIZERS
from gsdefense.training.per_sample import BookKeepingClippedSum, bk_unsupported
from gsdefense.training.stacked import StackedModel, load_member, stack_models


@dataclass
class Trial:
    """A retraining trial as an attack states it: its extra rows, per-epoch evaluation, name (seeds it)."""

    x: torch.Tensor
    y: torch.Tensor
    desc: str
    evaluate: Evaluate | None = None


@dataclass
class TrialSpec:
    """One trial: its extra rows (after the defense), the clean rows it keeps, its seeds and its hooks."""

    x_extra: torch.Tensor  # (k, …)
    y_extra: torch.Tensor  # (k,)
    noise_seed: int  # its DP noise stream
    batch_seed: int  # its extra rows' batch draws
    clean_keep: torch.Tensor | None = None  # (n,) bool: the clean rows its defense kept; None = all
    desc: str = "trial"
    evaluate: Evaluate | None = None  # per epoch, as in loop.train
    until: Callable[[dict], bool] | None = None  # the trial stops after the first epoch row where this is True
    sequence: int | None = None  # trials of one sequence are ordered alternatives: see train_trials


def check_stackable(model: nn.Module) -> None:
    """ConfigError unless every trainable layer has a stacked twin (Linear, Conv2d, GroupNorm)."""
    reason = bk_unsupported(model)
    if reason is not None:
        raise ConfigError("model", f"retraining trials train as a stacked model, but {reason}.",
                          "use model=lr, mlp, cnn or resnet18.")  # fmt: skip


@dataclass
class _Member:
    index: int
    spec: TrialSpec
    result: TrainResult
    batch_gen: torch.Generator
    noise_gen: torch.Generator | None = None
    accountant: object = None
    sigma: float = 0.0  # this epoch's noise multiplier
    scale: float = 1.0  # 1 / E_m


class _MemberSums:
    """``BookKeepingClippedSum.members`` for members that see different rows (``own_rows``).

    ``x``, ``y``: M·W rows, member-major; ``weights`` (M, W) multiply each row's clip factor (0: masked).
    """

    def __init__(self, stacked: StackedModel) -> None:
        self.bk = BookKeepingClippedSum(stacked)

    def __call__(self, x, y, *, weights, mask, clip: float):
        return self.bk.members(x, y, clip=clip, weight=weights, loss_weight=mask, own_rows=True)


def _epsilon(accountant, delta: float, memo: dict) -> float:
    """The accountant's ε, memoised: members with equal histories share one computation."""
    key = (type(accountant).__name__, tuple(tuple(h) for h in accountant.history), delta)
    if key not in memo:
        if isinstance(accountant, RDPAccountant):
            memo[key] = rdp_epsilon(accountant.history, delta=delta)
        else:
            memo[key] = float(accountant.get_epsilon(delta=delta))
    return memo[key]


class _Stack:
    """The members still training: stacked weights, optimizer, and member-axis tensors."""

    def __init__(self, model, members, x, *, optimizer_cfg, private: bool, keep_models: bool) -> None:
        m, n, device = len(members), len(x), x.device
        k = max((len(st.spec.y_extra) for st in members), default=0)
        self.xe = x.new_zeros(m, k, *x.shape[1:])
        self.ye = torch.zeros(m, k, dtype=torch.long, device=device)
        self.keep = torch.ones(m, n, dtype=torch.bool, device=device)
        for j, st in enumerate(members):
            e = len(st.spec.y_extra)
            self.xe[j, :e], self.ye[j, :e] = st.spec.x_extra, st.spec.y_extra
            if st.spec.clean_keep is not None:
                self.keep[j] = st.spec.clean_keep
        self.scale = torch.tensor([st.scale for st in members], dtype=x.dtype, device=device)
        self.norm_sum = torch.zeros(m, dtype=x.dtype, device=device)
        self.norm_count = torch.zeros(m, dtype=x.dtype, device=device)
        self.members, self.cfg, self.private, self.keep_models = members, optimizer_cfg, private, keep_models
        self.template = copy.deepcopy(model)  # a plain model to load one member's weights into
        self.model = stack_models([model] * m)
        self._optimizer()

    def _optimizer(self) -> None:
        """``loop.train``'s own optimizer over the stacked parameters: its update is elementwise, so member m's
        slice steps as m's own model would (members share the learning rate and the step count)."""
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = OPTIMIZERS.builder(self.cfg)(self.cfg, self.params)
        self.sums = _MemberSums(self.model) if self.private else None

    def step(self, grads: list[torch.Tensor]) -> None:
        for p, g in zip(self.params, grads):
            p.grad = g.contiguous()  # torch's fused SGD misreads a transposed gradient (torch 2.14, CPU)
        self.optimizer.step()

    def keep_only(self, positions: list[int]) -> None:
        """Drop every member not at ``positions``: weights, optimizer state and member tensors."""
        idx, m = torch.tensor(positions, device=self.keep.device), len(self.members)
        states = [self.optimizer.state.get(p, {}) for p in self.params]
        old = dict(self.model.body.named_parameters())
        self.model = stack_models([self.template] * len(positions))
        with torch.no_grad():
            for name, p in self.model.body.named_parameters():
                p.copy_(old[name][idx])
        self.members = [self.members[k] for k in positions]
        self._optimizer()
        for p, state in zip(self.params, states):  # momentum / Adam moments per member; scalars (step) shared
            self.optimizer.state[p] = {k: v[idx] if torch.is_tensor(v) and v.dim() and len(v) == m else v
                                       for k, v in state.items()}  # fmt: skip
        for name in ("xe", "ye", "keep", "scale", "norm_sum", "norm_count"):
            setattr(self, name, getattr(self, name)[idx])


def _chosen(stack: _Stack, *, n: int, batch: int, steps: int, q: float | None) -> torch.Tensor:
    """(M, steps, K): whether member m's extra row j is in step s's batch this epoch (its own generator)."""
    m, k = stack.ye.shape
    device = stack.ye.device
    chosen = torch.zeros(m, steps, k, dtype=torch.bool, device=device)
    for j, st in enumerate(stack.members):
        e = len(st.spec.y_extra)
        if e == 0:
            continue
        if q is not None:
            chosen[j, :, :e] = torch.rand(steps, e, generator=st.batch_gen, device=device) < q
        else:  # the batch of a uniformly random clean position: a step as likely as it is large
            step = torch.randint(n, (e,), generator=st.batch_gen, device=device) // batch
            chosen[j, :, :e] = torch.arange(steps, device=device)[:, None] == step[None]
    return chosen


def _rows(x, y, idx, stack: _Stack, chosen: torch.Tensor, pick: torch.Tensor):
    """Member-major rows of one step: the clean rows ``idx`` then each member's chosen extras; and the mask."""
    m = len(pick)
    rows = torch.arange(m, device=x.device)[:, None]
    xc = x[idx]
    xb = torch.cat([xc.expand(m, *xc.shape), stack.xe[rows, pick]], 1).flatten(0, 1)
    yb = torch.cat([y[idx].expand(m, len(idx)), stack.ye[rows, pick]], 1).flatten()
    mask = torch.cat([stack.keep[:, idx], chosen.gather(1, pick)], 1).to(x.dtype)
    return xb, yb, mask


def _private_grads(stack: _Stack, xb, yb, mask, *, dp, q: float, adaptive: bool):
    """Every member's noisy clipped sum, and its summed loss; books one step per member."""
    if len(xb):
        grads, losses, norms = stack.sums(xb, yb, weights=mask * stack.scale[:, None], mask=mask, clip=dp.clip)
        if adaptive:
            stack.norm_sum += (norms.clamp(max=dp.clip) * mask).sum(1)
            stack.norm_count += mask.sum(1)
    else:  # an empty Poisson batch is still a step: the update is pure noise
        grads = [torch.zeros_like(p) for p in stack.params]
        losses = torch.zeros(len(stack.members), device=xb.device)
    rows = list(zip(*(g.unbind(0) for g in grads)))  # member k's slice of every parameter, in order
    for st, own in zip(stack.members, rows):
        std = st.sigma * dp.clip * st.scale
        if std > 0:
            for g in own:
                g.add_(torch.normal(mean=0.0, std=std, size=g.shape, device=g.device, generator=st.noise_gen))
        st.accountant.step(noise_multiplier=st.sigma, sample_rate=q)
    return grads, losses


def _vanilla_grads(stack: _Stack, xb, yb, mask):
    """Every member's gradient of its mean loss over its own rows, and its summed loss."""
    out = stack.model.body(xb)
    losses = F.cross_entropy(out, yb, reduction="none").view(mask.shape) * mask
    total = losses.sum(1)
    grads = torch.autograd.grad((total / mask.sum(1).clamp_min(1)).sum(), stack.params)
    return list(grads), total.detach()


def _end_epoch(stack: _Stack, epoch: int, train_loss: list, *, dp, last: bool, memo: dict, elapsed: float) -> list:
    """Each member's history row, as ``loop.train`` writes it; the positions of the members that go on."""
    finite = torch.stack([torch.isfinite(p).flatten(1).all(1) for p in stack.params]).all(0).tolist()
    adaptive = isinstance(dp, AdaptiveDPConfig)
    if adaptive:  # σ_next = σ × mean clipped norm / C (NoiseTracker's rule), unchanged without samples
        means, counts = (stack.norm_sum / stack.norm_count.clamp_min(1)).tolist(), stack.norm_count.tolist()
        stack.norm_sum.zero_(), stack.norm_count.zero_()
    going, first = [], {}
    for k, st in enumerate(stack.members):
        spec, result = st.spec, st.result
        row: dict = {"epoch": epoch, "train_loss": train_loss[k], "seconds": elapsed}
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
        st = _Member(i, spec, result, torch.Generator(device=device).manual_seed(spec.batch_seed))
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
    stack = _Stack(model, members, x, optimizer_cfg=optimizer_cfg, private=dp is not None, keep_models=keep_models)
    sampler = torch.Generator(device=device).manual_seed(seed)
    memo: dict = {}
    start = time.perf_counter()
    for epoch in range(1, optimizer_cfg.epochs + 1):
        stack.model.train()
        if dp is not None:
            clean = poisson_batches(n, q, generator=sampler, device=device)
        else:
            clean = vanilla_batches(n, batch, generator=sampler, device=device)
        chosen = _chosen(stack, n=n, batch=batch, steps=steps, q=q)
        widths = chosen.sum(2).amax(0).tolist() if chosen.numel() else [0] * steps
        order = chosen.to(torch.int8).argsort(dim=2, descending=True, stable=True)
        loss_sum = torch.zeros(len(stack.members), dtype=x.dtype, device=device)
        seen = torch.zeros_like(loss_sum)
        for s, idx in enumerate(clean):
            xb, yb, mask = _rows(x, y, idx, stack, chosen[:, s], order[:, s, : widths[s]])
            if dp is not None:
                grads, losses = _private_grads(stack, xb, yb, mask, dp=dp, q=q,
                                               adaptive=isinstance(dp, AdaptiveDPConfig))  # fmt: skip
            else:
                grads, losses = _vanilla_grads(stack, xb, yb, mask)
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
