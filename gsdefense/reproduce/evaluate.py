"""A claim's verdict from its sweeps: load the runs (``gsdefense.analysis.load_runs``), keep status ok, add the
derived per-run values its parts ask for, run its checks with Holm's correction across them, and combine their
verdicts (``verdicts.combine``).

Holm: every check is first run at α to get its one-sided p; the m testable ones are ranked, and each is run again
at its Holm level (its interval widens accordingly); a check Holm does not reject (step-down) cannot be
``reproduced``, whatever its own interval says.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd

from gsdefense.analysis import load_runs
from gsdefense.reproduce import verdicts
from gsdefense.reproduce.arms import Frames
from gsdefense.reproduce.evidence import DERIVE, common
from gsdefense.reproduce.spec import Claim
from gsdefense.reproduce.verdicts import ALPHA, Outcome


@dataclass
class ClaimResult:
    claim: Claim
    verdict: str
    outcomes: list[Outcome]
    frames: dict[str, pd.DataFrame]  # part name → ok runs (+ derived columns)
    not_ok: list[tuple[str, str, str]] = field(default_factory=list)  # (run_dir, status, error) of other runs
    problems: list[str] = field(default_factory=list)  # warnings raised while deriving values
    findings: list[str] = field(default_factory=list)  # what the runs show beside the checks (Claim.findings)
    needs: str = ""  # at paper scale: the data this machine lacks ("needs Purchase-100: ..."); then nothing ran

    @property
    def primary(self) -> Outcome:
        return self.outcomes[0]

    @property
    def reason(self) -> str:
        """The primary check's reason, and each other check that is not reproduced."""
        if self.needs:
            return self.needs
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
    if not ok.empty:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ok = common(ok)
            if derive:
                ok = DERIVE[derive](ok, sweep_dir)
        problems = [" ".join(str(w.message).split()) for w in caught if issubclass(w.category, RuntimeWarning)]
    return ok, not_ok, problems


def run_checks(claim: Claim, frames: Frames) -> list[Outcome]:
    """Every check's outcome, Holm-corrected across the claim's testable checks."""
    first = [check.evaluate(frames) for check in claim.checks]
    tested = [i for i, o in enumerate(first) if o.testable]
    if len(tested) < 2:
        return [replace(o, p_holm=o.p_value) if o.testable else o for o in first]
    levels, adjusted = verdicts.holm([first[i].p_value for i in tested], alpha=ALPHA)
    out = list(first)
    for i, level, p_holm in zip(tested, levels, adjusted):
        o = claim.checks[i].evaluate(frames, alpha=level)
        if o.verdict == "reproduced" and p_holm >= ALPHA:
            why = f"{o.reason}; but Holm does not reject it (adjusted p = {p_holm:.2g}: a check before it is not)"
            o = replace(o, verdict="inconclusive", reason=why)
        out[i] = replace(o, p_holm=p_holm)
    return out


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
    outcomes = run_checks(claim, frames)
    findings = [text for text in (f(frames) for f in claim.findings) if text]
    return ClaimResult(claim, verdicts.combine([o.verdict for o in outcomes]), outcomes, frames, not_ok, problems,
                       findings)  # fmt: skip


def placeholder(claim: Claim, *, verdict: str, why: str) -> ClaimResult:
    """A claim that did not run here: ``needs <dataset>`` (its data is missing) or ``not run here`` (its cost on
    this machine); ``why`` says what is missing and how to get it, or the measured cost."""
    outcomes = [Outcome("not testable here", c.test, why, name=c.name) for c in claim.checks]
    frames = {p.name: pd.DataFrame() for p in claim.parts}
    return ClaimResult(claim, verdict, outcomes, frames, needs=why)
