"""python -m gsdefense.report SWEEP_DIR [MORE_DIRS ...] [--out DIR]: tables, figures and a summary of sweeps.

Writes runs.csv (and runs.parquet when pyarrow is installed), one PNG per figure the data supports, and
summary.md. A figure the data cannot support is skipped with its reason; a run folder that cannot be read is
listed with its reason, and the rest of the report is still written.
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import pandas as pd

from gsdefense.analysis import STATUSES, load_history, load_runs, resolve_sweep
from gsdefense.io import atomic_write
from gsdefense.plots import FIGURES
from gsdefense.plots._common import hashable, rad_metric
from gsdefense.report_tables import results_heading, results_table, setup_lines

EPILOG = """\
examples:
  python -m gsdefense.report multirun/2026-11-21/14-41-40
  python -m gsdefense.report multirun/latest               # the newest sweep under multirun/
  python -m gsdefense.report multirun/fig/vanilla multirun/fig/dp --out reports/fig

SWEEP_DIR/latest, when no folder of that name exists, is the newest sweep below SWEEP_DIR
(the folder of its most recent multirun.yaml), as in notebooks/aggregate.ipynb.
"""


def _cell(value: object) -> str:
    text = "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub markdown table of ``df`` (no tabulate dependency)."""
    lines = ["| " + " | ".join(map(_cell, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(map(_cell, row)) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def status_table(runs: pd.DataFrame) -> pd.DataFrame:
    counts = runs["status"].value_counts()
    order = [s for s in STATUSES if s in counts] + sorted(set(counts.index) - set(STATUSES))
    return pd.DataFrame({"status": order, "runs": [int(counts[s]) for s in order]})


def metrics_table(runs: pd.DataFrame) -> pd.DataFrame:
    """The metrics that matter of the ok runs, one row per setting (``report_tables.results_table``)."""
    ok = runs[runs["status"] == "ok"] if "status" in runs else runs
    return results_table(hashable(ok), rad=rad_metric(ok)) if not ok.empty else pd.DataFrame()


def metrics_heading(table: pd.DataFrame) -> str:
    return results_heading(table, detector="detected" in table or "anomaly index" in table)


def warning_lines(runs: pd.DataFrame, *, limit: int = 10) -> list[str]:
    """Each run's ``warnings`` (metrics.json), one line per run: at most ``limit``, then how many more."""
    if "warnings" not in runs:
        return []
    found = [(d, w) for d, ws in zip(runs["run_dir"], runs["warnings"], strict=True)
             if isinstance(ws, tuple | list) for w in ws]  # fmt: skip
    lines = [f"- `{d}`: {_cell(w)}" for d, w in found[:limit]]
    if len(found) > limit:
        lines.append(f"- … and {len(found) - limit} more (each run's metrics.json `warnings`)")
    return lines


def make_figures(runs: pd.DataFrame, history: pd.DataFrame, out: Path) -> tuple[list[str], list[str], list[str]]:
    """Save every supported figure as PNG; returns (made, skipped, problems) lines for summary.md."""
    made, skipped, problems = [], [], []
    frames = {"runs": runs, "history": history}
    for spec in FIGURES:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                fig = spec.make(frames[spec.source])
            except ValueError as err:
                fig, reason = None, str(err)  # the message starts with the figure's name
            except Exception as err:  # noqa: BLE001 - one figure's failure must not cost the rest of the report
                fig, reason = None, f"{spec.name}: failed: {type(err).__name__}: {err}"
        # A figure's warnings (a run's model.pt that does not load …) are problems with the data: list them.
        problems += [f"- {' '.join(str(w.message).split())}" for w in caught if issubclass(w.category, RuntimeWarning)]
        if fig is None:
            print(f"skipped {reason}")
            skipped.append(f"- {' '.join(reason.split())} ({spec.paper})")
            continue
        path = out / f"{spec.name}.png"
        atomic_write(path, lambda fh, fig=fig: fig.savefig(fh, format="png", dpi=130, bbox_inches="tight"),
                     mode="wb", fsync=False)  # fmt: skip
        plt.close(fig)
        print(f"wrote {path}")
        made.append(f"- [{spec.name}]({path.name}) ({spec.paper})")
    return made, skipped, problems


def summary_markdown(
    runs: pd.DataFrame, dirs: Sequence[Path], made: list[str], skipped: list[str], problems: Sequence[str] = ()
) -> str:
    """The sweep's settings first, then the results table, warnings, statuses, and the figures."""
    parts = ["# Sweep report", "", "Sweeps: " + ", ".join(f"`{d}`" for d in dirs), ""]
    ok = hashable(runs[runs["status"] == "ok"])
    if not ok.empty:
        parts += ["## Setup", "", *setup_lines(ok, runs), ""]
    table = metrics_table(runs)
    if not table.empty:
        parts += ["## Results", "", metrics_heading(table), "", markdown_table(table), ""]
    warned = warning_lines(runs)
    if warned:
        parts += ["## Warnings", "", *warned, ""]
    parts += ["## Runs by status", "", markdown_table(status_table(runs)), ""]
    bad = runs[runs["status"] != "ok"]
    if not bad.empty:
        parts += ["## Runs that are not ok", ""]
        errors = bad["error"] if "error" in bad.columns else pd.Series("", index=bad.index)
        parts += [f"- `{d}` {s}: {_cell(e)}" for d, s, e in zip(bad["run_dir"], bad["status"], errors, strict=True)]
        parts.append("")
    parts += ["## Figures", "", *(made or ["(none)"]), ""]
    if skipped:
        parts += ["## Figures skipped", "", *skipped, ""]
    if problems:
        parts += ["## Problems found while drawing", "", *problems, ""]
    return "\n".join(parts)


def _tabular(df: pd.DataFrame) -> pd.DataFrame:
    # Tuples (e.g. dataset.classes) are not Parquet scalars; a string keeps the information. A run's warnings
    # are sentences: joined with " | ", and empty when there are none.
    def flat(col: pd.Series) -> pd.Series:
        if col.name == "warnings":
            return col.map(lambda v: " | ".join(v) if isinstance(v, tuple | list) else v)
        return col.map(lambda v: str(v) if isinstance(v, tuple) else v) if col.dtype == object else col

    return df.apply(flat)


def write_report(dirs: Sequence[Path], out: Path, *, rad: str = "auto") -> pd.DataFrame:
    """Load the runs of ``dirs`` and write every report file into ``out``; returns the runs frame.

    ``rad``: which RAD the figures plot — ``auto`` (each sweep's ``rad_definition``), ``final``, ``best`` or
    ``early_stop``.
    """
    runs = load_runs(dirs)
    if rad != "auto" and not runs.empty:
        runs["config.rad_definition"] = rad
    if runs.empty:
        raise FileNotFoundError(f"no runs (directories with .hydra/config.yaml) under {', '.join(map(str, dirs))}")
    out.mkdir(parents=True, exist_ok=True)
    table = _tabular(runs)
    atomic_write(out / "runs.csv", lambda fh: table.to_csv(fh, index=False), fsync=False)
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        pass
    else:
        atomic_write(out / "runs.parquet", lambda fh: table.to_parquet(fh, index=False), mode="wb", fsync=False)
    made, skipped, problems = make_figures(runs, load_history(dirs), out)
    summary = summary_markdown(runs, dirs, made, skipped, problems)
    atomic_write(out / "summary.md", lambda fh: fh.write(summary), fsync=False)
    return runs


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gsdefense.report",
        description="Tables, figures and a summary.md of one or more sweeps (runs.csv, one PNG per figure).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("sweep_dirs", nargs="+", type=Path, metavar="SWEEP_DIR", help="sweep or run folder")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: SWEEP_DIR/report)")
    parser.add_argument(
        "--rad",
        choices=("auto", "final", "best", "early_stop"),
        default="auto",
        help="RAD in the figures: final epochs (rad), best epochs (rad_best), Hong's code: best epochs floored at 0 "
        "(rad_early_stop), or auto: what the runs' rad_definition says (the Hong Fig. 4 presets: early_stop)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # Headless: reports run on cluster nodes without a display. Set here, not at import, so the notebook's
    # inline backend survives importing this module.
    matplotlib.use("Agg")
    try:
        dirs = [resolve_sweep(d) for d in args.sweep_dirs]
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    missing = [d for d in dirs if not d.is_dir()]
    if missing:
        print(f"error: not a directory: {', '.join(map(str, missing))}", file=sys.stderr)
        return 2
    out = args.out or dirs[0] / "report"
    if out.exists() and not out.is_dir():
        print(f"error: --out {out} is a file; give a folder (it is created if missing)", file=sys.stderr)
        return 2
    try:
        runs = write_report(dirs, out, rad=args.rad)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # e.g. --out in a read-only place
        print(f"error: cannot write the report to {out}: {err.strerror or err}", file=sys.stderr)
        return 2
    counts = ", ".join(f"{row.runs} {row.status}" for row in status_table(runs).itertuples())
    print(f"report: {len(runs)} runs ({counts}) -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
