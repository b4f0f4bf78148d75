"""``dp=adaptive``: Hong et al. §7.2's adaptive-noise gradient shaping.

DP-SGD adds noise of a fixed std σ·C while gradients shrink over training, so
late updates are mostly noise. Here the noise std for epoch e is instead

    std_e = σ · mean_{i in epoch e-1} min(‖g_i‖, C)        (std_1 = σ·C)

i.e. proportional to the clipped per-sample gradient norms actually seen. The
noise scale depends on the data, so this has **no formal privacy guarantee**:
runs report ``epsilon: null`` with a note.

Implemented as a subclass of Opacus' ``DPOptimizer`` that records clipped
norms in ``clip_and_accumulate`` and resets its noise multiplier per epoch.
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
    noise: float = 1.0
    delta: float = 1e-5  # kept for symmetry with dpsgd; no epsilon is computed
    accountant: str = "rdp"
    grad_sample_mode: str = "hooks"


class AdaptiveDPOptimizer(DPOptimizer):
    """DPOptimizer whose noise std follows the previous epoch's mean clipped norm."""

    def __init__(self, *args, base_noise: float, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.base_noise = base_noise
        self._norm_sum = torch.zeros(())
        self._norm_count = 0

    def clip_and_accumulate(self) -> None:
        if len(self.grad_samples[0]):
            norms = torch.stack([g.reshape(len(g), -1).norm(2, dim=-1) for g in self.grad_samples], 1).norm(2, dim=1)
            clipped = norms.clamp(max=self.max_grad_norm)
            self._norm_sum = self._norm_sum.to(clipped.device) + clipped.sum().detach()
            self._norm_count += len(clipped)
        super().clip_and_accumulate()

    @property
    def noise_std(self) -> float:
        return self.noise_multiplier * self.max_grad_norm

    def end_epoch(self) -> None:
        """Set next epoch's std to σ × this epoch's mean clipped per-sample norm."""
        if self._norm_count:
            mean_norm = float(self._norm_sum) / self._norm_count
            self.noise_multiplier = self.base_noise * mean_norm / self.max_grad_norm
        self._norm_sum, self._norm_count = torch.zeros(()), 0

    def extra_state(self) -> dict:
        return {"noise_multiplier": self.noise_multiplier, "norm_sum": float(self._norm_sum), "count": self._norm_count}

    def load_extra_state(self, state: dict) -> None:
        self.noise_multiplier = state["noise_multiplier"]
        self._norm_sum, self._norm_count = torch.tensor(state["norm_sum"]), state["count"]
