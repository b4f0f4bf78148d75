"""Per-epoch figures from history.csv: gradient telemetry (Hong Figs. 1 and 7), training curves (limitations Fig. 3).

Each line is one setting: the median over its seeds per epoch, with the interquartile range as a band. The median
keeps one run's exploding gradient from dragging a whole line; the ratio and the loss are on log axes.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from gsdefense.analysis import add_defense
from gsdefense.plots._axes import BOUNDED, declutter, line_colors, log_axis, metric_limits, outside_legend
from gsdefense.plots._common import (
    VANILLA,
    context,
    defense_order,
    dp_line_label,
    facet_groups,
    facets,
    fmt,
    label,
    present_metrics,
    require,
    slice_rest,
    split_defense,
    styled,
    title,
)

MAX_LINES = 8
# (panel, raw column, column after DP clipping/noise, y label, log y, reference line)
TELEMETRY = (
    ("gradient magnitude", "grad_ratio", "shaped_grad_ratio", "‖∇ poison‖ / ‖∇ clean‖", True, 1.0),
    ("gradient direction", "grad_cosine", "shaped_grad_cosine", "cos(∇ poison, ∇ clean)", False, 0.0),
)
LOG_METRICS = frozenset({"train_loss", "clean_train_loss", "poison_train_loss"})


def _history(history: pd.DataFrame, *, figure: str) -> pd.DataFrame:
    require(history, ["epoch"], figure=figure)
    df = history if "defense" in history.columns else add_defense(history)
    if "status" in df.columns:
        # Diverged runs keep their epochs up to the blow-up: that is part of the story.
        df = df[df["status"].isin(["ok", "diverged"])]
    if df.empty:
        raise ValueError(f"{figure}: no epochs from ok or diverged runs")
    return df


def _select(df: pd.DataFrame) -> tuple[pd.DataFrame, list[str], bool, list[str]]:
    """(rows with a ``line`` label, facet keys, whether lines are one ordered series, notes on what was fixed).

    More than MAX_LINES DP settings: keep those at the smallest σ (clipping alone, Hong Fig. 4c) if it has ≥2 clip
    norms, else those at the clip norm with the most σ values.
    """
    vanilla, dp = split_defense(df)
    notes = []
    if dp[["dp.clip", "dp.noise"]].drop_duplicates().shape[0] > MAX_LINES:
        sigma = dp["dp.noise"].min()
        if dp.loc[dp["dp.noise"] == sigma, "dp.clip"].nunique() >= 2:
            dp, fixed = dp[dp["dp.noise"] == sigma], f"DP at σ = {fmt(sigma)}"
        else:
            width = dp.groupby("dp.clip")["dp.noise"].nunique()
            clip = float(width.idxmax())
            dp, fixed = dp[dp["dp.clip"] == clip], f"DP at C = {fmt(clip)}"
        notes.append(fixed)
    elif not dp.empty and dp["dp.noise"].nunique() == 1:
        notes.append(f"DP at σ = {fmt(dp['dp.noise'].iloc[0])}")
    clips, noises = dp["dp.clip"].nunique(), dp["dp.noise"].nunique()
    labels = [f"DP {dp_line_label(c, s, clips=clips, noises=noises)}" for c, s in zip(dp["dp.clip"], dp["dp.noise"])]
    data = pd.concat([vanilla.assign(line=VANILLA), dp.assign(line=labels)], ignore_index=True)
    ordered = clips <= 1 or noises <= 1
    keys, rest = facets(data, ["epoch"])
    swept = [k for k in (*keys, *rest) if k != "attack.name"]
    if data["line"].nunique() == 1 and len(swept) == 1 and data[swept[0]].nunique() <= MAX_LINES:
        # One defense and one other swept setting (Hong Fig. 1: the collision intensity α): one line per value.
        key = swept[0]
        data = data.assign(line=[f"{key.rsplit('.', 1)[-1]}={v:g}" if _number(v) else str(v) for v in data[key]])
        keys, rest, ordered = [k for k in keys if k != key], [k for k in rest if k != key], _number(data[key].iloc[0])
        notes.insert(0, data["defense"].iloc[0] if "defense" in data else "")
    data, at = slice_rest(data, rest)
    notes = [context(data, keys), *notes, at, _spread(data, keys)]
    return data, keys, ordered, [n for n in notes if n]


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _levels(data: pd.DataFrame) -> list[str]:
    return defense_order(data["line"].unique())


def _band(ax: plt.Axes, rows: pd.DataFrame, column: str, *, color, linestyle: str = "-") -> list[float]:
    """Median over seeds per epoch, IQR band; returns the plotted values (for limits)."""
    values = pd.to_numeric(rows[column], errors="coerce")
    stats = values.groupby(rows["epoch"]).quantile([0.25, 0.5, 0.75]).unstack().dropna()
    if stats.empty:
        return []
    ax.plot(stats.index, stats[0.5], color=color, linestyle=linestyle, linewidth=1.4)
    if rows["run_dir"].nunique() > 1:
        ax.fill_between(stats.index, stats[0.25], stats[0.75], color=color, alpha=0.15, linewidth=0)
    return [*stats[0.25], *stats[0.75]]


def _grid(rows: int, cols: int) -> tuple[Figure, np.ndarray]:
    fig, axes = plt.subplots(rows, cols, figsize=(3.9 * cols + 2.2, 2.9 * rows), squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig, axes


@styled
def gradient_telemetry(history: pd.DataFrame) -> Figure:
    """Poison/clean gradient magnitude ratio (log y) and cosine per epoch, vanilla vs DP (Hong et al. Figs. 1, 7).

    Solid: per-sample gradients as computed; dashed: after the run's clipping and noise (``shaped_*``), when logged.
    Colours are sequential when the DP lines differ in one number (C or σ), qualitative otherwise.
    """
    name = "gradient_telemetry"
    df = _history(history, figure=name)
    panels = [p for p in TELEMETRY if any(c in df.columns and df[c].notna().any() for c in p[1:3])]
    if not panels:
        cols = [c for p in TELEMETRY for c in p[1:3]]
        raise ValueError(f"{name}: no gradient telemetry in history.csv (none of {cols} has values)")
    data, keys, ordered, notes = _select(df)
    groups, levels = facet_groups(data, keys), _levels(data)
    colors = line_colors(levels, ordered=ordered)
    fig, axes = _grid(len(groups), len(panels))
    shaped_seen = False
    for r, (group, part) in enumerate(groups):
        for c, (panel, raw, shaped, ylabel, log, ref) in enumerate(panels):
            ax, values = axes[r][c], []
            for level in levels:
                rows = part[part["line"] == level]
                for column, style in ((raw, "-"), (shaped, "--")):
                    if column in rows and rows[column].notna().any():
                        # A zero ratio has no place on a log axis.
                        plotted = rows[pd.to_numeric(rows[column], errors="coerce") > 0] if log else rows
                        values += _band(ax, plotted, column, color=colors[level], linestyle=style)
                        shaped_seen |= style == "--"
            ax.axhline(ref, color="0.6", linewidth=0.8, zorder=0)
            if log:
                log_axis(ax)
            ax.set(xlabel="epoch", ylabel=ylabel, title=", ".join(t for t in (group, panel) if t))
    handles = [Line2D([], [], color=colors[lv], label=lv) for lv in levels]
    if shaped_seen:
        handles += [
            Line2D([], [], color="0.3", linestyle="-", label="as computed"),
            Line2D([], [], color="0.3", linestyle="--", label="after clipping + noise"),
        ]
    outside_legend(fig, handles)
    title(fig, "Gradients of poisoned vs clean training samples", *notes)
    return declutter(fig)


def _spread(data: pd.DataFrame, keys: list[str]) -> str:
    seeds = data.groupby([*keys, "line"], dropna=False)["run_dir"].nunique()
    if seeds.max() <= 1:
        return "one run per line"
    n = f"{seeds.min()}" if seeds.min() == seeds.max() else f"{seeds.min()}–{seeds.max()}"
    return f"median over {n} seeds, band: interquartile range"


@styled
def training_curves(history: pd.DataFrame, *, metrics: Sequence[str] = ("clean_acc", "asr", "train_loss")) -> Figure:
    """Clean accuracy, ASR (on [0, 1]) and train loss (log y) per epoch, one line per setting (limitations Fig. 3)."""
    name = "training_curves"
    df = _history(history, figure=name)
    metrics = present_metrics(df, metrics, figure=name)
    data, keys, ordered, notes = _select(df)
    groups, levels = facet_groups(data, keys), _levels(data)
    colors = line_colors(levels, ordered=ordered)
    fig, axes = _grid(len(groups), len(metrics))
    for r, (group, part) in enumerate(groups):
        for c, metric in enumerate(metrics):
            ax, values = axes[r][c], []
            log = metric in LOG_METRICS
            for level in levels:
                rows = part[part["line"] == level]
                rows = rows[pd.to_numeric(rows[metric], errors="coerce") > 0] if log else rows
                values += _band(ax, rows, metric, color=colors[level])
            if log:
                log_axis(ax)
            elif metric in BOUNDED:
                metric_limits(ax, metric, values)
            ax.set(xlabel="epoch", ylabel=label(metric), title=group)
    outside_legend(fig, [Line2D([], [], color=colors[lv], label=lv) for lv in levels])
    title(fig, "Training curves", *notes)
    return declutter(fig)
