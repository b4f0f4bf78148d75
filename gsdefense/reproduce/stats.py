"""The tests behind the verdicts: each returns an ``Outcome`` whose verdict follows ``verdicts.decide``.

- ``compare``: ``e = mean(high) − mean(low)``; a paired t-test on per-seed differences when both arms ran the same
  seeds once each (``paired``), else Welch's.
- ``one_sample``: ``e = mean(values)``, one-sample t.
- ``ratio``: ``e = mean(high) / mean(low)`` (e.g. how much of a backdoor's success DP retains); the test of
  ``H0: e ≤ r`` is the t-test of ``high − r·low`` (paired or Welch), its interval Fieller's (every r that test
  does not reject at α on either side).
- ``trend``: ``e = sign · ρ`` (Spearman), with a paired percentile bootstrap interval.

Test-set sampling is not in these intervals: every arm is scored on the same test set, so the intervals are
over training randomness (seeds) only; the report says so.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence

import numpy as np
from scipy import optimize, stats

from gsdefense.reproduce.verdicts import ALPHA, Outcome, Summary, finish, too_few

BOOTSTRAP_RESAMPLES = 2000


def _quiet(func):
    """Run ``func`` without scipy's RuntimeWarnings (near-identical samples): the interval already shows them."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return func(*args, **kwargs)

    return wrapper


def paired(high_seeds: Sequence[object] | None, low_seeds: Sequence[object] | None) -> bool:
    """Whether two arms ran the same seeds, each once (so their values pair up seed by seed)."""
    if high_seeds is None or low_seeds is None or len(high_seeds) < 2:
        return False
    return len(set(high_seeds)) == len(high_seeds) and sorted(map(str, high_seeds)) == sorted(map(str, low_seeds))


def _align(values: Sequence[float], seeds: Sequence[object]) -> np.ndarray:
    return np.asarray([v for _, v in sorted(zip(map(str, seeds), values))], float)


def _point(test: str, e: float, *, null: float, claimed: float, arms: dict, alpha: float) -> Outcome:
    """No spread at all: the interval is the point."""
    return finish(test, e=e, lo=e, hi=e, statistic=None, p=0.0 if e > null else 1.0, null=null, claimed=claimed,
                  arms=arms, alpha=alpha)  # fmt: skip


@_quiet
def compare(
    high: Sequence[float],
    low: Sequence[float],
    *,
    labels: tuple[str, str] = ("high", "low"),
    seeds: tuple[Sequence[object], Sequence[object]] | None = None,
    null: float = 0.0,
    claimed: float | None = None,
    alpha: float = ALPHA,
) -> Outcome:
    """``e = mean(high) − mean(low)``: one-sided test of ``H0: e ≤ null`` and its ``1 − 2α`` interval; paired by
    seed when ``seeds`` (each arm's seed per value) pair up, else Welch."""
    claimed = null if claimed is None else claimed  # None: a claim of direction only
    is_paired = seeds is not None and paired(*seeds)
    test = "one-sided paired t-test" if is_paired else "one-sided Welch t-test"
    arms = {labels[0]: Summary.of(high), labels[1]: Summary.of(low)}
    if (early := too_few(test, arms, null=null, claimed=claimed)) is not None:
        return early
    a, b = np.asarray(high, float), np.asarray(low, float)
    e = float(a.mean() - b.mean())
    if is_paired:
        d = _align(high, seeds[0]) - _align(low, seeds[1])
        if d.var(ddof=1) == 0:
            return _point(test, e, null=null, claimed=claimed, arms=arms, alpha=alpha)
        one_sided = stats.ttest_1samp(d, popmean=null, alternative="greater")
        ci = stats.ttest_1samp(d, popmean=null).confidence_interval(confidence_level=1 - 2 * alpha)
    else:
        if a.var(ddof=1) == 0 and b.var(ddof=1) == 0:
            return _point(test, e, null=null, claimed=claimed, arms=arms, alpha=alpha)
        one_sided = stats.ttest_ind(a - null, b, equal_var=False, alternative="greater")
        ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(confidence_level=1 - 2 * alpha)
    return finish(test, e=e, lo=float(ci.low), hi=float(ci.high), statistic=float(one_sided.statistic),
                  p=float(one_sided.pvalue), null=null, claimed=claimed, arms=arms, alpha=alpha)  # fmt: skip


@_quiet
def one_sample(
    values: Sequence[float],
    *,
    label: str = "runs",
    null: float = 0.0,
    claimed: float | None = None,
    alpha: float = ALPHA,
) -> Outcome:
    """``e = mean(values)``: one-sided one-sample t-test of ``H0: e ≤ null`` and the ``1 − 2α`` t interval."""
    claimed = null if claimed is None else claimed
    test = "one-sided one-sample t-test"
    arms = {label: Summary.of(values)}
    if (early := too_few(test, arms, null=null, claimed=claimed)) is not None:
        return early
    x = np.asarray(values, float)
    e = float(x.mean())
    if x.var(ddof=1) == 0:
        return _point(test, e, null=null, claimed=claimed, arms=arms, alpha=alpha)
    res = stats.ttest_1samp(x, popmean=null, alternative="greater")
    ci = stats.ttest_1samp(x, popmean=null).confidence_interval(confidence_level=1 - 2 * alpha)
    return finish(test, e=e, lo=float(ci.low), hi=float(ci.high), statistic=float(res.statistic),
                  p=float(res.pvalue), null=null, claimed=claimed, arms=arms, alpha=alpha)  # fmt: skip


def _t_of(a: np.ndarray, b: np.ndarray, r: float, is_paired: bool) -> tuple[float, float]:
    """(t, df) of ``mean(a − r·b) > 0``: one-sample t on the per-seed differences, or Welch."""
    if is_paired:
        d = a - r * b
        se = d.std(ddof=1) / math.sqrt(d.size)
        return (d.mean() / se if se > 0 else math.copysign(math.inf, d.mean())), d.size - 1
    va, vb = a.var(ddof=1) / a.size, r * r * b.var(ddof=1) / b.size
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1)) if va + vb > 0 else a.size + b.size - 2
    diff = a.mean() - r * b.mean()
    return (diff / se if se > 0 else math.copysign(math.inf, diff)), df


def _fieller_end(a: np.ndarray, b: np.ndarray, *, is_paired: bool, alpha: float, upper: bool, e: float) -> float:
    """The interval end where the one-sided t of ``a − r·b`` crosses its critical value (±inf if it never does)."""

    def excess(r: float) -> float:
        t, df = _t_of(a, b, r, is_paired)
        crit = stats.t.ppf(1 - alpha, df)
        return (-t - crit) if upper else (t - crit)  # zero at the end; the end holds r where it is <= 0

    step, r = max(abs(e), 1e-6), e
    for _ in range(60):
        far = r + step if upper else r - step
        if excess(far) > 0:
            return float(optimize.brentq(excess, min(r, far), max(r, far)))
        r, step = far, step * 2
    return math.inf if upper else -math.inf


@_quiet
def ratio(
    high: Sequence[float],
    low: Sequence[float],
    *,
    labels: tuple[str, str] = ("high", "low"),
    seeds: tuple[Sequence[object], Sequence[object]] | None = None,
    null: float = 0.0,
    claimed: float | None = None,
    alpha: float = ALPHA,
) -> Outcome:
    """``e = mean(high) / mean(low)``: one-sided test of ``H0: e ≤ null`` (the t-test of ``high − null·low``,
    paired by seed when the seeds pair up) and Fieller's ``1 − 2α`` interval (``mean(low)`` must be > 0)."""
    claimed = null if claimed is None else claimed
    is_paired = seeds is not None and paired(*seeds)
    test = f"one-sided {'paired' if is_paired else 'Welch'} ratio test (Fieller CI)"
    arms = {labels[0]: Summary.of(high), labels[1]: Summary.of(low)}
    if (early := too_few(test, arms, null=null, claimed=claimed)) is not None:
        return early
    a, b = (_align(high, seeds[0]), _align(low, seeds[1])) if is_paired else (np.asarray(high, float),
                                                                             np.asarray(low, float))  # fmt: skip
    if b.mean() <= 0:
        why = f"{labels[1]} averages {b.mean():.3g}: no ratio to {labels[1]} (it must be above 0)"
        return Outcome("inconclusive", test, why, null=null, claimed=claimed, arms=arms)
    e = float(a.mean() / b.mean())
    if a.var(ddof=1) == 0 and b.var(ddof=1) == 0:
        return _point(test, e, null=null, claimed=claimed, arms=arms, alpha=alpha)
    t, df = _t_of(a, b, null, is_paired)
    p = float(stats.t.sf(t, df))
    lo = _fieller_end(a, b, is_paired=is_paired, alpha=alpha, upper=False, e=e)
    hi = _fieller_end(a, b, is_paired=is_paired, alpha=alpha, upper=True, e=e)
    return finish(test, e=e, lo=lo, hi=hi, statistic=float(t), p=p, null=null, claimed=claimed, arms=arms,
                  alpha=alpha)  # fmt: skip


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
    return finish(test, e=sign * float(rho.statistic), lo=lo, hi=hi, statistic=float(rho.statistic),
                  p=float(rho.pvalue), null=0.0, claimed=0.0, arms=arms, alpha=alpha)  # fmt: skip


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
