"""The stacked state of retraining trials (``trials.train_trials``) and one step's rows and gradients.

``TrialSpec`` is one trial as ``train_trials`` takes it (imported from ``trials``).

``Stack`` holds the members still training: one ``StackedModel``, its optimizer, and member-axis tensors
(extra rows, kept clean rows, 1/E_m). ``step_rows`` builds a step's member-major rows and mask;
``private_grads`` / ``vanilla_grads`` give every member's update direction (the math is in ``trials``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from gsdefense.training.loop import Evaluate, TrainResult
from gsdefense.training.optim import OPTIMIZERS
from gsdefense.training.per_sample import BookKeepingClippedSum
from gsdefense.training.stacked import StackedModel, stack_models


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


@dataclass
class Member:
    """One trial while it trains: its spec and result, batch and noise generators, accountant, σ and 1/E_m."""

    index: int
    spec: TrialSpec
    result: TrainResult
    batch_gen: torch.Generator
    noise_gen: torch.Generator | None = None
    accountant: object = None
    sigma: float = 0.0  # this epoch's noise multiplier
    scale: float = 1.0  # 1 / E_m


class MemberSums:
    """``BookKeepingClippedSum.members`` for members that see different rows (``own_rows``).

    ``x``, ``y``: M·W rows, member-major; ``weights`` (M, W) multiply each row's clip factor (0: masked).
    """

    def __init__(self, stacked: StackedModel) -> None:
        self.bk = BookKeepingClippedSum(stacked)

    def __call__(self, x, y, *, weights, mask, clip: float):
        return self.bk.members(x, y, clip=clip, weight=weights, loss_weight=mask, own_rows=True)


class Stack:
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
        self.sums = MemberSums(self.model) if self.private else None

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


def chosen_extras(stack: Stack, *, n: int, batch: int, steps: int, q: float | None) -> torch.Tensor:
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


def step_rows(x, y, idx, stack: Stack, chosen: torch.Tensor, pick: torch.Tensor):
    """Member-major rows of one step: the clean rows ``idx`` then each member's chosen extras; and the mask."""
    m = len(pick)
    rows = torch.arange(m, device=x.device)[:, None]
    xc = x[idx]
    xb = torch.cat([xc.expand(m, *xc.shape), stack.xe[rows, pick]], 1).flatten(0, 1)
    yb = torch.cat([y[idx].expand(m, len(idx)), stack.ye[rows, pick]], 1).flatten()
    mask = torch.cat([stack.keep[:, idx], chosen.gather(1, pick)], 1).to(x.dtype)
    return xb, yb, mask


def private_grads(stack: Stack, xb, yb, mask, *, dp, q: float, adaptive: bool):
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


def vanilla_grads(stack: Stack, xb, yb, mask):
    """Every member's gradient of its mean loss over its own rows, and its summed loss."""
    out = stack.model.body(xb)
    losses = F.cross_entropy(out, yb, reduction="none").view(mask.shape) * mask
    total = losses.sum(1)
    grads = torch.autograd.grad((total / mask.sum(1).clamp_min(1)).sum(), stack.params)
    return list(grads), total.detach()
