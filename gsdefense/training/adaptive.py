"""``dp=adaptive``: Hong et al. §7.2's adaptive-noise gradient shaping.

DP-SGD adds noise of a fixed std σ·C while gradients shrink over training, so
late updates are mostly noise. Here the noise std for epoch e is instead

    std_e = σ · mean_{i in epoch e-1} min(‖g_i‖, C)        (std_1 = σ·C)

i.e. proportional to the clipped per-sample gradient norms actually seen. The
noise scale depends on the data, so this has **no formal privacy guarantee**:
runs report ``epsilon: null`` with a note.

Implemented as a subclass of Opacus' ``DPOptimizer`` that records clipped
norms in ``clip_and_accumulate`` (``NormRecordingDPOptimizer``, which every
Opacus route uses, so that batch telemetry sees the norms the update clipped
with) and resets its noise multiplier per epoch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from opacus.optimizers import DPOptimizer

EPSILON_NOTE = "dp=adaptive: the noise scale depends on the data, so there is no formal (epsilon, delta) guarantee"


@dataclass
class AdaptiveDPConfig:
    name: str = "adaptive"
    clip: float = 1.0
    noise: float | None = 1.0  # base multiplier σ (epoch 1's std σ·C); as dp.dpsgd, null with noise_std
    noise_std: float | None = None  # epoch 1's absolute std instead: σ = noise_std / clip (see dp.DPSGDConfig)
    delta: float = 1e-5  # kept for symmetry with dpsgd; no epsilon is computed
    accountant: str = "rdp"
    grad_sample_mode: str = "auto"
    fixed_shape: bool | None = None  # pad Poisson batches to buckets (exact; bk/vmap); null: on CUDA only


class NoiseTracker:
    """Mean clipped per-sample norm over an epoch, turned into the next epoch's noise multiplier."""

    def __init__(self, *, base_noise: float, clip: float) -> None:
        self.base_noise, self.clip = base_noise, clip
        self._sum, self._count = torch.zeros(()), 0

    def record(self, norms: torch.Tensor, weight: torch.Tensor | None = None) -> None:
        """Add a batch's per-sample norms (``weight``: 0 for a fixed-shape batch's padding)."""
        clipped = norms.detach().clamp(max=self.clip)
        if weight is not None:
            clipped = clipped * weight
        self._sum = self._sum.to(clipped.device) + clipped.sum()
        self._count = self._count + (weight.sum() if weight is not None else len(norms))

    def end_epoch(self, current: float) -> float:
        """σ_next = σ × mean clipped norm / C, so that std_next = σ × mean clipped norm; unchanged if no samples."""
        count = float(self._count)
        multiplier = self.base_noise * float(self._sum) / count / self.clip if count else current
        self._sum, self._count = torch.zeros(()), 0
        return multiplier

    def state(self, multiplier: float) -> dict:
        return {"noise_multiplier": multiplier, "norm_sum": float(self._sum), "count": float(self._count)}

    def load(self, state: dict) -> float:
        self._sum, self._count = torch.tensor(state["norm_sum"]), state["count"]
        return state["noise_multiplier"]


class NormRecordingDPOptimizer(DPOptimizer):
    """Opacus' DPOptimizer, keeping the whole-model per-sample norms ‖g_i‖ its last step clipped with
    (``last_norms``, as ``fast_dp.FastDPOptimizer`` does): the same update, plus one norm computation."""

    last_norms: torch.Tensor | None = None

    def clip_and_accumulate(self) -> None:
        samples = self.grad_samples
        self.last_norms = torch.stack([g.reshape(len(g), -1).norm(2, dim=-1) for g in samples], 1).norm(2, dim=1)
        super().clip_and_accumulate()


class AdaptiveDPOptimizer(NormRecordingDPOptimizer):
    """DPOptimizer whose noise std follows the previous epoch's mean clipped norm."""

    def __init__(self, *args, base_noise: float, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.tracker = NoiseTracker(base_noise=base_noise, clip=self.max_grad_norm)

    def clip_and_accumulate(self) -> None:
        super().clip_and_accumulate()
        if len(self.last_norms):
            self.tracker.record(self.last_norms)

    @property
    def noise_std(self) -> float:
        return self.noise_multiplier * self.max_grad_norm

    def end_epoch(self) -> None:
        self.noise_multiplier = self.tracker.end_epoch(self.noise_multiplier)

    def extra_state(self) -> dict:
        return self.tracker.state(self.noise_multiplier)

    def load_extra_state(self, state: dict) -> None:
        self.noise_multiplier = self.tracker.load(state)
