"""Privacy accounting shared by every DP route: what a private training run hands the loop, and ε.

ε comes from Opacus' accountant over the history of ``(σ, q, steps)`` the steps were booked with.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from opacus import PrivacyEngine
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis import rdp as rdp_analysis

# Opacus repeats this for every ε of a large-σ run; the first occurrence says it all.
warnings.filterwarnings("once", message="Optimal order is the")


@dataclass
class PrivateTraining:
    """What a DP route hands the training loop."""

    module: torch.nn.Module
    optimizer: torch.optim.Optimizer | None
    engine: PrivacyEngine
    sample_rate: float
    delta: float
    adaptive: bool = False

    def epsilon(self) -> float | None:
        if self.adaptive:
            return None
        if isinstance(self.engine.accountant, RDPAccountant):
            return rdp_epsilon(self.engine.accountant.history, delta=self.delta)
        return float(self.engine.get_epsilon(self.delta))


@functools.lru_cache(maxsize=1024)
def _rdp_one_step(sample_rate: float, noise_multiplier: float) -> np.ndarray:
    return rdp_analysis.compute_rdp(
        q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=RDPAccountant.DEFAULT_ALPHAS
    )


def rdp_epsilon(history: list, *, delta: float) -> float:
    """Opacus' RDP ε, bit for bit, with the per-step RDP curve of each (σ, q) cached.

    Opacus recomputes RDP(α) of the subsampled Gaussian for every α on every call (~0.1 s);
    RDP composes additively, RDP_k(α) = k · RDP_1(α), which is exactly how Opacus scales it.
    """
    if not history:
        return 0.0
    rdp = sum([_rdp_one_step(q, sigma) * steps for sigma, q, steps in history])
    eps, _ = rdp_analysis.get_privacy_spent(orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp, delta=delta)
    return float(eps)
