"""Per-epoch figures from history.csv: gradient telemetry (Hong Figs. 1 and 7), training curves (limitations Fig. 3)."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from gsdefense.analysis import add_defense
from gsdefense.plots._common import (
    averaged_note,
    defense_order,
    label,
    palette,
    present_metrics,
    require,
    styled,
    title,
)

# (panel title, raw column, column after DP clipping/noise)
TELEMETRY = (
    ("poison / clean gradient magnitude", "grad_ratio", "shaped_grad_ratio"),
    ("cosine(poison, clean gradient)", "grad_cosine", "shaped_grad_cosine"),
)


def _history(history: pd.DataFrame, *, figure: str) -> pd.DataFrame:
    require(history, ["epoch"], figure=figure)
    df = history if "defense" in history.columns else add_defense(history)
    if "status" in df.columns:
        # Diverged runs keep their epochs up to the blow-up: that is part of the story.
        df = df[df["status"].isin(["ok", "diverged"])]
    if df.empty:
        raise ValueError(f"{figure}: no epochs from ok or diverged runs")
    return df


def _lines(data: pd.DataFrame, *, y: str, col: str, style: str | None, row: str | None) -> sns.FacetGrid:
    order = defense_order(data["defense"])
    grid = sns.relplot(
        data=data,
        kind="line",
        x="epoch",
        y=y,
        hue="defense",
        hue_order=order,
        palette=palette(order),
        style=style,
        col=col,
        row=row,
        errorbar="sd",
        height=3.0,
        aspect=1.25,
        facet_kws={"sharey": False, "margin_titles": row is not None},
    )
    for ax in grid.axes.flat:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return grid


def _row(df: pd.DataFrame) -> str | None:
    return "attack.name" if "attack.name" in df.columns and df["attack.name"].nunique() > 1 else None


@styled
def gradient_telemetry(history: pd.DataFrame) -> Figure:
    """Poison/clean gradient magnitude ratio and cosine per epoch, vanilla vs DP (Hong et al. Figs. 1 and 7).

    Solid: per-sample gradients as computed; dashed: after clipping (``shaped_*`` columns), when logged.
    """
    name = "gradient_telemetry"
    df = _history(history, figure=name)
    parts = []
    for panel, raw, shaped in TELEMETRY:
        for stage, col in (("raw", raw), ("after clipping", shaped)):
            if col in df.columns and df[col].notna().any():
                part = df[["epoch", "defense", "run_dir", *[c for c in ("attack.name",) if c in df]]].copy()
                parts.append(part.assign(quantity=panel, stage=stage, value=pd.to_numeric(df[col], errors="coerce")))
    if not parts:
        cols = [c for _, raw, shaped in TELEMETRY for c in (raw, shaped)]
        raise ValueError(f"{name}: no gradient telemetry in history.csv (none of {cols} has values)")
    data = pd.concat(parts, ignore_index=True).dropna(subset=["value"])
    stages = data["stage"].nunique() > 1
    grid = _lines(data, y="value", col="quantity", style="stage" if stages else None, row=_row(data))
    grid.set_titles(col_template="{col_name}", row_template="{row_name}")
    grid.set_axis_labels("epoch", "")
    for key, ax in grid.axes_dict.items():
        panel = key[-1] if isinstance(key, tuple) else key
        # Reference: equal magnitudes (ratio 1) and orthogonal directions (cosine 0).
        ax.axhline(1.0 if panel == TELEMETRY[0][0] else 0.0, color="0.7", linewidth=0.8, zorder=0)
    note = averaged_note(df, ["attack.name", "dp.clip", "dp.noise"])
    title(grid.figure, "Gradients of poisoned vs clean samples", note)
    grid.tight_layout()
    return grid.figure


@styled
def training_curves(history: pd.DataFrame, *, metrics: Sequence[str] = ("clean_acc", "asr", "train_loss")) -> Figure:
    """Clean accuracy, ASR and train loss per epoch, one line per defense (limitations study Fig. 3)."""
    name = "training_curves"
    df = _history(history, figure=name)
    metrics = present_metrics(df, metrics, figure=name)
    keep = ["epoch", "defense", "run_dir", *[c for c in ("attack.name",) if c in df]]
    data = df.melt(id_vars=keep, value_vars=metrics, var_name="metric", value_name="value").dropna(subset=["value"])
    data["metric"] = data["metric"].map(label)
    grid = _lines(data, y="value", col="metric", style=None, row=_row(data))
    grid.set_titles(col_template="{col_name}", row_template="{row_name}")
    grid.set_axis_labels("epoch", "")
    title(grid.figure, "Training curves", averaged_note(df, ["attack.name", "dp.clip", "dp.noise"]))
    grid.tight_layout()
    return grid.figure
