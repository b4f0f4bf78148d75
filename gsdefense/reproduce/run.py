"""What ``python -m gsdefense.reproduce`` does once its arguments are valid: check each claim's data, run the sweeps
of the claims that can run, test them and write the report, never overwriting a published verdict with a
non-result.

- ``--report-only`` recomputes the claims whose sweeps are on disk; claims without sweeps keep their committed
  sections; with none at all it refuses (one line, exit 2, nothing written): a fresh clone has no sweeps.
- A claim whose data is missing is named (one line each, what is missing and how to get it). At paper scale it is
  listed as ``needs <dataset>`` unless ``<out>`` already holds a tested verdict for it, which is kept. A claim with
  a ``paper_skip`` reason is listed as ``not run here`` with it. If no selected claim can run: exit 2, nothing
  written.
- A full ``--scale paper`` run (no ``--claims``) also runs and writes the original-results comparison
  (``original.py``).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from gsdefense.reproduce import datacheck, original, report, runner
from gsdefense.reproduce.evaluate import ClaimResult, evaluate, placeholder
from gsdefense.reproduce.spec import Claim, estimate

NOT_RESULTS = ("needs ", "not run here")  # verdicts that say nothing ran: a later run may replace them


def has_sweeps(claim: Claim, out: Path) -> bool:
    """Whether every part of ``claim`` has a sweep folder holding at least one run in ``out``."""
    return all(any((out / "sweeps" / claim.id / p.name).glob("*/.hydra/config.yaml")) for p in claim.parts)


def committed(out: Path) -> dict[str, str]:
    """Claim id → verdict in ``<out>/claims.csv`` (empty when there is none)."""
    try:
        table = pd.read_csv(out / "claims.csv")
        return dict(zip(table["id"], table["verdict"].astype(str)))
    except (OSError, ValueError, KeyError):
        return {}


def _flag(args: argparse.Namespace) -> str:
    return " --scale paper" if args.scale == "paper" else ""


def report_only(args: argparse.Namespace, claims: Sequence[Claim], sweeps: Sequence[runner.Sweep], *,
                command: str, paper: Sequence[runner.Sweep]) -> int:  # fmt: skip
    have = [c for c in claims if has_sweeps(c, args.out)]
    if not have:
        ids = ", ".join(c.id for c in claims)
        print(f"error: --report-only: no sweeps under {args.out / 'sweeps'} for {ids} (sweeps stay out of git, so a "
              f"fresh clone has none); the report there is kept as it is. Fix: run python -m gsdefense.reproduce"
              f"{_flag(args)} to create them ({estimate(args.scale)}).", file=sys.stderr)  # fmt: skip
        return 2
    kept = [c.id for c in claims if c not in have]
    if kept:
        print(f"kept the committed sections of {', '.join(kept)} (no sweeps for them in {args.out / 'sweeps'})")
    results = [evaluate(c, out=args.out) for c in have]
    path = report.write(args.out, results, runs=[], wall=None, sweeps=sweeps, paper_sweeps=paper, command=command,
                        scale=args.scale)  # fmt: skip
    if args.scale == "paper" and (args.out / "sweeps" / original.CLAIM).is_dir():
        print(f"original results: {original.write(args.out)}")
    return _done(results, path)


def _done(results: Sequence[ClaimResult], path: Path, *, start: float | None = None) -> int:
    for r in results:
        print(f"{r.claim.id}: {r.verdict}")
    took = f" ({(time.perf_counter() - start) / 60:.1f} min)" if start is not None else ""
    print(f"report: {path}{took}")
    return 0


def reproduce(args: argparse.Namespace, claims: Sequence[Claim], sweeps: Sequence[runner.Sweep], *,
              command: str) -> int:  # fmt: skip
    """Check data, run, test and report (module docstring); the exit status."""
    start = time.perf_counter()
    paper_out = args.out if args.scale == "paper" else args.out.with_name(args.out.name + "-paper")
    paper = runner.plan(claims, scale="paper", out=paper_out, seeds=args.seeds)
    if args.report_only:
        return report_only(args, claims, sweeps, command=command, paper=paper)
    skip = {c.id: c.paper_skip for c in claims if args.scale == "paper" and c.paper_skip}
    missing = datacheck.missing([s for s in sweeps if s.claim not in skip])
    for claim_id, gap in missing.items():
        print(gap.line(claim_id), file=sys.stderr)
    runnable = [c for c in claims if c.id not in missing and c.id not in skip]
    if not runnable:
        print(f"error: no selected claim can run here ({', '.join(c.id for c in claims)}: see above); nothing was "
              "run or written.", file=sys.stderr)  # fmt: skip
        return 2
    published, placeholders = committed(args.out), {}
    for c in claims:
        if c in runnable:
            continue
        if not published.get(c.id, "needs ").startswith(NOT_RESULTS):
            print(f"{c.id}: kept its committed verdict ({published[c.id]}): it cannot run here")
        elif c.id in skip:
            placeholders[c.id] = placeholder(c, verdict="not run here", why=skip[c.id])
        else:
            gap = missing[c.id]
            placeholders[c.id] = placeholder(c, verdict=f"needs {gap.dataset}", why=gap.message)
    ids = {c.id for c in runnable}
    todo = [s for s in sweeps if s.claim in ids]
    full = args.scale == "paper" and not args.claims and not args.smoke
    extra = runner.plan_parts(original.CLAIM, original.parts(), scale="paper", out=args.out, seeds=args.seeds or 3,
                              launcher=args.launcher) if full else []  # fmt: skip
    report.ignore_sweeps(args.out)
    order = runner.longest_first([*todo, *extra], report.saved_seconds(args.out)) if args.jobs > 1 else [*todo, *extra]
    results = runner.run_all(order, jobs=args.jobs)
    wall = time.perf_counter() - start if not args.claims else None
    tested = {c.id: evaluate(c, out=args.out) for c in runnable}
    ordered = [tested.get(c.id) or placeholders[c.id] for c in claims if c.id in tested or c.id in placeholders]
    path = report.write(args.out, ordered, runs=results, wall=wall, sweeps=sweeps, paper_sweeps=paper,
                        command=command, scale=args.scale)  # fmt: skip
    if extra:
        print(f"original results: {original.write(args.out)}")
    _done(ordered, path, start=start)
    return 1 if any(r.returncode != 0 for r in results) else 0
