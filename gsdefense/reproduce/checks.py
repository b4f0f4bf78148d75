"""A claim's checks: which runs form each arm, which test compares them, and what must hold before it can.

A check reads the ok runs of its claim's sweeps (``frames``: part name → ``load_runs`` rows with status ok, plus
any derived columns) and returns a ``stats.Outcome``. Arms select rows by config values (``where``), never by
folder names. ``Scaled`` makes a null or claimed value relative to an arm's mean (e.g. "a 2× reduction":
claimed = 0.5 · mean of the vanilla arm).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from gsdefense.reproduce import stats
from gsdefense.reproduce.stats import Outcome, Summary

Frames = Mapping[str, pd.DataFrame]


@dataclass(frozen=True)
class Arm:
    """The ok runs of sweep ``part`` whose config matches ``where`` (numbers compared with a tolerance)."""

    part: str
    label: str
    where: Mapping[str, Any] = field(default_factory=dict)
    paper: float | None = None  # the paper's value of this arm's metric, drawn in the figure

    def rows(self, frames: Frames) -> pd.DataFrame:
        if self.part not in frames:
            return pd.DataFrame()
        df = frames[self.part]
        keep = np.ones(len(df), dtype=bool)
        for column, value in self.where.items():
            if column not in df:
                return df.iloc[0:0]
            col = df[column]
            if value is None:
                keep &= col.isna().to_numpy()
            elif isinstance(value, bool | str):
                keep &= (col == value).to_numpy()
            else:
                keep &= np.isclose(pd.to_numeric(col, errors="coerce").to_numpy(dtype=float), float(value))
        return df[keep]

    def values(self, frames: Frames, metric: str) -> list[float]:
        rows = self.rows(frames)
        if metric not in rows:
            return []
        return [float(v) for v in pd.to_numeric(rows[metric], errors="coerce") if np.isfinite(v)]


@dataclass(frozen=True)
class Scaled:
    """``factor`` × the mean of ``arm``'s metric: a null or claimed value relative to a baseline."""

    arm: str  # "high" or "low" (Compare), or the arm's label
    factor: float

    def value(self, means: Mapping[str, float]) -> float:
        return self.factor * means[self.arm]


Level = float | Scaled


def _level(level: Level, means: Mapping[str, float]) -> float:
    return level.value(means) if isinstance(level, Scaled) else float(level)


@dataclass(frozen=True)
class Present:
    """Precondition: ``arm``'s metric is above ``above``; else the check is not testable here, for the reason ``why``
    (formatted with ``{mean}``, ``{sd}``, ``{n}``).

    ``significant``: above by a one-sided t-test at α (``stats.present``: for noisy effects such as RAD); else the
    mean must exceed it (for success rates: any success at all is an effect, however few the seeds).
    """

    arm: Arm
    metric: str
    why: str
    above: float = 0.0
    significant: bool = True

    def failure(self, frames: Frames) -> str | None:
        values = self.arm.values(frames, self.metric)
        s = Summary.of(values)
        ok = stats.present(values, above=self.above)[0] if self.significant else bool(s.n and s.mean > self.above)
        return None if ok else self.why.format(mean=s.mean, sd=s.sd, n=s.n)


@dataclass(frozen=True)
class AtMost:
    """Precondition: the mean of ``arm``'s metric is at most ``limit``; else not testable, for the reason ``why``."""

    arm: Arm
    metric: str
    limit: float
    why: str

    def failure(self, frames: Frames) -> str | None:
        s = Summary.of(self.arm.values(frames, self.metric))
        return None if s.n and s.mean <= self.limit else self.why.format(mean=s.mean, sd=s.sd, n=s.n)


@dataclass(frozen=True)
class Exceeds:
    """Precondition: ``high``'s metric exceeds ``low``'s by more than ``by`` (one-sided Welch at α); else not
    testable, for the reason ``why`` (formatted with ``{high}`` and ``{low}``, the arms' means)."""

    high: Arm
    low: Arm
    metric: str
    why: str
    by: float = 0.0

    def failure(self, frames: Frames) -> str | None:
        high, low = self.high.values(frames, self.metric), self.low.values(frames, self.metric)
        out = stats.welch(high, low, null=self.by, claimed=self.by)
        if out.ci is not None and out.ci[0] > self.by:
            return None
        return self.why.format(high=Summary.of(high).mean, low=Summary.of(low).mean)


Precondition = Present | AtMost | Exceeds


def _untestable(check: Check, frames: Frames) -> Outcome | None:
    """``not testable here`` with every failing precondition's reason (and the arms' numbers), or None."""
    reasons = [r for r in (p.failure(frames) for p in check.requires) if r]
    if not reasons:
        return None
    arms = {arm.label: Summary.of(arm.values(frames, check.metric)) for arm in check.arms}
    return Outcome("not testable here", check.test, "; ".join(reasons), arms=arms, name=check.name)


@dataclass(frozen=True)
class Compare:
    """Claim: ``high``'s metric exceeds ``low``'s by at least ``claimed`` (Welch; e = mean(high) − mean(low))."""

    name: str
    metric: str
    high: Arm
    low: Arm
    null: Level = 0.0
    claimed: Level = 0.0
    requires: tuple[Precondition, ...] = ()
    test = "one-sided Welch t-test"

    @property
    def arms(self) -> tuple[Arm, ...]:
        return (self.high, self.low)

    def evaluate(self, frames: Frames) -> Outcome:
        if (skip := _untestable(self, frames)) is not None:
            return skip
        high, low = self.high.values(frames, self.metric), self.low.values(frames, self.metric)
        means = {"high": Summary.of(high).mean, "low": Summary.of(low).mean}
        null, claimed = _level(self.null, means), _level(self.claimed, means)
        if math.isnan(null) or math.isnan(claimed):
            null, claimed = 0.0, 0.0  # an empty baseline: stats.too_few makes it inconclusive
        claimed = max(claimed, null)  # a relative claim on a baseline below zero degenerates to the null
        out = stats.welch(high, low, labels=(self.high.label, self.low.label), null=null, claimed=claimed)
        return out.named(self.name)


@dataclass(frozen=True)
class OneSample:
    """Claim: the mean of ``arm``'s metric is above ``null`` and compatible with ``claimed`` (one-sample t)."""

    name: str
    metric: str
    arm: Arm
    null: float = 0.0
    claimed: float = 0.0
    requires: tuple[Precondition, ...] = ()
    test = "one-sided one-sample t-test"

    @property
    def arms(self) -> tuple[Arm, ...]:
        return (self.arm,)

    def evaluate(self, frames: Frames) -> Outcome:
        if (skip := _untestable(self, frames)) is not None:
            return skip
        values = self.arm.values(frames, self.metric)
        return stats.one_sample(values, label=self.arm.label, null=self.null, claimed=self.claimed).named(self.name)


@dataclass(frozen=True)
class Trend:
    """Claim: within ``arm``, ``metric`` rises (sign +1) or falls (sign −1) with the setting ``x`` (Spearman)."""

    name: str
    metric: str
    arm: Arm
    x: str
    sign: int
    requires: tuple[Precondition, ...] = ()
    test = "one-sided Spearman trend test (bootstrap CI)"

    @property
    def arms(self) -> tuple[Arm, ...]:
        return (self.arm,)

    def evaluate(self, frames: Frames) -> Outcome:
        if (skip := _untestable(self, frames)) is not None:
            return skip
        rows = self.arm.rows(frames)
        if self.metric not in rows or self.x not in rows:
            return stats.trend([], [], sign=self.sign, label=self.arm.label).named(self.name)
        pairs = rows[[self.x, self.metric]].apply(pd.to_numeric, errors="coerce").dropna()
        out = stats.trend(pairs[self.x], pairs[self.metric], sign=self.sign, label=self.arm.label)
        return out.named(self.name)


@dataclass(frozen=True)
class BudgetCompare:
    """Claim: within a utility budget (mean ``budget_metric`` ≤ ``budget``), the best setting (lowest mean ``metric``)
    of ``low`` beats the best of ``high`` (Welch on ``metric``: e = best(high) − best(low), direction only).

    ``high``/``low`` hold every setting of a mechanism; settings are the distinct values of ``by``. The best
    setting is chosen on the same runs that are then compared: the selection is optimistic for both sides alike.
    """

    name: str
    metric: str
    budget_metric: str
    budget: float
    by: str
    high: Arm
    low: Arm
    requires: tuple[Precondition, ...] = ()
    test = "one-sided Welch t-test"

    @property
    def arms(self) -> tuple[Arm, ...]:
        return (self.high, self.low)

    def best(self, arm: Arm, frames: Frames) -> tuple[Any, list[float]] | None:
        rows = arm.rows(frames)
        if rows.empty or self.by not in rows:
            return None
        chosen = None
        for setting, part in rows.groupby(self.by, dropna=False, sort=True):
            cost = pd.to_numeric(part[self.budget_metric], errors="coerce").dropna()
            values = [float(v) for v in pd.to_numeric(part[self.metric], errors="coerce").dropna()]
            if cost.empty or not values or cost.mean() > self.budget:
                continue
            if chosen is None or np.mean(values) < np.mean(chosen[1]):
                chosen = (setting, values)
        return chosen

    def evaluate(self, frames: Frames) -> Outcome:
        if (skip := _untestable(self, frames)) is not None:
            return skip
        picks = {arm.label: self.best(arm, frames) for arm in (self.high, self.low)}
        empty = [label for label, pick in picks.items() if pick is None]
        if empty:
            why = f"no setting of {', '.join(empty)} keeps the mean {self.budget_metric} <= {self.budget:g}"
            return Outcome("not testable here", self.test, why, name=self.name)
        (hs, high), (ls, low) = picks[self.high.label], picks[self.low.label]
        labels = (f"{self.high.label} {self.by}={hs:g}", f"{self.low.label} {self.by}={ls:g}")
        return stats.welch(high, low, labels=labels).named(self.name)


Check = Compare | OneSample | Trend | BudgetCompare
