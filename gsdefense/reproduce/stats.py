"""The tests behind the verdicts, and the rule that turns an interval into a verdict.

Every check is *oriented*: its effect ``e`` grows when the claim holds (e.g. ``e = mean(RAD vanilla) − mean(RAD DP)``
for "DP reduces RAD"). It names two values on that axis:

- ``null``: no effect (usually 0; for a "does not reduce" claim, minus the smallest reduction that would matter);
- ``claimed``: the effect the paper states (``claimed == null`` for a claim of direction only).

From the two-sided ``1 − 2α`` confidence interval ``[lo, hi]`` of ``e`` (so ``lo > null`` exactly when the one-sided
test of ``H0: e ≤ null`` rejects at level α):

- ``not reproduced``: ``hi < claimed`` — the data exclude the claimed effect (this includes the wrong direction);
- ``reproduced``: ``lo > null`` and ``hi ≥ claimed`` — an effect beyond the null, compatible with the claimed size;
- ``inconclusive``: ``lo ≤ null`` and ``hi ≥ claimed`` — the interval straddles both the null and the claimed effect.

Fewer than two values in an arm give no interval: ``inconclusive``. ``not testable here`` comes from a check's
preconditions (``checks.py``), never from these functions.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from scipy import stats

ALPHA = 0.05
VERDICTS = ("reproduced", "not reproduced", "inconclusive", "not testable here")
BOOTSTRAP_RESAMPLES = 2000


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
        if self.n == 0:
            return "no runs"
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

    @property
    def n_seeds(self) -> int:
        """The smallest arm's size (how many seeds every arm has at least)."""
        return min((s.n for s in self.arms.values()), default=0)

    def named(self, name: str) -> Outcome:
        return replace(self, name=name)


def _quiet(func):
    """Run ``func`` without scipy's RuntimeWarnings (near-identical samples): the interval already shows them."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return func(*args, **kwargs)

    return wrapper


def decide(lo: float, hi: float, *, null: float, claimed: float) -> str:
    """The verdict of an oriented interval ``[lo, hi]`` (module docstring)."""
    if claimed < null:
        raise ValueError(f"claimed ({claimed}) must be >= null ({null}) on the oriented axis")
    if hi < claimed:
        return "not reproduced"
    if lo > null:
        return "reproduced"
    return "inconclusive"


def _finish(
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
    verdict = decide(lo, hi, null=null, claimed=claimed)
    level = f"{100 * (1 - 2 * alpha):g}% CI"
    where = f"effect {e:.3g}, {level} [{lo:.3g}, {hi:.3g}]; null {null:.3g}, claimed {claimed:.3g}"
    reason = {
        "reproduced": f"{where}: above the null and compatible with the claim",
        "not reproduced": f"{where}: the interval excludes the claimed effect",
        "inconclusive": f"{where}: the interval holds both the null and the claimed effect",
    }[verdict]
    return Outcome(verdict, test, reason, statistic, p, (lo, hi), e, null, claimed, arms)


def too_few(test: str, arms: dict[str, Summary], *, null: float, claimed: float) -> Outcome | None:
    """``inconclusive`` when an arm has fewer than 2 values (no interval), else None."""
    short = [f"{label} (n={s.n})" for label, s in arms.items() if s.n < 2]
    if not short:
        return None
    why = f"fewer than 2 ok runs with a value in {', '.join(short)}: no interval"
    return Outcome("inconclusive", test, why, null=null, claimed=claimed, arms=arms)


@_quiet
def welch(
    high: Sequence[float],
    low: Sequence[float],
    *,
    labels: tuple[str, str] = ("high", "low"),
    null: float = 0.0,
    claimed: float = 0.0,
    alpha: float = ALPHA,
) -> Outcome:
    """``e = mean(high) − mean(low)``: one-sided Welch t-test of ``H0: e ≤ null`` and Welch's ``1 − 2α`` interval."""
    test = "one-sided Welch t-test"
    arms = {labels[0]: Summary.of(high), labels[1]: Summary.of(low)}
    if (early := too_few(test, arms, null=null, claimed=claimed)) is not None:
        return early
    a, b = np.asarray(high, float), np.asarray(low, float)
    e = float(a.mean() - b.mean())
    if a.var(ddof=1) == 0 and b.var(ddof=1) == 0:  # no spread at all: the interval is the point
        return _finish(
            test,
            e=e,
            lo=e,
            hi=e,
            statistic=None,
            p=0.0 if e > null else 1.0,
            null=null,
            claimed=claimed,
            arms=arms,
            alpha=alpha,
        )
    one_sided = stats.ttest_ind(a - null, b, equal_var=False, alternative="greater")
    ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(confidence_level=1 - 2 * alpha)
    return _finish(
        test,
        e=e,
        lo=float(ci.low),
        hi=float(ci.high),
        statistic=float(one_sided.statistic),
        p=float(one_sided.pvalue),
        null=null,
        claimed=claimed,
        arms=arms,
        alpha=alpha,
    )


@_quiet
def one_sample(
    values: Sequence[float], *, label: str = "runs", null: float = 0.0, claimed: float = 0.0, alpha: float = ALPHA
) -> Outcome:
    """``e = mean(values)``: one-sided one-sample t-test of ``H0: e ≤ null`` and the ``1 − 2α`` t interval."""
    test = "one-sided one-sample t-test"
    arms = {label: Summary.of(values)}
    if (early := too_few(test, arms, null=null, claimed=claimed)) is not None:
        return early
    x = np.asarray(values, float)
    e = float(x.mean())
    if x.var(ddof=1) == 0:
        return _finish(
            test,
            e=e,
            lo=e,
            hi=e,
            statistic=None,
            p=0.0 if e > null else 1.0,
            null=null,
            claimed=claimed,
            arms=arms,
            alpha=alpha,
        )
    res = stats.ttest_1samp(x, popmean=null, alternative="greater")
    ci = stats.ttest_1samp(x, popmean=null).confidence_interval(confidence_level=1 - 2 * alpha)
    return _finish(
        test,
        e=e,
        lo=float(ci.low),
        hi=float(ci.high),
        statistic=float(res.statistic),
        p=float(res.pvalue),
        null=null,
        claimed=claimed,
        arms=arms,
        alpha=alpha,
    )


@_quiet
def trend(
    x: Sequence[float], y: Sequence[float], *, sign: int, label: str = "runs", alpha: float = ALPHA, seed: int = 0
) -> Outcome:
    """``e = sign · ρ`` (Spearman's ρ of y on x): one-sided test of ``H0: e ≤ 0`` and a paired percentile bootstrap
    ``1 − 2α`` interval (``BOOTSTRAP_RESAMPLES`` resamples, fixed ``seed``). ``sign=-1``: the claim is that y falls."""
    test = "one-sided Spearman trend test (bootstrap CI)"
    arms = {label: Summary.of(y)}
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.size < 3 or np.unique(x).size < 2 or np.unique(y).size < 2:
        why = f"{x.size} runs, {np.unique(x).size} settings, {np.unique(y).size} distinct values: no trend to test"
        return Outcome("inconclusive", test, why, null=0.0, claimed=0.0, arms=arms)
    rho = stats.spearmanr(x, y, alternative="greater" if sign > 0 else "less")
    boot = stats.bootstrap(
        (x, y),
        lambda a, b: sign * stats.spearmanr(a, b).statistic,
        paired=True,
        vectorized=False,
        n_resamples=BOOTSTRAP_RESAMPLES,
        confidence_level=1 - 2 * alpha,
        method="percentile",
        random_state=np.random.default_rng(seed),
    )
    lo, hi = boot.confidence_interval
    lo, hi = (float(v) if np.isfinite(v) else sign * float(rho.statistic) for v in (lo, hi))
    return _finish(
        test,
        e=sign * float(rho.statistic),
        lo=lo,
        hi=hi,
        statistic=float(rho.statistic),
        p=float(rho.pvalue),
        null=0.0,
        claimed=0.0,
        arms=arms,
        alpha=alpha,
    )


@_quiet
def present(values: Sequence[float], *, above: float = 0.0, alpha: float = ALPHA) -> tuple[bool, Summary]:
    """Whether values are significantly above ``above`` (one-sided t-test at α; with no spread, their value is).

    Used for preconditions: an effect a claim needs before it can be tested (an attack that works without DP).
    """
    s = Summary.of(values)
    x = np.asarray(values, float)
    if s.n == 0:
        return False, s
    if s.n < 2 or x.var(ddof=1) == 0:
        return bool(s.mean > above), s
    return bool(stats.ttest_1samp(x, popmean=above, alternative="greater").pvalue < alpha), s


def combine(verdicts: Sequence[str]) -> str:
    """A claim's verdict from its checks' verdicts.

    Checks that are not testable are set aside; none left: ``not testable here``. Of the rest, any
    ``not reproduced`` makes the claim not reproduced; all ``reproduced`` make it reproduced; else inconclusive.
    """
    tested = [v for v in verdicts if v != "not testable here"]
    if not tested:
        return "not testable here"
    if "not reproduced" in tested:
        return "not reproduced"
    if all(v == "reproduced" for v in tested):
        return "reproduced"
    return "inconclusive"
