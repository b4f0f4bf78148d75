"""Write the reproduction report into ``<out>``: ``README.md`` (a tally line, how verdicts are computed, the summary
table, a section per claim), ``claims.csv``, ``checks.csv``, ``sections/<id>.md``, ``data/<id>.csv``
(``tables``) and ``figures/<id>.png`` (``figures``).

Per claim: a run writes the sections, rows, data and figures of the claims it tested and keeps every other
claim's (a ``--claims`` subset never erases the rest of a published report); the README is assembled from all.
"""

from __future__ import annotations

import math
import os
import platform
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from gsdefense.reproduce.claims import BY_ID
from gsdefense.reproduce.evaluate import ClaimResult
from gsdefense.reproduce.figures import claim_figure
from gsdefense.reproduce.report_text import RULES, SCALES, section_body, table
from gsdefense.reproduce.runner import Sweep, SweepResult
from gsdefense.reproduce.spec import REPORTS, ROOT
from gsdefense.reproduce.stats import Outcome
from gsdefense.reproduce.tables import check_rows, claim_rows, merged, ours, run_data
from gsdefense.reproduce.verdicts import VERDICTS

WALL = "all (wall clock)"


def _num(value: float | None) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3g}"


def interval(o: Outcome) -> str:
    """``p = … (Holm …), e = … [lo, hi] (90% CI)``, or "" without an interval."""
    if o.ci is None:
        return ""
    holm = f" (Holm {o.p_holm:.2g})" if o.p_holm is not None and o.p_value is not None and o.p_holm != o.p_value else ""
    p = "" if o.p_value is None else f"p = {o.p_value:.2g}{holm}, "
    return f"{p}e = {_num(o.effect)} [{_num(o.ci[0])}, {_num(o.ci[1])}] ({100 * (1 - 2 * o.alpha):.3g}% CI)"


def headline(r: ClaimResult) -> str:
    """The primary check's interval (or reason) and, when another check decided the verdict, that check's."""
    if r.needs:
        return r.needs
    text = interval(r.primary) or r.primary.reason
    if r.primary.verdict == r.verdict:
        return text
    decider = next((o for o in r.outcomes if o.verdict == r.verdict), None)
    return text if decider is None else f"{text}; **decided by** {decider.name}: {interval(decider) or decider.reason}"


def tally_text(verdicts: Sequence[str], *, scale: str) -> str:
    """``At paper scale: 2 reproduced · 1 opposite direction · …``, verdicts in a fixed order."""
    counts = Counter(verdicts)
    order = [v for v in VERDICTS if v in counts] + sorted(v for v in counts if v not in VERDICTS)
    return f"At {scale} scale: " + (" · ".join(f"{counts[v]} {v}" for v in order) or "no claims")


def tally(verdicts: Sequence[str], *, scale: str) -> str:
    """The report's first line: ``**At paper scale: …** (11 claims)``."""
    n = len(verdicts)
    return f"**{tally_text(verdicts, scale=scale)}** ({n} claim{'' if n == 1 else 's'})"


def update_tally(readme: Path, *, scale: str, line: str) -> bool:
    """Replace the text between ``<!-- tally:<scale> -->`` and ``<!-- /tally -->`` in the project README (its first
    screen shows each committed report's tally); False when the markers are not there."""
    start, end = f"<!-- tally:{scale} -->", "<!-- /tally -->"
    try:
        text = readme.read_text()
    except OSError:
        return False
    i = text.find(start)
    j = text.find(end, i + len(start)) if i >= 0 else -1
    if j < 0:
        return False
    readme.write_text(text[: i + len(start)] + line + text[j:])
    return True


def ignore_sweeps(out: Path) -> None:
    """``<out>/.gitignore``: the sweeps (models, checkpoints) stay out of git; the report files do not."""
    out.mkdir(parents=True, exist_ok=True)
    (out / ".gitignore").write_text("# written by python -m gsdefense.reproduce: the sweeps stay out of git\nsweeps/\n")


def saved_seconds(out: Path) -> dict[str, float]:
    """Each sweep's seconds as ``<out>/timing.csv`` last recorded them (empty without one)."""
    try:
        saved = pd.read_csv(out / "timing.csv")
        return {k: float(v) for k, v in zip(saved["sweep"], saved["seconds"]) if k != WALL and v == v}
    except (OSError, ValueError, KeyError):
        return {}


def timings(out: Path, runs: Sequence[SweepResult], wall: float | None) -> tuple[dict[str, float], float | None, bool]:
    """(seconds per sweep, wall-clock seconds of a full run, measured now). Sweeps that ran now replace their rows of
    ``timing.csv`` (the others are kept); the wall-clock row is replaced only by a run of every claim (``wall``)."""
    path = out / "timing.csv"
    saved = pd.read_csv(path) if path.exists() else pd.DataFrame(columns=["sweep", "seconds", "returncode", "cpus"])
    fresh = pd.DataFrame([{"sweep": r.sweep.key, "seconds": r.seconds, "returncode": r.returncode,
                           "cpus": os.cpu_count()} for r in runs])  # fmt: skip
    if wall is not None:
        fresh = pd.concat([fresh, pd.DataFrame([{"sweep": WALL, "seconds": wall, "cpus": os.cpu_count()}])])
    if not fresh.empty:
        keep = saved[~saved["sweep"].isin(set(fresh["sweep"]))]
        saved = pd.concat([keep, fresh], ignore_index=True)
        saved.to_csv(path, index=False)
    per = saved[saved["sweep"] != WALL]
    total = saved.loc[saved["sweep"] == WALL, "seconds"]
    return dict(zip(per["sweep"], per["seconds"])), float(total.iloc[0]) if len(total) else None, wall is not None


def _took(wall: float | None, measured: bool) -> str:
    if wall is None:
        return "No full run's wall-clock time is recorded here yet (timing.csv has each sweep's)."
    when = "Its sweeps took" if measured else "A full run's sweeps took, when they last ran,"
    return (f"{when} {wall / 60:.1f} min of wall-clock time on {platform.machine()} with {os.cpu_count()} CPUs; "
            "a run already complete is skipped, not retrained, so a rerun takes less.")  # fmt: skip


def write_claims(out: Path, results: Sequence[ClaimResult], *, scale: str, sweeps: Sequence[Sweep],
                 paper_sweeps: Sequence[Sweep], timing: dict[str, float]) -> None:  # fmt: skip
    """The tested claims' sections, rows, data and figures (other claims' files are kept)."""
    for folder in ("figures", "data", "sections"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    text = {}
    for r in results:
        summary = "—" if r.needs else f"{ours(r)[0].text()} ({r.claim.ours})"
        text[r.claim.id] = (summary, headline(r))
        mine = [s for s in sweeps if s.claim == r.claim.id]
        theirs = None if scale == "paper" else [s for s in paper_sweeps if s.claim == r.claim.id]
        body = section_body(r, scale=scale, sweeps=mine, paper=theirs, timing=timing, interval=interval)
        (out / "sections" / f"{r.claim.id}.md").write_text("\n".join(body) + "\n")
        if not r.needs:
            fig = claim_figure(r)
            fig.savefig(out / "figures" / f"{r.claim.id}.png", dpi=110)
            plt.close(fig)
            run_data(r, out=out).to_csv(out / "data" / f"{r.claim.id}.csv", index=False)
    order = list(BY_ID)
    merged(out / "claims.csv", claim_rows(results, scale=scale, text=text), order=order).to_csv(
        out / "claims.csv", index=False
    )
    merged(out / "checks.csv", check_rows(results), order=order).to_csv(out / "checks.csv", index=False)


def readme(out: Path, *, scale: str, command: str, wall: float | None, measured: bool) -> str:
    """README.md from ``claims.csv`` and ``sections/`` (every claim the folder has, in report order)."""
    claims = pd.read_csv(out / "claims.csv").fillna("")
    rows = [(c.id, c.claim, c.source, c.paper, c.ours, c.headline, f"**{c.verdict}** ({scale})")
            for c in claims.itertuples()]  # fmt: skip
    header = ("id", "claim", "source", "paper", "ours: mean ± sd (n)", "p, effect [CI]", "verdict")
    other = "../reproduction-paper/README.md" if scale == "embedded" else "../reproduction/README.md"
    original = (" The original code's released numbers, cell by cell beside ours: [original/](original/README.md)."
                if scale == "paper" and (out / "original" / "README.md").exists() else "")  # fmt: skip
    head = [
        f"# Which claims hold at {scale} scale",
        "",
        tally(list(claims["verdict"]), scale=scale),
        "",
        f"Generated by `{command}`. {_took(wall, measured)} `claims.csv` and `checks.csv` hold the numbers below; "
        f"`data/<id>.csv` the runs behind each claim. The other scale's report: [{other}]({other}).{original}",
        "",
        "## How verdicts are computed",
        "",
        RULES,
        "",
        SCALES,
        "",
        "## Summary",
        "",
        table(header, rows),
        "",
    ]
    paths = [out / "sections" / f"{claim_id}.md" for claim_id in claims["id"]]
    sections = [p.read_text() for p in paths if p.exists()]
    return "\n".join(head) + "\n" + "\n".join(sections)


def write(out: Path, results: Sequence[ClaimResult], *, runs: Sequence[SweepResult], wall: float | None,
          sweeps: Sequence[Sweep], paper_sweeps: Sequence[Sweep], command: str, scale: str) -> Path:  # fmt: skip
    """Write the tested claims' files and reassemble the README; returns its path. ``wall``: the wall-clock time of a
    run of every claim (None for a subset or no run)."""
    ignore_sweeps(out)
    timing, total, measured = timings(out, runs, wall)
    write_claims(out, results, scale=scale, sweeps=sweeps, paper_sweeps=paper_sweeps, timing=timing)
    path = out / "README.md"
    path.write_text(readme(out, scale=scale, command=command, wall=total, measured=measured))
    if out.resolve() == (ROOT / REPORTS[scale]).resolve():  # the committed report: keep the project README's tally
        verdicts = list(pd.read_csv(out / "claims.csv")["verdict"])
        update_tally(ROOT / "README.md", scale=scale, line=tally_text(verdicts, scale=scale))
    return path
