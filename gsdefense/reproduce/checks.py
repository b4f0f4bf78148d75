"""A claim's checks: which arms they compare, which test, at which levels, and what must hold first.

Each check kind's ``evaluate(frames, alpha=…)`` returns a ``verdicts.Outcome``: ``not testable here`` when a
precondition fails, else the test's verdict at one-sided level ``alpha`` (``evaluate.py`` passes Holm's share).

Levels (``arms.Level``): ``null`` is the no-effect value on the oriented axis (a "does not reduce by 2×" check puts
it at minus the 2× reduction: a non-inferiority margin); ``claimed`` is the paper's size of the effect, taken from
the same figure and dataset (``arms.Paper``); left out (None), or on another dataset, the check is direction-only
(claimed = null).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from gsdefense.reproduce import stats
from gsdefense.reproduce.arms import Arm, Frames, Level, dataset_id, resolve
from gsdefense.reproduce.preconditions import Precondition, untestable_reasons
from gsdefense.reproduce.verdicts import ALPHA, Outcome, Summary


def _untestable(check: Check, frames: Frames) -> Outcome | None:
    """``not testable here`` with every failing precondition's reason (and the arms' numbers), or None."""
    reasons = untestable_reasons(check.requires, frames)
    if not reasons:
        return None
    arms = {arm.label: Summary.of(arm.values(frames, check.metric)) for arm in check.arms}
    return Outcome("not testable here", check.test, "; ".join(reasons), arms=arms, name=check.name)


def _dataset(check: Check, frames: Frames) -> str | None:
    return next((d for d in (dataset_id(a.rows(frames)) for a in check.arms) if d), None)


def _levels(check: Check, means: dict[str, float], frames: Frames) -> tuple[float, float, str]:
    """(null, claimed, note) on the runs' dataset: a ``Paper`` level of another dataset falls back to direction
    only; a relative claim below its null (a baseline below zero) degenerates to the null."""
    dataset = _dataset(check, frames)
    null, null_why = resolve(check.null, means, dataset)
    claimed, claimed_why = resolve(check.claimed, means, dataset)
    null = 0.0 if null is None else null
    if math.isnan(null) or (claimed is not None and math.isnan(claimed)):
        return 0.0, 0.0, ""  # an empty baseline: too_few makes it inconclusive
    notes = [f"null 0 ({null_why})"] if null_why else []
    notes += [f"direction only ({claimed_why})"] if claimed_why else []
    return null, null if claimed is None else max(claimed, null), "; ".join(notes)


@dataclass(frozen=True)
class _TwoArms:
    """A claim about ``high`` against ``low``; the subclass names the statistic, its test and its null."""

    name: str
    metric: str
    high: Arm
    low: Arm
    null: Level = 0.0
    claimed: Level | None = None
    requires: tuple[Precondition, ...] = ()

    @property
    def arms(self) -> tuple[Arm, ...]:
        return (self.high, self.low)

    def evaluate(self, frames: Frames, *, alpha: float = ALPHA) -> Outcome:
        if (skip := _untestable(self, frames)) is not None:
            return skip
        (high, hs), (low, ls) = self.high.pairs(frames, self.metric), self.low.pairs(frames, self.metric)
        means = {"high": Summary.of(high).mean, "low": Summary.of(low).mean}
        null, claimed, note = _levels(self, means, frames)
        out = self.statistic(high, low, labels=(self.high.label, self.low.label), seeds=(hs, ls), null=null,
                             claimed=claimed, alpha=alpha)  # fmt: skip
        return replace(out, name=self.name, note=note)


@dataclass(frozen=True)
class Compare(_TwoArms):
    """Claim: ``high``'s metric exceeds ``low``'s by at least ``claimed`` (e = mean(high) − mean(low); paired by
    seed when both arms ran the same seeds)."""

    test = "one-sided t-test (paired by seed, else Welch)"
    statistic = staticmethod(stats.compare)


@dataclass(frozen=True)
class Ratio(_TwoArms):
    """Claim: ``high``'s mean is at least ``claimed`` × ``low``'s (e = mean(high) / mean(low), e.g. the share of a
    backdoor's success DP retains); ``null`` is the ratio that would refute it."""

    null: Level = 1.0
    test = "one-sided ratio test (paired by seed, else Welch; Fieller CI)"
    statistic = staticmethod(stats.ratio)


@dataclass(frozen=True)
class OneSample:
    """Claim: the mean of ``arm``'s metric is above ``null`` and compatible with ``claimed`` (one-sample t)."""

    name: str
    metric: str
    arm: Arm
    null: Level = 0.0
    claimed: Level | None = None
    requires: tuple[Precondition, ...] = ()
    test = "one-sided one-sample t-test"

    @property
    def arms(self) -> tuple[Arm, ...]:
        return (self.arm,)

    def evaluate(self, frames: Frames, *, alpha: float = ALPHA) -> Outcome:
        if (skip := _untestable(self, frames)) is not None:
            return skip
        values = self.arm.values(frames, self.metric)
        null, claimed, note = _levels(self, {self.arm.label: Summary.of(values).mean}, frames)
        out = stats.one_sample(values, label=self.arm.label, null=null, claimed=claimed, alpha=alpha)
        return replace(out, name=self.name, note=note)


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

    def evaluate(self, frames: Frames, *, alpha: float = ALPHA) -> Outcome:
        if (skip := _untestable(self, frames)) is not None:
            return skip
        rows = self.arm.rows(frames)
        if self.metric not in rows or self.x not in rows:
            return stats.trend([], [], sign=self.sign, label=self.arm.label).named(self.name)
        pairs = rows[[self.x, self.metric]].apply(pd.to_numeric, errors="coerce").dropna()
        out = stats.trend(pairs[self.x], pairs[self.metric], sign=self.sign, label=self.arm.label, alpha=alpha)
        return out.named(self.name)


@dataclass(frozen=True)
class BudgetCompare:
    """Claim: within a utility budget (mean ``budget_metric`` ≤ ``budget``), the best setting (lowest mean ``metric``)
    of ``low`` beats the best of ``high`` (e = best(high) − best(low), direction only; paired by seed when both
    best settings ran the same seeds).

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
    test = "one-sided t-test (paired by seed, else Welch)"

    @property
    def arms(self) -> tuple[Arm, ...]:
        return (self.high, self.low)

    def best(self, arm: Arm, frames: Frames) -> tuple[Any, list[float], list[object]] | None:
        rows = arm.rows(frames)
        if rows.empty or self.by not in rows:
            return None
        chosen = None
        for setting, part in rows.groupby(self.by, dropna=False, sort=True):
            cost = pd.to_numeric(part[self.budget_metric], errors="coerce").dropna()
            values, seeds = Arm(arm.part, arm.label).pairs({arm.part: part}, self.metric)
            if cost.empty or not values or cost.mean() > self.budget:
                continue
            if chosen is None or np.mean(values) < np.mean(chosen[1]):
                chosen = (setting, values, seeds)
        return chosen

    def evaluate(self, frames: Frames, *, alpha: float = ALPHA) -> Outcome:
        if (skip := _untestable(self, frames)) is not None:
            return skip
        picks = {arm.label: self.best(arm, frames) for arm in (self.high, self.low)}
        empty = [label for label, pick in picks.items() if pick is None]
        if empty:
            why = f"no setting of {', '.join(empty)} keeps the mean {self.budget_metric} <= {self.budget:g}"
            return Outcome("not testable here", self.test, why, name=self.name)
        (hs, high, h_seeds), (ls, low, l_seeds) = picks[self.high.label], picks[self.low.label]
        labels = (f"{self.high.label} {self.by}={hs:g}", f"{self.low.label} {self.by}={ls:g}")
        return stats.compare(high, low, labels=labels, seeds=(h_seeds, l_seeds), alpha=alpha).named(self.name)


Check = Compare | Ratio | OneSample | Trend | BudgetCompare
