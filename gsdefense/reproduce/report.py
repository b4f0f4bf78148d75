"""Write the reproduction report into ``<out>``: ``README.md`` (how verdicts are computed, the summary table, a
section per claim with its checks, figure, setup and the exact sweep commands at both scales), ``claims.csv``,
``checks.csv``, ``data/<id>.csv`` (``tables``) and ``figures/<id>.png`` (``figures``)."""

from __future__ import annotations

import math
import os
import platform
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from gsdefense.reproduce.evaluate import ClaimResult
from gsdefense.reproduce.figures import claim_figure
from gsdefense.reproduce.runner import Sweep, SweepResult
from gsdefense.reproduce.stats import ALPHA, Outcome
from gsdefense.reproduce.tables import check_rows, claim_rows, ours, run_data

RULES = f"""\
Every check is oriented so that a larger effect e supports the claim, and names a *null* value (no effect; for a
"does not reduce" claim, minus the reduction that would matter) and the *claimed* value (the paper's effect; equal
to the null for a claim of direction only). With [lo, hi] the two-sided {100 * (1 - 2 * ALPHA):g}% confidence
interval of e over seeds (so lo > null exactly when the one-sided test rejects at α = {ALPHA}):

- **reproduced**: lo > null and hi ≥ claimed (an effect beyond the null, compatible with the claimed size);
- **not reproduced**: hi < claimed (the data exclude the claimed effect, including the opposite direction);
- **inconclusive**: lo ≤ null and hi ≥ claimed (the interval straddles both), or fewer than 2 ok runs in an arm;
- **not testable here**: a precondition fails on the embedded data (e.g. the attack does not work even without
  DP), with the measured reason; each claim's paper-scale commands are in its section.

A claim is reproduced when all its testable checks are, not reproduced when any is, else inconclusive.
Tests: one-sided Welch t-test (two arms), one-sample t-test, Spearman trend test with a bootstrap interval."""


SCALES = """\
**Scales.** `--scale embedded` (this report unless it says otherwise) runs each claim on offline stand-ins (digits,
breast_cancer) with small schedules: it tests whether the *mechanism* a claim describes shows up there, not the
papers' numbers, and each claim's **Setup** says what differs. `--scale paper` runs the presets at full size (each
claim's paper-scale commands are in its section): FashionMNIST and CIFAR-10 under `GSDEFENSE_DATA_DIR` (fetched
there when missing, given internet access), Purchase-100 at `GSDEFENSE_PURCHASE100`; meant for Slurm/GPUs
(`--launcher slurm`, cluster settings in `conf/local/slurm.yaml`)."""


def _num(value: float | None) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3g}"


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table."""
    cell = lambda v: str(v).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows])


def interval(o: Outcome) -> str:
    """``p = …, e = … [lo, hi]``, or "" without an interval."""
    if o.ci is None:
        return ""
    p = "" if o.p_value is None else f"p = {o.p_value:.2g}, "
    return f"{p}e = {_num(o.effect)} [{_num(o.ci[0])}, {_num(o.ci[1])}]"


def headline(r: ClaimResult) -> str:
    """The primary check's interval (or reason) and, when another check decided the verdict, that check's."""
    text = interval(r.primary) or r.primary.reason
    if r.primary.verdict == r.verdict:
        return text
    decider = next((o for o in r.outcomes if o.verdict == r.verdict), None)
    return text if decider is None else f"{text}; **decided by** {decider.name}: {interval(decider) or decider.reason}"


def _commands(title: str, sweeps: Sequence[Sweep], timing: dict[str, float]) -> list[str]:
    out = [title, ""]
    for s in sweeps:
        took = f" ({timing[s.key]:.0f} s)" if s.key in timing else ""
        out += [f"- `{s.part.name}`{took}:", "", "  ```bash", f"  {s.shell()}", "  ```"]
    return [*out, ""]


def section(
    r: ClaimResult, sweeps: Sequence[Sweep], paper: Sequence[Sweep] | None, timing: dict[str, float]
) -> list[str]:
    """A claim's part of the README."""
    c = r.claim
    arms = ["; ".join(f"{k}: {s.text()}" for k, s in o.arms.items()) or "—" for o in r.outcomes]
    rows = [(o.name, o.test, a, interval(o) or o.reason, f"{_num(o.null)} / {_num(o.claimed)}", o.verdict)
            for o, a in zip(r.outcomes, arms)]  # fmt: skip
    header = ("check", "test", "arms: mean ± sd (n)", "p, effect [90% CI]", "null / claimed", "verdict")
    out = [f"## {c.id}: {r.verdict}", "", f"**Claim.** {c.text}.", "", f"**Source.** {c.source}. **Paper:** {c.paper}.",
           "", table(header, rows), ""]  # fmt: skip
    out += [f"- *{o.name}*: not testable here: {o.reason}" for o in r.outcomes if o.verdict == "not testable here"]
    out += ["", f"![{c.id}](figures/{c.id}.png)", ""]
    notes = [*dict.fromkeys(p.note for p in c.parts if p.note), *c.notes]
    out += ["**Setup.** " + " ".join(notes), ""] if notes else []
    mine = [s for s in sweeps if s.claim == c.id]
    out += _commands("**Sweeps** (from the repository root; each resumes when run again):", mine, timing)
    if paper is not None:
        run = f"python -m gsdefense.reproduce --scale paper --claims {c.id} --launcher slurm"
        title = f"**Paper scale** (the presets at full size; supply the data): `{run}` runs"
        out += _commands(title, paper, {})
    if r.not_ok:
        out += ["**Runs that are not ok** (left out of the tests):", ""]
        out += [*(f"- `{d}` {st}: {e}" for d, st, e in r.not_ok), ""]
    if r.problems:
        out += ["**Problems while deriving values:**", "", *(f"- {p}" for p in r.problems), ""]
    return out


def readme(results: Sequence[ClaimResult], *, sweeps: Sequence[Sweep], paper_sweeps: Sequence[Sweep],
           timing: dict[str, float], wall: float | None, measured: bool, command: str, scale: str) -> str:  # fmt: skip
    rows = [(r.claim.id, r.claim.text, r.claim.source, r.claim.paper, f"{ours(r)[0].text()} ({r.claim.ours})",
             r.primary.test, headline(r), f"**{r.verdict}**") for r in results]  # fmt: skip
    header = ("id", "claim", "source", "paper", "ours: mean ± sd (n)", "test", "p, effect [90% CI]", "verdict")
    head = [
        "# Which claims hold: the reproduction report", "",
        f"Generated by `{command}` (scale: {scale}). {_took(wall, measured)} "
        "`claims.csv` and `checks.csv` hold the numbers below; `data/<id>.csv` the runs behind each claim.", "",
        "## How verdicts are computed", "", RULES, "", SCALES, "", "## Summary", "", table(header, rows), "",
    ]  # fmt: skip

    def paper(claim_id: str) -> list[Sweep] | None:  # at paper scale the sweeps above are the paper's
        return None if scale == "paper" else [s for s in paper_sweeps if s.claim == claim_id]

    body = [line for r in results for line in section(r, sweeps, paper(r.claim.id), timing)]
    return "\n".join(head + body)


def ignore_sweeps(out: Path) -> None:
    """``<out>/.gitignore``: the sweeps (models, checkpoints) stay out of git; the report files do not."""
    out.mkdir(parents=True, exist_ok=True)
    (out / ".gitignore").write_text("# written by python -m gsdefense.reproduce: the sweeps stay out of git\nsweeps/\n")


def _took(wall: float | None, measured: bool) -> str:
    if wall is None:
        return "No sweep timings are recorded here (timing.csv)."
    when = (
        "Its sweeps took"
        if measured
        else "The sweeps took, when they last ran (this command only recomputed the report),"
    )
    return (f"{when} {wall / 60:.1f} min of wall-clock time on {platform.machine()} with {os.cpu_count()} CPUs; "
            "a run already complete is skipped, not retrained, so a rerun takes less.")  # fmt: skip


def timings(out: Path, runs: Sequence[SweepResult], wall: float | None) -> tuple[dict[str, float], float | None, bool]:
    """(seconds per sweep, wall-clock seconds of all, measured now): from ``runs`` (saved to ``timing.csv``), or, when
    nothing ran (``--report-only``), as ``timing.csv`` recorded them."""
    path = out / "timing.csv"
    if runs:
        rows = [{"sweep": r.sweep.key, "seconds": r.seconds, "returncode": r.returncode} for r in runs]
        pd.DataFrame([*rows, {"sweep": "all (wall clock)", "seconds": wall, "returncode": None}]).to_csv(
            path, index=False
        )
        return {r.sweep.key: r.seconds for r in runs}, wall, True
    if not path.exists():
        return {}, None, False
    saved = pd.read_csv(path)
    total = saved[saved["sweep"] == "all (wall clock)"]["seconds"]
    per = saved[saved["sweep"] != "all (wall clock)"]
    return dict(zip(per["sweep"], per["seconds"])), float(total.iloc[0]) if len(total) else None, False


def write(out: Path, results: Sequence[ClaimResult], *, runs: Sequence[SweepResult], wall: float | None,
          **kwargs) -> Path:  # fmt: skip
    """Write every report file into ``out``; returns the README's path."""
    (out / "figures").mkdir(parents=True, exist_ok=True)
    (out / "data").mkdir(exist_ok=True)
    claim_rows(results).to_csv(out / "claims.csv", index=False)
    check_rows(results).to_csv(out / "checks.csv", index=False)
    for r in results:
        fig = claim_figure(r)
        fig.savefig(out / "figures" / f"{r.claim.id}.png", dpi=110)
        plt.close(fig)
        run_data(r, out=out).to_csv(out / "data" / f"{r.claim.id}.csv", index=False)
    ignore_sweeps(out)
    path = out / "README.md"
    timing, total, measured = timings(out, runs, wall)
    path.write_text(readme(results, timing=timing, wall=total, measured=measured, **kwargs))
    return path
