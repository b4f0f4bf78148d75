"""Privacy accounting shared by every DP route: what a private training run hands the loop, and ε.

ε comes from Opacus' accountant over the history of ``(σ, q, steps)`` the steps were booked with.
"""

from __future__ import annotations

import functools
import logging
import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from opacus import PrivacyEngine
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis import rdp as rdp_analysis

log = logging.getLogger(__name__)

# Opacus warns on every ε whose optimal RDP order is an end of its α grid. A "once" filter does not hold in a
# multirun: Python forgets which warnings it showed whenever any code changes the filters (every catch_warnings
# does), so it printed once per job. Silenced here; rdp_epsilon says it once per process instead.
warnings.filterwarnings("ignore", message="Optimal order is the")
_noted_extreme_order = False


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
    if any(sigma == 0 and steps > 0 for sigma, _, steps in history):
        return math.inf  # a step without noise: RDP is infinite at every order (σ = 0, clipping only)
    rdp = sum([_rdp_one_step(q, sigma) * steps for sigma, q, steps in history])
    orders = RDPAccountant.DEFAULT_ALPHAS
    eps, order = rdp_analysis.get_privacy_spent(orders=orders, rdp=rdp, delta=delta)
    if order in (orders[0], orders[-1]):
        _note_extreme_order(order == orders[0])
    return float(eps)


def _note_extreme_order(smallest: bool) -> None:
    """Opacus' note that ε would be tighter with a wider α grid, once per process (not once per job)."""
    global _noted_extreme_order
    if _noted_extreme_order:
        return
    _noted_extreme_order = True
    end, why = ("smallest", "very small σ or many steps") if smallest else ("largest", "very large σ")
    log.warning(
        "ε: the optimal RDP order is the %s α of Opacus' grid (%s), so ε is a valid but loose upper bound; "
        "shown once per process",
        end,
        why,
    )
