"""What must hold before a check can test its claim here; a failing precondition makes the check ``not testable
here``, with the measured reason (its ``why``, formatted with the measured numbers).

- ``Present``: an arm's metric is above a level (an attack that works without DP: its effect is there to reduce).
  ``above`` may be ``Images(k)``: k test images' worth of accuracy (k / n_test), so that an attack moving a
  single test image is not an effect a defense could be seen to halve.
- ``AtMost``, ``Exceeds``: an arm's mean at most a limit; one arm above another.
- ``Uncensored``: the attack was given the paper's budget, or used less of it than it had: where fewer poisons
  were tried than the paper tried and some targets never fell, their success and poisons needed are unknown
  (censored), for every check that reads them alike.

A precondition whose arm has no runs does not fail: the check's own test then says that there are too few.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from gsdefense.reproduce import stats
from gsdefense.reproduce.arms import Arm, Frames
from gsdefense.reproduce.verdicts import Summary


@dataclass(frozen=True)
class Images:
    """``k`` test images' worth of an accuracy-based metric: ``k / n_test`` (the runs' ``n_test`` column)."""

    k: int

    def value(self, rows: pd.DataFrame) -> float:
        n = pd.to_numeric(rows.get("n_test", pd.Series(dtype=float)), errors="coerce").dropna()
        return self.k / float(n.iloc[0]) if len(n) and n.iloc[0] > 0 else 0.0


@dataclass(frozen=True)
class Present:
    """``arm``'s metric is above ``above``; else not testable here, for the reason ``why`` (formatted with
    ``{mean}``, ``{sd}``, ``{n}``, ``{above}``).

    ``significant``: above by a one-sided t-test at α (``stats.present``: for noisy effects such as RAD); else the
    mean must exceed it (for success rates: any success at all is an effect, however few the seeds).
    """

    arm: Arm
    metric: str
    why: str
    above: float | Images = 0.0
    significant: bool = True

    def failure(self, frames: Frames) -> str | None:
        values = self.arm.values(frames, self.metric)
        above = self.above.value(self.arm.rows(frames)) if isinstance(self.above, Images) else self.above
        s = Summary.of(values)
        if s.n == 0:
            return None  # no runs: the check itself says so (inconclusive), not a precondition
        ok = stats.present(values, above=above)[0] if self.significant else bool(s.mean > above)
        return None if ok else self.why.format(mean=s.mean, sd=s.sd, n=s.n, above=above)


@dataclass(frozen=True)
class AtMost:
    """The mean of ``arm``'s metric is at most ``limit``; else not testable, for the reason ``why``."""

    arm: Arm
    metric: str
    limit: float
    why: str

    def failure(self, frames: Frames) -> str | None:
        s = Summary.of(self.arm.values(frames, self.metric))
        return None if not s.n or s.mean <= self.limit else self.why.format(mean=s.mean, sd=s.sd, n=s.n)


@dataclass(frozen=True)
class Exceeds:
    """``high``'s metric exceeds ``low``'s by more than ``by`` (one-sided Welch at α); else not testable, for the
    reason ``why`` (formatted with ``{high}`` and ``{low}``, the arms' means)."""

    high: Arm
    low: Arm
    metric: str
    why: str
    by: float = 0.0

    def failure(self, frames: Frames) -> str | None:
        high, low = self.high.values(frames, self.metric), self.low.values(frames, self.metric)
        if not high or not low:
            return None
        out = stats.compare(high, low, null=self.by)
        if out.ci is not None and out.ci[0] > self.by:
            return None
        return self.why.format(high=Summary.of(high).mean, low=Summary.of(low).mean)


@dataclass(frozen=True)
class Uncensored:
    """``arm`` tried at least the paper's ``paper_budget`` poisons per target (config ``budget``), or every target
    fell within the poisons it tried (mean ``metric`` 1); else its outcomes are censored: not testable."""

    arm: Arm
    paper_budget: int
    metric: str = "asr"
    budget: str = "attack.max_poisons"

    def failure(self, frames: Frames) -> str | None:
        rows = self.arm.rows(frames)
        tried = pd.to_numeric(rows.get(self.budget, pd.Series(dtype=float)), errors="coerce").dropna()
        s = Summary.of(self.arm.values(frames, self.metric))
        if not len(tried) or not s.n or tried.min() >= self.paper_budget or s.mean >= 1.0:
            return None
        fell = (
            f"none of the targets in {self.arm.label} fell within them"
            if s.mean == 0
            else f"{100 * (1 - s.mean):.0f} % of the targets in {self.arm.label} did not fall within them"
        )
        return (f"censored: at most {int(tried.min())} poisons tried per target (the paper: {self.paper_budget}), "
                f"and {fell} (n={s.n}), so their success and the poisons they need are unknown")  # fmt: skip


Precondition = Present | AtMost | Exceeds | Uncensored


def untestable_reasons(requires: tuple[Precondition, ...], frames: Frames) -> list[str]:
    """Every failing precondition's reason (empty: the check can be tested)."""
    return [r for r in (p.failure(frames) for p in requires) if r]


def fmt_rows(value: float, n_test: float | None) -> str:
    """``0.0005 (1 of 2000 test images)``-style text for an accuracy step."""
    if not n_test or math.isnan(n_test):
        return f"{value:.3g}"
    return f"{value:.3g} ({value * n_test:.3g} of {int(n_test)} test images)"
