"""python -m gsdefense.reproduce: run the experiments behind every claim of the papers and write the verdicts.

Each claim's sweeps run through ``python launch.py -m`` into ``<out>/sweeps/<claim>/<part>`` (rerunning resumes),
then ``<out>/README.md``, ``claims.csv``, ``checks.csv``, ``figures/`` and ``data/`` are written from the runs.
Exit status: 0, or 1 when a sweep did not finish cleanly (the report is still written), 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import matplotlib

from gsdefense.errors import ConfigError
from gsdefense.reproduce import runner
from gsdefense.reproduce.claims import BY_ID, select
from gsdefense.reproduce.spec import SCALES

OUT = {"embedded": Path("docs/reproduction"), "paper": Path("docs/reproduction-paper")}
EPILOG = f"""\
claims: {" ".join(BY_ID)}

examples:
  python -m gsdefense.reproduce                                 # every claim, embedded data (~1 h on 2 CPU cores)
  python -m gsdefense.reproduce --claims H2 S1 --seeds 5 --out /tmp/repro
  python -m gsdefense.reproduce --smoke --claims H2 S1 --out /tmp/smoke   # plumbing only: 1 seed, 2 epochs
  python -m gsdefense.reproduce --scale paper --launcher slurm --dry-run  # the paper-scale plan
  python -m gsdefense.reproduce --report-only                   # recompute the verdicts from the sweeps there
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m gsdefense.reproduce",
        description=__doc__.splitlines()[0],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--claims", nargs="+", metavar="ID", help="claims to test (default: all)")
    p.add_argument(
        "--seeds", type=int, default=None, help="seeds per setting (default: each claim's own, >= 3; 3 at paper scale)"
    )
    p.add_argument(
        "--scale",
        choices=SCALES,
        default="embedded",
        help="embedded: offline data, small schedules; paper: the presets at full size (you supply the data)",
    )
    p.add_argument("--out", type=Path, default=None, help=f"report folder (default: {OUT['embedded']}, or "
                   f"{OUT['paper']} at paper scale)")  # fmt: skip
    p.add_argument(
        "--launcher",
        default="basic",
        choices=sorted(runner.LAUNCHERS),
        help="basic (this process), local (submitit subprocesses), slurm; fused parts use the fused variant",
    )
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="sweeps run at once, each on one CPU "
                   "thread per run (default: %(default)s)")  # fmt: skip
    p.add_argument("--smoke", action="store_true", help="plumbing check: 1 seed, the smallest schedules")
    p.add_argument("--dry-run", action="store_true", help="print and compose every sweep command, run nothing")
    p.add_argument("--report-only", action="store_true", help="run no sweep; compute the report from <out>/sweeps")
    return p


def dry_run(sweeps: Sequence[runner.Sweep]) -> int:
    """Print every sweep command and check that its first job composes and validates; 2 if one does not."""
    bad = 0
    for sweep in sweeps:
        problem = runner.compose_check(sweep)
        bad += problem is not None
        print(f"# {sweep.key} ({sweep.seeds} seeds): {'composes' if problem is None else 'ERROR ' + problem}")
        print(sweep.shell())
    print(f"{len(sweeps)} sweeps, {bad} that do not compose")
    return 2 if bad else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    args.out = args.out or OUT[args.scale]
    matplotlib.use("Agg")
    command = " ".join(["python -m gsdefense.reproduce", *map(shlex.quote, sys.argv[1:] if argv is None else argv)])
    try:
        claims = select(args.claims)
        sweeps = runner.plan(
            claims, scale=args.scale, out=args.out, seeds=args.seeds, launcher=args.launcher, smoke=args.smoke
        )
        if args.jobs < 1:
            raise ConfigError("--jobs", f"must be at least 1 (got {args.jobs}).", "e.g. --jobs 2.")
        if args.out.exists() and not args.out.is_dir():
            raise ConfigError("--out", f"{args.out} is a file.", "give a folder (it is created if missing).")
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        return dry_run(sweeps)
    from gsdefense.reproduce import report

    start = time.perf_counter()
    report.ignore_sweeps(args.out)
    results = [] if args.report_only else runner.run_all(sweeps, jobs=args.jobs)
    wall = None if args.report_only else time.perf_counter() - start
    from gsdefense.reproduce.evaluate import evaluate

    verdicts = [evaluate(claim, out=args.out) for claim in claims]
    paper_out = args.out if args.scale == "paper" else args.out.with_name(args.out.name + "-paper")
    # The paper-scale commands each section shows: as --scale paper runs them on Slurm (or with --launcher as given).
    launcher = args.launcher if args.scale == "paper" else "slurm"
    paper = runner.plan(claims, scale="paper", out=paper_out, seeds=args.seeds, launcher=launcher)
    path = report.write(
        args.out,
        verdicts,
        sweeps=sweeps,
        paper_sweeps=paper,
        runs=results,
        wall=wall,
        command=command,
        scale=args.scale,
    )
    for v in verdicts:
        print(f"{v.claim.id}: {v.verdict}")
    print(f"report: {path} ({(time.perf_counter() - start) / 60:.1f} min)")
    return 1 if any(r.returncode != 0 for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
