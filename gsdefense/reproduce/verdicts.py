"""The rule that turns a check's interval into a verdict, the multiplicity correction within a claim (Holm), and a
claim's verdict from its checks'.

Every check is *oriented*: its effect ``e`` grows when the claim holds (e.g. ``e = mean(RAD vanilla) − mean(RAD DP)``
for "DP reduces RAD"). It names two values on that axis:

- ``null``: no effect (usually 0; for a "does not reduce" claim, minus the smallest reduction that would matter);
- ``claimed``: the effect the paper states on the same figure and dataset (``claimed == null``: direction only).

From the two-sided ``1 − 2α`` confidence interval ``[lo, hi]`` of ``e`` (so ``lo > null`` exactly when the one-sided
test of ``H0: e ≤ null`` rejects at level α):

- ``reproduced``: ``lo > null`` and ``hi ≥ claimed`` — an effect beyond the null, compatible with the claimed size;
- ``smaller than claimed``: ``null ≤ hi < claimed`` — the data exclude the claimed size, not the claim's direction;
- ``opposite direction``: ``hi < null`` — the data exclude every effect in the claimed direction;
- ``inconclusive``: ``lo ≤ null`` and ``hi ≥ claimed`` — the interval holds both the null and the claimed effect.

Within a claim, α is split by Holm's step-down rule over its m testable checks (sorted by p, the k-th is tested at
α/(m − k + 1), and stops at the first that is not significant): ``holm`` returns each check's level, and the checks
recompute their intervals at it. Fewer than two values in an arm give no interval: ``inconclusive``. ``not testable
here`` comes from a check's preconditions (``preconditions.py``), never from these functions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

ALPHA = 0.05
NOT_REPRODUCED = ("smaller than claimed", "opposite direction")
VERDICTS = ("reproduced", *NOT_REPRODUCED, "inconclusive", "not testable here")


@dataclass(frozen=True)
class Summary:
    """One arm's values: mean, sample sd (NaN for n < 2) and n."""

    mean: float
    sd: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        x = np.asarray(values, dtype=float)
        if x.size == 0:
            return cls(math.nan, math.nan, 0)
        return cls(float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else math.nan, int(x.size))

    def text(self) -> str:
        if self.n == 0:  # no runs, or none with a value (e.g. poisons needed where no target fell)
            return "no values (n=0)"
        sd = "" if math.isnan(self.sd) else f" ± {self.sd:.3g}"
        return f"{self.mean:.3g}{sd} (n={self.n})"


@dataclass(frozen=True)
class Outcome:
    """A check's result: the verdict and every number behind it."""

    verdict: str
    test: str
    reason: str
    statistic: float | None = None
    p_value: float | None = None
    ci: tuple[float, float] | None = None
    effect: float | None = None
    null: float | None = None
    claimed: float | None = None
    arms: dict[str, Summary] = field(default_factory=dict)  # label → summary, in the order shown
    name: str = ""
    alpha: float = ALPHA  # the one-sided level this check was tested at (Holm's share of ALPHA)
    p_holm: float | None = None  # Holm-adjusted p within the claim
    note: str = ""  # what the reader must know about the check's null/claimed levels (e.g. direction only)

    @property
    def n_seeds(self) -> int:
        """The smallest arm's size (how many seeds every arm has at least)."""
        return min((s.n for s in self.arms.values()), default=0)

    @property
    def testable(self) -> bool:
        """Counted in the claim's multiplicity correction: a verdict from an interval."""
        return self.verdict != "not testable here" and self.ci is not None and self.p_value is not None

    def named(self, name: str) -> Outcome:
        return replace(self, name=name)


def decide(lo: float, hi: float, *, null: float, claimed: float) -> str:
    """The verdict of an oriented interval ``[lo, hi]`` (module docstring)."""
    if claimed < null:
        raise ValueError(f"claimed ({claimed}) must be >= null ({null}) on the oriented axis")
    if hi < null:
        return "opposite direction"
    if hi < claimed:
        return "smaller than claimed"
    if lo > null:
        return "reproduced"
    return "inconclusive"


REASONS = {
    "reproduced": "above the null and compatible with the claim",
    "smaller than claimed": "the interval excludes the claimed effect but not the claim's direction",
    "opposite direction": "the interval excludes every effect in the claimed direction",
    "inconclusive": "the interval holds both the null and the claimed effect",
}


def finish(
    test: str,
    *,
    e: float,
    lo: float,
    hi: float,
    statistic: float | None,
    p: float | None,
    null: float,
    claimed: float,
    arms: dict[str, Summary],
    alpha: float,
) -> Outcome:
    """An Outcome from an oriented interval computed at one-sided level ``alpha``."""
    verdict = decide(lo, hi, null=null, claimed=claimed)
    level = f"{100 * (1 - 2 * alpha):.3g}% CI"
    where = f"effect {e:.3g}, {level} [{lo:.3g}, {hi:.3g}]; null {null:.3g}, claimed {claimed:.3g}"
    return Outcome(verdict, test, f"{where}: {REASONS[verdict]}", statistic, p, (lo, hi), e, null, claimed, arms,
                   alpha=alpha)  # fmt: skip


def too_few(test: str, arms: dict[str, Summary], *, null: float, claimed: float) -> Outcome | None:
    """``inconclusive`` when an arm has fewer than 2 values (no interval), else None."""
    short = [f"{label} (n={s.n})" for label, s in arms.items() if s.n < 2]
    if not short:
        return None
    why = f"fewer than 2 ok runs with a value in {', '.join(short)}: no interval"
    return Outcome("inconclusive", test, why, null=null, claimed=claimed, arms=arms)


def holm(p_values: Sequence[float], *, alpha: float = ALPHA) -> tuple[list[float], list[float]]:
    """Holm's step-down rule over m one-sided p-values: (each test's level, each adjusted p).

    Sorted ascending, the k-th (1-based) is tested at ``α / (m − k + 1)``; its adjusted p is
    ``max_{j ≤ k} min(1, (m − j + 1) p_(j))``, so ``p_adj < α`` exactly when Holm rejects it (step-down included).
    """
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    levels, adjusted = [alpha] * m, [1.0] * m
    running = 0.0
    for k, i in enumerate(order):
        levels[i] = alpha / (m - k)
        running = max(running, min(1.0, (m - k) * p_values[i]))
        adjusted[i] = running
    return levels, adjusted


def combine(verdicts: Sequence[str]) -> str:
    """A claim's verdict from its checks' verdicts.

    Checks that are not testable are set aside; none left: ``not testable here``. Of the rest, any ``opposite
    direction`` makes the claim so, else any ``smaller than claimed``; all ``reproduced`` make it reproduced; else
    inconclusive.
    """
    tested = [v for v in verdicts if v != "not testable here"]
    if not tested:
        return "not testable here"
    for verdict in ("opposite direction", "smaller than claimed"):
        if verdict in tested:
            return verdict
    if all(v == "reproduced" for v in tested):
        return "reproduced"
    return "inconclusive"
