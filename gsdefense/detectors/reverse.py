"""Neural Cleanse trigger reverse engineering (Wang et al. 2019, §IV-B), every label in one batched optimisation.

For each label t a mask m_t ∈ (0,1)^{H×W} (shared by the channels) and a pattern p_t in the input box solve

    min  CE(f((1 − m_t) ⊙ x + m_t ⊙ p_t), t) + λ_t · ‖m_t‖₁      over the defender's clean x,

with the original code's tanh parametrisation ``m = tanh(θ)/(2−ε) + ½`` (likewise p, scaled to the box), Adam,
and its per-label dynamic λ and early stopping (see ``NeuralCleanseConfig``). All labels share every batch:
the K masks and patterns are stacked into one tensor, and one forward pass per step sees K × batch inputs.
Each label's loss depends only on its own mask and pattern and Adam is elementwise, so the batched run
equals running each label alone (``tests/test_neural_cleanse.py`` checks it). Tabular (1-D) inputs get one
mask entry per feature.

Deviations from the original code, for the docs: a mini-epoch is one pass over the defender data, capped at the
original's 31 batches (1000 samples), unless ``steps_per_epoch`` is set (on digits' 135 defender samples a pass is
5 batches: the λ schedule's patience then spans 160 samples instead of 1000); batches are drawn without
replacement within a batch; the "best mask" test compares the end-of-epoch mask's own L1 (the original
compares the epoch's mean L1 but saves the end-of-epoch mask); a label that stops is dropped from later
forward passes.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from gsdefense.detectors.config import NeuralCleanseConfig

EPS = 1e-7  # Keras' K.epsilon(), as in the original tanh parametrisation and Adam
EVAL_ROWS = 4096  # stamped inputs per forward when measuring success
# The original's mini-epoch: NB_SAMPLE / BATCH_SIZE = 1000 / 32 batches. A pass over a larger defender set is capped
# at this, so large datasets cost what they cost the original.
ORIGINAL_STEPS_PER_EPOCH = 31


@dataclass
class ReverseResult:
    """Per label (in the order of ``labels``): the reversed trigger and how the optimisation went."""

    labels: torch.Tensor  # (K,) int64
    mask: torch.Tensor  # (K, *mask_shape): the best mask meeting the success threshold (else the last one)
    pattern: torch.Tensor  # (K, *input_shape), in the input box
    l1: torch.Tensor  # (K,) ‖mask‖₁
    met: torch.Tensor  # (K,) bool: the success threshold was reached at least once
    success: torch.Tensor  # (K,) share of all defender inputs that the returned trigger sends to the label
    cost: torch.Tensor  # (K,) λ at the end
    steps: torch.Tensor  # (K,) optimizer steps taken
    epochs: torch.Tensor  # (K,) mini-epochs run


def mask_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    """(1, H, W) for images (one mask for all channels), the input shape itself for 1-D tabular data."""
    return (1, *input_shape[1:]) if len(input_shape) == 3 else tuple(input_shape)


def squash(theta: torch.Tensor) -> torch.Tensor:
    return torch.tanh(theta) / (2 - EPS) + 0.5


def unsquash(value: torch.Tensor) -> torch.Tensor:
    return torch.atanh((value - 0.5) * (2 - EPS))


def stamp(x: torch.Tensor, mask: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
    """``(1 − m) ⊙ x + m ⊙ p`` for one trigger (mask and pattern without the label axis)."""
    return (1 - mask) * x + mask * pattern


def _stamp_all(x: torch.Tensor, mask: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
    """(A, B, *shape): every one of the A triggers on every one of the B inputs."""
    m = mask.unsqueeze(1)
    return (1 - m) * x.unsqueeze(0) + m * pattern.unsqueeze(1)


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """The model in eval mode with no parameter gradients; restored afterwards."""
    flags = [p.requires_grad for p in model.parameters()]
    was_training = model.training
    model.eval().requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(flag)
        model.train(was_training)


@torch.no_grad()
def trigger_success(model: nn.Module, x: torch.Tensor, mask: torch.Tensor, pattern: torch.Tensor,
                    labels: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """(K,) share of ``x`` that label k's trigger sends to ``labels[k]``."""
    hits = torch.zeros(len(labels), device=x.device)
    chunk = max(1, EVAL_ROWS // len(labels))
    for xc in x.split(chunk):
        pred = model(_stamp_all(xc, mask, pattern).flatten(0, 1)).argmax(-1).view(len(labels), len(xc))
        hits += (pred == labels[:, None]).sum(1)
    return hits / len(x)


class _Schedule:
    """The original's per-label λ and early-stop bookkeeping, as (K,) tensors updated once per mini-epoch."""

    def __init__(self, k: int, *, cfg: NeuralCleanseConfig, device: torch.device, dtype: torch.dtype) -> None:
        self.cfg = cfg
        zeros = torch.zeros(k, dtype=torch.int64, device=device)
        self.cost = torch.zeros(k, dtype=dtype, device=device)  # reset_cost_to_zero, as the original
        self.set_cnt, self.up_cnt, self.down_cnt, self.es_cnt = (zeros.clone() for _ in range(4))
        self.up_flag = torch.zeros(k, dtype=torch.bool, device=device)
        self.down_flag = self.up_flag.clone()
        self.reg_best = torch.full((k,), math.inf, dtype=dtype, device=device)
        self.es_best = self.reg_best.clone()

    def update(self, *, ok: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        """Advance the labels in ``active`` after a mini-epoch (``ok``: success ≥ threshold); returns who stops."""
        cfg, w = self.cfg, torch.where
        stop = torch.zeros_like(active)
        if cfg.early_stop:
            found = torch.isfinite(self.reg_best)
            stalled = self.reg_best >= cfg.early_stop_threshold * self.es_best
            self.es_cnt = w(active & found, w(stalled, self.es_cnt + 1, 0), self.es_cnt)
            self.es_best = w(active, torch.minimum(self.reg_best, self.es_best), self.es_best)
            stop = active & self.up_flag & self.down_flag & (self.es_cnt >= cfg.early_stop_patience)
        go = active & ~stop  # the original breaks before touching λ
        zero = self.cost == 0
        set_cnt = w(zero & ok, self.set_cnt + 1, 0)
        init = zero & ok & (set_cnt >= cfg.patience)
        cost = w(init, torch.full_like(self.cost, cfg.init_cost), self.cost)
        up_cnt, down_cnt = w(init, 0, self.up_cnt), w(init, 0, self.down_cnt)
        up_flag, down_flag = self.up_flag & ~init, self.down_flag & ~init
        up_cnt, down_cnt = w(ok, up_cnt + 1, 0), w(ok, 0, down_cnt + 1)
        raise_ = up_cnt >= cfg.patience
        lower = ~raise_ & (down_cnt >= cfg.patience)
        cost = w(raise_, cost * cfg.cost_multiplier, w(lower, cost / cfg.cost_multiplier**1.5, cost))
        up_cnt, down_cnt = w(raise_, 0, up_cnt), w(lower, 0, down_cnt)
        self.set_cnt = w(go, set_cnt, self.set_cnt)
        self.cost = w(go, cost, self.cost)
        self.up_cnt, self.down_cnt = w(go, up_cnt, self.up_cnt), w(go, down_cnt, self.down_cnt)
        self.up_flag = w(go, up_flag | raise_, self.up_flag)
        self.down_flag = w(go, down_flag | lower, self.down_flag)
        return stop


class KerasAdam:
    """Adam as Keras 2 (the original code's optimizer): ``θ −= lr·√(1−β2ᵗ)/(1−β1ᵗ) · m / (√v + ε)``.

    One in-place update of one stacked tensor per step; elementwise, so every label's rows evolve on their own.
    """

    def __init__(self, param: torch.Tensor, *, lr: float, beta1: float, beta2: float, eps: float = EPS) -> None:
        self.param, self.lr, self.beta1, self.beta2, self.eps = param, lr, beta1, beta2, eps
        self.m, self.v, self.t = torch.zeros_like(param), torch.zeros_like(param), 0

    @torch.no_grad()
    def step(self, grad: torch.Tensor) -> None:
        self.t += 1
        self.m.mul_(self.beta1).add_(grad, alpha=1 - self.beta1)
        self.v.mul_(self.beta2).addcmul_(grad, grad, value=1 - self.beta2)
        lr_t = self.lr * math.sqrt(1 - self.beta2**self.t) / (1 - self.beta1**self.t)
        self.param.addcdiv_(self.m, self.v.sqrt().add_(self.eps), value=-lr_t)


def reverse_engineer(
    model: nn.Module,
    x: torch.Tensor,
    *,
    num_classes: int,
    cfg: NeuralCleanseConfig,
    box: tuple[float, float],
    seed: int,
    labels: Sequence[int] | None = None,
) -> ReverseResult:
    """Reverse-engineer the minimal trigger of every label in ``labels`` (default: all) on defender data ``x``.

    Initial masks and patterns are uniform random (as the original), drawn for all ``num_classes`` labels and
    then selected, so a label's run does not depend on which other labels run with it. As in the original (a
    Keras gradient of the per-sample loss vector), a step's gradient is that of ``Σ_batch CE + batch·λ·‖m‖₁``.
    """
    device, dtype = x.device, x.dtype
    labels_t = torch.arange(num_classes, device=device) if labels is None else torch.as_tensor(labels, device=device)
    k, n = len(labels_t), len(x)
    lo, hi = box
    m_shape, p_shape = mask_shape(x.shape[1:]), tuple(x.shape[1:])
    split = math.prod(m_shape)
    gen = torch.Generator(device=device).manual_seed(seed)
    m0 = torch.rand((num_classes, *m_shape), generator=gen, device=device, dtype=dtype)[labels_t]
    p0 = torch.rand((num_classes, *p_shape), generator=gen, device=device, dtype=dtype)[labels_t]
    # One stacked tensor (mask | pattern) per label: one gather, one backward and one Adam update per step.
    theta = torch.cat([unsquash(m0).flatten(1), unsquash(p0).flatten(1)], 1).requires_grad_()
    adam = KerasAdam(theta, lr=cfg.lr, beta1=cfg.beta1, beta2=cfg.beta2)
    batch = min(cfg.batch_size, n)
    per_epoch = cfg.steps_per_epoch or min(math.ceil(n / batch), ORIGINAL_STEPS_PER_EPOCH)
    sched = _Schedule(k, cfg=cfg, device=device, dtype=dtype)
    best = squash(theta).detach().clone()
    active = torch.ones(k, dtype=torch.bool, device=device)
    epochs = torch.zeros(k, dtype=torch.int64, device=device)

    def trigger(sq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = len(sq)
        return sq[:, :split].view(rows, *m_shape), (lo + (hi - lo) * sq[:, split:]).view(rows, *p_shape)

    with frozen(model):
        for _ in range(cfg.max_epochs):
            rows = active.nonzero().squeeze(1)  # one host sync per mini-epoch, none per step
            a = len(rows)
            if a == 0:
                break
            target = labels_t[rows]
            target_rep, cost = target.repeat_interleave(batch), sched.cost[rows] * batch
            order = torch.rand(per_epoch, n, generator=gen, device=device).argsort(1)[:, :batch]
            hits = torch.zeros(a, dtype=torch.int64, device=device)
            for idx in order:
                mask, pattern = trigger(squash(theta if a == k else theta[rows]))
                logits = model(_stamp_all(x[idx], mask, pattern).flatten(0, 1))
                ce = F.cross_entropy(logits, target_rep, reduction="none").view(a, batch).sum(1)
                (grad,) = torch.autograd.grad((ce + cost * mask.flatten(1).sum(1)).sum(), theta)
                adam.step(grad)
                hits += (logits.detach().argmax(-1).view(a, batch) == target[:, None]).sum(1)
            epochs[rows] += 1
            ok = torch.zeros(k, dtype=torch.bool, device=device)
            ok[rows] = hits >= cfg.attack_succ_threshold * (per_epoch * batch)
            with torch.no_grad():
                now = squash(theta)
                l1_now = now[:, :split].sum(1)
                better = active & ok & (l1_now < sched.reg_best)
                sched.reg_best = torch.where(better, l1_now, sched.reg_best)
                # Until a label first succeeds its "best" is simply its latest trigger (the original's fallback).
                keep = better | (active & ~torch.isfinite(sched.reg_best))
                best = torch.where(keep[:, None], now, best)
            active = active & ~sched.update(ok=ok, active=active)
        best_m, best_p = trigger(best)
        success = trigger_success(model, x, best_m, best_p, labels_t)
    return ReverseResult(
        labels=labels_t,
        mask=best_m,
        pattern=best_p,
        l1=best_m.flatten(1).sum(1),
        met=torch.isfinite(sched.reg_best),
        success=success,
        cost=sched.cost,
        steps=epochs * per_epoch,
        epochs=epochs,
    )
