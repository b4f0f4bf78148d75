"""A claim's verdict from its sweeps: load the runs (``gsdefense.analysis.load_runs``), keep status ok, add the
derived per-run values its parts ask for, run its checks and combine their verdicts (``stats.combine``)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from gsdefense.analysis import load_runs
from gsdefense.reproduce import stats
from gsdefense.reproduce.evidence import DERIVE
from gsdefense.reproduce.spec import Claim
from gsdefense.reproduce.stats import Outcome


@dataclass
class ClaimResult:
    claim: Claim
    verdict: str
    outcomes: list[Outcome]
    frames: dict[str, pd.DataFrame]  # part name → ok runs (+ derived columns)
    not_ok: list[tuple[str, str, str]] = field(default_factory=list)  # (run_dir, status, error) of other runs
    problems: list[str] = field(default_factory=list)  # warnings raised while deriving values

    @property
    def primary(self) -> Outcome:
        return self.outcomes[0]

    @property
    def reason(self) -> str:
        """The primary check's reason, and each other check that is not reproduced or not testable."""
        lines = [f"{self.primary.name}: {self.primary.verdict} ({self.primary.reason})"]
        lines += [f"{o.name}: {o.verdict} ({o.reason})" for o in self.outcomes[1:] if o.verdict != "reproduced"]
        return " | ".join(lines)


def load_part(sweep_dir: Path, *, derive: str | None) -> tuple[pd.DataFrame, list[tuple[str, str, str]], list[str]]:
    """(ok runs with derived columns, the other runs as (run_dir, status, error), warnings) of one sweep."""
    if not sweep_dir.is_dir():
        return pd.DataFrame(), [(str(sweep_dir), "missing", "the sweep has not run")], []
    runs = load_runs(sweep_dir)
    ok = runs[runs["status"] == "ok"].reset_index(drop=True)
    bad = runs[runs["status"] != "ok"]
    errors = bad["error"] if "error" in bad else pd.Series("", index=bad.index)
    not_ok = [
        (str(d), str(s), " ".join(str(e or "").split())) for d, s, e in zip(bad["run_dir"], bad["status"], errors)
    ]
    problems: list[str] = []
    if derive and not ok.empty:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ok = DERIVE[derive](ok, sweep_dir)
        problems = [" ".join(str(w.message).split()) for w in caught if issubclass(w.category, RuntimeWarning)]
    return ok, not_ok, problems


def evaluate(claim: Claim, *, out: Path) -> ClaimResult:
    """Run ``claim``'s checks on its sweeps in ``<out>/sweeps/<claim>/``."""
    frames: dict[str, pd.DataFrame] = {}
    not_ok: list[tuple[str, str, str]] = []
    problems: list[str] = []
    for part in claim.parts:
        ok, bad, found = load_part(out / "sweeps" / claim.id / part.name, derive=part.derive)
        frames[part.name] = ok
        not_ok += bad
        problems += found
    outcomes = [check.evaluate(frames) for check in claim.checks]
    verdict = stats.combine([o.verdict for o in outcomes])
    return ClaimResult(claim, verdict, outcomes, frames, not_ok, problems)
