"""``python -m gsdefense.reproduce original``: gsdefense beside the original code's released results (``original``).

Runs the comparison's sweeps (FashionMNIST-3/4 label flips at every released cell of the chosen tiers, and Fig. 1's
collision analysis) into ``<out>/sweeps/original/`` and writes ``<out>/original/``. Exit status as the main
command's: 0; 1 when a sweep did not finish cleanly; 2 on bad arguments or missing data (nothing run).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from gsdefense.errors import ConfigError
from gsdefense.reproduce import datacheck, original, runner


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m gsdefense.reproduce original",
        description="Run gsdefense at every released cell of the original code (FashionMNIST-3/4 label flips, Fig. 1's "
        "collision analysis) and write the comparison tables to <out>/original/.",
    )
    p.add_argument("--tiers", type=int, nargs="+", default=[1, 2], choices=original.TIERS,
                   help="cells to run: 1: 40 %% (10 cells); 2: noise 0 at the other ratios (27); 3: the rest (56) "
                   "(default: 1 2)")  # fmt: skip
    p.add_argument("--seeds", type=int, default=3, help="seeds per cell (default: %(default)s)")
    p.add_argument("--out", type=Path, default=Path("docs/reproduction-paper"), help="report folder (default: "
                   "%(default)s; the tables go to <out>/original/)")  # fmt: skip
    p.add_argument("--launcher", default="basic", choices=sorted(runner.LAUNCHERS))
    p.add_argument("--jobs", type=int, default=1, help="sweeps run at once (default: %(default)s)")
    p.add_argument("--report-only", action="store_true", help="run nothing; rewrite the tables from the sweeps")
    p.add_argument("--dry-run", action="store_true", help="print the sweep commands, run nothing")
    return p


def main(argv: Sequence[str]) -> int:
    args = parser().parse_args(argv)
    try:
        if args.jobs < 1:
            raise ConfigError("--jobs", f"must be at least 1 (got {args.jobs}).", "e.g. --jobs 2.")
        sweeps = runner.plan_parts(original.CLAIM, original.parts(tiers=args.tiers), scale="paper", out=args.out,
                                   seeds=args.seeds, launcher=args.launcher)  # fmt: skip
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        for s in sweeps:
            print(s.shell())
        print(f"{len(sweeps)} sweeps")
        return 0
    if args.report_only:
        if not (args.out / "sweeps" / original.CLAIM).is_dir():
            print(
                f"error: --report-only: no sweeps under {args.out / 'sweeps' / original.CLAIM} (a fresh clone has "
                "none); the tables there are kept. Fix: run python -m gsdefense.reproduce original.",
                file=sys.stderr,
            )
            return 2
        print(f"original results: {original.write(args.out)}")
        return 0
    gap = datacheck.missing(sweeps[:1]).get(original.CLAIM)
    if gap is not None:
        print(f"error: {gap.line('original')}; nothing was run.", file=sys.stderr)
        return 2
    from gsdefense.reproduce.report import ignore_sweeps

    ignore_sweeps(args.out)  # the sweeps (models) stay out of git
    results = runner.run_all(runner.longest_first(sweeps) if args.jobs > 1 else sweeps, jobs=args.jobs)
    print(f"original results: {original.write(args.out)}")
    return 1 if any(r.returncode != 0 for r in results) else 0
