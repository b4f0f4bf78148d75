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

from gsdefense.analysis import STATUSES, load_history, load_runs, resolve_sweep, setting_columns, summarise
from gsdefense.io import atomic_write
from gsdefense.plots import FIGURES

KEY_METRICS = ("clean_acc", "asr", "rad", "epsilon")
DP_LABELLED = ("dp.name", "dp.clip", "dp.noise")  # shown as one `defense` column
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


def _number(mean: float, sd: float) -> str:
    if math.isnan(mean):
        return ""
    return _short(mean) + ("" if math.isnan(sd) else f" ± {_short(sd)}")


def _short(value: float) -> str:
    if abs(value) >= 1000:
        return f"{value:.3g}"  # ε can be 1e13 at σ = 1e-7
    return f"{value:.3f}" if round(value, 3) else "0.000"  # never "-0.000"


def metrics_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Key metrics of ok runs, one row per setting (every setting that varies among them, seed excepted):
    ``n`` runs, and ``mean ± sd`` over them; ``over`` says what varies within a row when it is not only ``seed``."""
    ok = runs[runs["status"] == "ok"]
    metrics = [m for m in KEY_METRICS if m in ok.columns and ok[m].notna().any()]
    if ok.empty or not metrics:
        return pd.DataFrame()
    by = setting_columns(ok, varying=True)
    stats = summarise(ok, by=by, metrics=metrics, wide=True)
    shown = [c for c in by if c not in DP_LABELLED]
    out = stats[shown].copy()
    if any(c in by for c in DP_LABELLED):
        # One readable column (vanilla, DP clip=1 noise=0.4) instead of three partly empty ones.
        out.insert(0, "defense", [g["defense"].iloc[0] for _, g in ok.groupby(by, dropna=False, sort=True)])
    out["n"] = stats[[f"{m}_count" for m in metrics]].max(axis=1).astype(int)
    for m in metrics:
        out[m] = [_number(a, s) for a, s in zip(stats[f"{m}_mean"], stats[f"{m}_std"], strict=True)]
    if (stats["over"].isin(["seed", ""])).all():
        return out
    return out.assign(over=stats["over"])


def metrics_heading(table: pd.DataFrame) -> str:
    n = sorted(set(table["n"])) if "n" in table else []
    seeds = f"{n[0]}" if len(n) == 1 else f"{n[0]}–{n[-1]}" if n else "?"
    what = "seeds" if "over" not in table else "runs (see `over`)"
    return (
        f"Each row is one setting (every swept setting but the seed); values are mean ± sd over its n = {seeds} {what}."
    )


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
    parts = ["# Sweep report", "", "Sweeps: " + ", ".join(f"`{d}`" for d in dirs), "", "## Runs by status", ""]
    parts += [markdown_table(status_table(runs)), ""]
    table = metrics_table(runs)
    if not table.empty:
        parts += ["## Key metrics of ok runs", "", metrics_heading(table), "", markdown_table(table), ""]
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
    # Tuples (e.g. dataset.classes) are not Parquet scalars; a string keeps the information.
    return df.apply(
        lambda col: col.map(lambda v: str(v) if isinstance(v, tuple) else v) if col.dtype == object else col
    )


def write_report(dirs: Sequence[Path], out: Path, *, rad: str = "auto") -> pd.DataFrame:
    """Load the runs of ``dirs`` and write every report file into ``out``; returns the runs frame.

    ``rad``: which RAD the figures plot — ``auto`` (each sweep's ``rad_definition``), ``final`` or ``best``.
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
        choices=("auto", "final", "best"),
        default="auto",
        help="RAD in the figures: final epochs (rad), best epochs as Hong's code (rad_best), or auto: what the "
        "runs' rad_definition says (the Hong presets: best)",
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
