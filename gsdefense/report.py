"""``python -m gsdefense.report SWEEP_DIR [MORE_DIRS …] [--out DIR]``: tables, figures and a summary of sweeps.

Writes ``runs.csv`` (and ``runs.parquet`` when pyarrow is installed), one PNG per figure the data supports,
and ``summary.md``. A figure the data cannot support is skipped with its reason.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import pandas as pd

from gsdefense.analysis import STATUSES, load_history, load_runs, summarise
from gsdefense.plots import FIGURES

KEY_METRICS = ("clean_acc", "asr", "rad", "epsilon")


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
    """Key metrics (mean ± sd, n) of ok runs per attack and defense."""
    ok = runs[runs["status"] == "ok"]
    metrics = [m for m in KEY_METRICS if m in ok.columns and ok[m].notna().any()]
    by = [c for c in ("attack.name", "defense") if c in ok.columns]
    if ok.empty or not metrics or not by:
        return pd.DataFrame()
    stats = summarise(ok, by=by, metrics=metrics, wide=True)
    out = stats[by].copy()
    out["n"] = [int(len(g)) for _, g in ok.groupby(by, dropna=False, sort=True)]
    for m in metrics:
        mean, sd = stats[f"{m}_mean"], stats[f"{m}_std"]
        out[m] = [
            "" if math.isnan(a) else f"{a:.3f}" + ("" if math.isnan(s) else f" ± {s:.3f}")
            for a, s in zip(mean, sd, strict=True)
        ]
    return out


def make_figures(runs: pd.DataFrame, history: pd.DataFrame, out: Path) -> tuple[list[str], list[str]]:
    """Save every supported figure as PNG; returns (made lines, skipped lines) for summary.md."""
    made, skipped = [], []
    frames = {"runs": runs, "history": history}
    for spec in FIGURES:
        try:
            fig = spec.make(frames[spec.source])
        except ValueError as err:
            print(f"skipped {err}")  # the message starts with the figure's name
            skipped.append(f"- {err} ({spec.paper})")
            continue
        path = out / f"{spec.name}.png"
        fig.savefig(path, dpi=130, bbox_inches="tight")
        plt.close(fig)
        print(f"wrote {path}")
        made.append(f"- [{spec.name}]({path.name}) ({spec.paper})")
    return made, skipped


def summary_markdown(runs: pd.DataFrame, dirs: Sequence[Path], made: list[str], skipped: list[str]) -> str:
    parts = ["# Sweep report", "", "Sweeps: " + ", ".join(f"`{d}`" for d in dirs), "", "## Runs by status", ""]
    parts += [markdown_table(status_table(runs)), ""]
    table = metrics_table(runs)
    if not table.empty:
        parts += ["## Key metrics of ok runs (mean ± sd over seeds)", "", markdown_table(table), ""]
    bad = runs[runs["status"] != "ok"]
    if not bad.empty:
        parts += ["## Runs that are not ok", ""]
        errors = bad["error"] if "error" in bad.columns else pd.Series("", index=bad.index)
        parts += [f"- `{d}` {s}: {_cell(e)}" for d, s, e in zip(bad["run_dir"], bad["status"], errors, strict=True)]
        parts.append("")
    parts += ["## Figures", "", *(made or ["(none)"]), ""]
    if skipped:
        parts += ["## Figures skipped", "", *skipped, ""]
    return "\n".join(parts)


def _tabular(df: pd.DataFrame) -> pd.DataFrame:
    # Tuples (e.g. dataset.classes) are not Parquet scalars; a string keeps the information.
    return df.apply(
        lambda col: col.map(lambda v: str(v) if isinstance(v, tuple) else v) if col.dtype == object else col
    )


def write_report(dirs: Sequence[Path], out: Path) -> pd.DataFrame:
    """Load the runs of ``dirs`` and write every report file into ``out``; returns the runs frame."""
    runs = load_runs(dirs)
    if runs.empty:
        raise FileNotFoundError(f"no runs (directories with .hydra/config.yaml) under {', '.join(map(str, dirs))}")
    out.mkdir(parents=True, exist_ok=True)
    table = _tabular(runs)
    table.to_csv(out / "runs.csv", index=False)
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        pass
    else:
        table.to_parquet(out / "runs.parquet", index=False)
    made, skipped = make_figures(runs, load_history(dirs), out)
    (out / "summary.md").write_text(summary_markdown(runs, dirs, made, skipped))
    return runs


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gsdefense.report", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dirs", nargs="+", type=Path, help="sweep or run directories")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default: <first sweep>/report)")
    args = parser.parse_args(argv)
    # Headless: reports run on cluster nodes without a display. Set here, not at import, so the notebook's
    # inline backend survives importing this module.
    matplotlib.use("Agg")
    missing = [d for d in args.sweep_dirs if not d.is_dir()]
    if missing:
        print(f"error: not a directory: {', '.join(map(str, missing))}", file=sys.stderr)
        return 2
    out = args.out or args.sweep_dirs[0] / "report"
    try:
        runs = write_report(args.sweep_dirs, out)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    counts = ", ".join(f"{row.runs} {row.status}" for row in status_table(runs).itertuples())
    print(f"report: {len(runs)} runs ({counts}) -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
