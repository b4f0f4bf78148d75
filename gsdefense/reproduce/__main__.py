"""python -m gsdefense.reproduce: run the experiments behind every claim of the papers and write the verdicts.

Each claim's sweeps run through ``python launch.py -m`` into ``<out>/sweeps/<claim>/<part>`` (rerunning resumes),
then ``<out>/README.md``, ``claims.csv``, ``checks.csv``, ``sections/``, ``figures/`` and ``data/`` are written
for the claims tested (the others' files are kept). Before anything runs, each claim's data is loaded once: a
claim whose data is missing is named with what is missing (and, at paper scale, listed as "needs <dataset>").
Exit status: 0; 1 when a sweep did not finish cleanly (the report is still written); 2 on bad arguments, or when
nothing can run or be reported (nothing is written then).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

import matplotlib

from gsdefense.errors import ConfigError
from gsdefense.reproduce import runner
from gsdefense.reproduce.claims import BY_ID, select
from gsdefense.reproduce.spec import REPORTS as OUT
from gsdefense.reproduce.spec import ROOT, SCALES, estimate


def epilog() -> str:
    return f"""\
claims: {" ".join(BY_ID)}

time of a full run (measured; each scale's committed timing.csv):
  embedded: {estimate("embedded")}
  paper:    {estimate("paper")}

examples:
  python -m gsdefense.reproduce                                 # every claim on embedded stand-ins
  python -m gsdefense.reproduce --scale paper                   # the FashionMNIST claims at the papers' schedules
  python -m gsdefense.reproduce original                        # gsdefense beside the original's released results
  python -m gsdefense.reproduce --claims H2 S1 --seeds 5 --out /tmp/repro
  python -m gsdefense.reproduce --smoke --claims H2 S1 --out /tmp/smoke   # plumbing only: 1 seed, 2 epochs
  python -m gsdefense.reproduce --scale paper --dry-run         # the paper-scale plan, composed and checked
  python -m gsdefense.reproduce --report-only                   # recompute the verdicts from the sweeps there
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m gsdefense.reproduce",
        description=__doc__.splitlines()[0],
        epilog=epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--claims", nargs="+", metavar="ID", help="claims to test (default: all)")
    p.add_argument("--seeds", type=int, default=None, help="seeds per setting (default: each claim's own, >= 3)")
    p.add_argument(
        "--scale",
        choices=SCALES,
        default="embedded",
        help="embedded: offline stand-ins, small schedules; paper: the papers' FashionMNIST data and schedules",
    )
    p.add_argument("--out", type=Path, default=None, help=f"report folder (default: {OUT['embedded']}, or "
                   f"{OUT['paper']} at paper scale)")  # fmt: skip
    p.add_argument(
        "--launcher",
        default="basic",
        choices=sorted(runner.LAUNCHERS),
        help="basic (the configured default launcher), local (submitit subprocesses), slurm; fused parts use the "
        "fused variant",
    )
    p.add_argument("--jobs", type=int, default=1, help="sweeps run at once (default: %(default)s; each sweep's "
                   "launcher already runs its jobs in parallel where it can: raise this only for a launcher that "
                   "runs one job at a time, or cores sit idle while a fused sweep trains)")  # fmt: skip
    p.add_argument("--smoke", action="store_true", help="plumbing check: 1 seed, the smallest schedules")
    p.add_argument("--dry-run", action="store_true", help="print and compose every sweep command, run nothing")
    p.add_argument("--report-only", action="store_true", help="run no sweep; recompute the report from "
                   "<out>/sweeps (claims without sweeps there keep their committed sections)")  # fmt: skip
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
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["original"]:
        from gsdefense.reproduce.original_cli import main as original_main

        return original_main(argv[1:])
    args = parser().parse_args(argv)
    args.out = args.out or OUT[args.scale]
    matplotlib.use("Agg")
    command = " ".join(["python -m gsdefense.reproduce", *map(shlex.quote, argv)])
    try:
        claims = select(args.claims)
        sweeps = runner.plan(
            claims, scale=args.scale, out=args.out, seeds=args.seeds, launcher=args.launcher, smoke=args.smoke
        )
        if args.jobs < 1:
            raise ConfigError("--jobs", f"must be at least 1 (got {args.jobs}).", "e.g. --jobs 2.")
        if args.out.exists() and not args.out.is_dir():
            raise ConfigError("--out", f"{args.out} is a file.", "give a folder (it is created if missing).")
        if args.smoke and not args.dry_run and args.out.resolve() == (ROOT / OUT[args.scale]).resolve():
            raise ConfigError("--smoke", f"would write its 1-seed plumbing runs over the committed report in "
                              f"{OUT[args.scale]}.", "add --out <another folder>, e.g. --out /tmp/smoke.")  # fmt: skip
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        return dry_run(sweeps)
    from gsdefense.reproduce import run

    return run.reproduce(args, claims, sweeps, command=command)


if __name__ == "__main__":
    sys.exit(main())
