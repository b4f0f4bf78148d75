"""Privacy accounting shared by every DP route: what a private training run hands the loop, and ε.

ε comes from Opacus' accountant over the history of ``(σ, q, steps)`` the steps were booked with. Any step with
σ = 0 makes ε = ∞ for every accountant (PRV and GDP cannot compute that case). Before training, ``check_epsilon``
computes ε once for the whole schedule: PRV and GDP fail for small σ (PRV also for tiny δ), and a noise grid would
otherwise crash after its first epoch.
"""

from __future__ import annotations

import functools
import logging
import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from opacus import PrivacyEngine
from opacus.accountants import RDPAccountant, create_accountant
from opacus.accountants.analysis import rdp as rdp_analysis

from gsdefense.errors import ConfigError, one_line

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
        return epsilon_of(self.engine.accountant, delta=self.delta)


def epsilon_of(accountant: Any, *, delta: float) -> float:
    """ε of an Opacus accountant's history at ``delta``: ∞ once a step had σ = 0, RDP's through ``rdp_epsilon``."""
    if any(sigma == 0 for sigma, _, steps in accountant.history if steps):
        return math.inf
    if isinstance(accountant, RDPAccountant):
        return rdp_epsilon(accountant.history, delta=delta)
    return float(accountant.get_epsilon(delta))


def noise_multiplier(dp: Any) -> float:
    """The noise multiplier σ the accountant sees: ``dp.noise``, or ``dp.noise_std / dp.clip`` when given so."""
    std = getattr(dp, "noise_std", None)
    return std / dp.clip if std is not None else dp.noise


def check_epsilon(dp: Any, *, n_train: int, batch_size: int, epochs: int) -> None:
    """Raise ConfigError unless ``dp.accountant`` computes a finite or infinite (not NaN) ε for this run, after its
    first epoch and after ``epochs`` private epochs, at q = 1/⌈n/B⌉ (``engine.poisson_rate``)."""
    if dp is None or not hasattr(dp, "accountant") or epochs < 1:
        return
    from gsdefense.training.engine import poisson_rate, steps_per_epoch

    sigma = noise_multiplier(dp)
    q, _ = poisson_rate(n_train, batch_size)
    for steps in sorted({steps_per_epoch(q), steps_per_epoch(q) * epochs}):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # GDP warns that it is experimental: the run itself says so
                accountant = create_accountant(dp.accountant)
                accountant.history = [(sigma, q, steps)]
                eps = epsilon_of(accountant, delta=dp.delta)
        except Exception as err:  # noqa: BLE001 - Opacus' accountants raise ValueError, OverflowError …
            reason = one_line(err, limit=120)
        else:
            if not math.isnan(eps):
                continue
            reason = "it is NaN"
        raise ConfigError(
            "dp.accountant",
            f"{dp.accountant} cannot compute ε for σ = {sigma:g}, δ = {dp.delta:g} over {steps} steps ({reason}).",
            "use dp.accountant=rdp (it handles any σ and δ), or a larger dp.noise or dp.delta.",
        )


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
