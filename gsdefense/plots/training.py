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
from gsdefense.plots._axes import (
    BOUNDED,
    declutter,
    empty_panel,
    line_colors,
    log_axis,
    metric_limits,
    outside_legend,
    panel_title,
)
from gsdefense.plots._common import (
    VANILLA,
    defense_order,
    dp_line_label,
    fmt,
    hashable,
    label,
    present_metrics,
    require,
    split_defense,
    styled,
    title,
)
from gsdefense.plots._facets import context, facet_panels, facets

MAX_LINES = 8
# Rows of the telemetry figure: (log y, reference line, panels); a panel is (title, y label, columns), and the first
# of its columns that has values is drawn (new names first, then those of runs written before the rename). The
# first two columns are per sample; the last is the original's batch-mean metric, drawn as secondary.
TELEMETRY = (
    (True, 1.0, (
        ("per sample, as computed", "‖g_i‖ poison / clean", ("sample_norm_ratio",)),
        ("per sample, after clipping", "‖g_i‖ poison / clean", ("clipped_sample_norm_ratio",)),
        ("original's batch-mean ratio*", "‖ḡ poison‖ / ‖ḡ clean‖", ("mean_grad_ratio", "grad_ratio")),
    )),
    (False, 0.0, (
        ("poisons", "cos(g_i, ḡ clean)", ("poison_sample_cosine",)),
        ("clean samples", "cos(g_i, ḡ clean)", ("clean_sample_cosine",)),
        ("original's batch-mean cosine*", "cos(ḡ poison, ḡ clean)", ("mean_grad_cosine", "grad_cosine")),
    )),
)  # fmt: skip
ARTIFACT = (
    "*the original's batch-mean metrics tend to n_clean/n_poison and −1 near convergence (the two mean gradients "
    "cancel): an artifact of averaging, not a property of the poisons"
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
    return hashable(df)


def _select(df: pd.DataFrame) -> tuple[pd.DataFrame, list[tuple[str, pd.DataFrame]], bool, list[str]]:
    """(rows with a ``line`` label, (title, rows) per panel, whether lines are one ordered series, notes on what
    was fixed).

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
    groups, at, data = facet_panels(data, keys, rest)
    notes = [context(data, keys), *notes, at, _spread(groups)]
    return data, groups, ordered, [n for n in notes if n]


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


def _column(df: pd.DataFrame, names: Sequence[str]) -> str | None:
    return next((c for c in names if c in df.columns and pd.to_numeric(df[c], errors="coerce").notna().any()), None)


@styled
def gradient_telemetry(history: pd.DataFrame) -> Figure:
    """Poison vs clean gradients per epoch (Hong et al. Figs. 1, 7): per-sample norm ratio (log y) as computed and
    after clipping, per-sample cosine to the clean mean gradient for poisons and for clean samples, and in a
    secondary column the original's batch-mean ratio and cosine (which tend to n_clean/n_poison and −1).

    One line per setting (vanilla black): the median over its seeds with the interquartile range as a band, so
    the figure reads the same at 6 runs or 200; two rows of panels per attack (dataset, model) when they vary.
    """
    name = "gradient_telemetry"
    df = _history(history, figure=name)
    # (log, ref, {column position: (title, y label, column)}) for each row with data
    rows = [(log, ref, {i: (t, y, c) for i, (t, y, names) in enumerate(panels) if (c := _column(df, names))})
            for log, ref, panels in TELEMETRY]  # fmt: skip
    rows = [row for row in rows if row[2]]
    if not rows:
        cols = [c for *_, panels in TELEMETRY for *_, names in panels for c in names]
        raise ValueError(f"{name}: no gradient telemetry in history.csv (none of {cols} has values)")
    positions = sorted({i for *_, panels in rows for i in panels})
    data, groups, ordered, notes = _select(df)
    levels = _levels(data)
    colors = line_colors(levels, ordered=ordered)
    fig, axes = _grid(len(groups) * len(rows), len(positions))
    secondary = False
    for g, (group, part) in enumerate(groups):
        for r, (log, ref, panels) in enumerate(rows):
            line, per_sample, values = axes[g * len(rows) + r], [], []
            for c, position in enumerate(positions):
                ax = line[c]
                if position not in panels:
                    ax.set_axis_off()
                    continue
                panel, ylabel, column = panels[position]
                drawn = []
                for level in levels:
                    lv = part[part["line"] == level]
                    # A zero ratio has no place on a log axis.
                    lv = lv[pd.to_numeric(lv[column], errors="coerce") > 0] if log else lv
                    drawn += _band(ax, lv, column, color=colors[level])
                if not drawn:
                    empty_panel(ax, f"{group}: no {panel.rstrip('*')}" if group else f"no {panel.rstrip('*')}")
                    continue
                values += drawn if position < 2 else []
                ax.axhline(ref, color="0.6", linewidth=0.8, zorder=0)
                if log:
                    log_axis(ax)
                is_secondary = position == 2
                secondary |= is_secondary
                per_sample += [ax] if not is_secondary else []
                panel_title(ax, ", ".join(t for t in (group, panel) if t), fontsize=9,
                            color="0.35" if is_secondary else "black")  # fmt: skip
                ax.set(xlabel="epoch", ylabel=ylabel)
            _share(per_sample, values, log=log)
    outside_legend(fig, [Line2D([], [], color=colors[lv], label=lv) for lv in levels])
    title(fig, "Gradients of poisoned vs clean training samples", *notes, ARTIFACT if secondary else "")
    return declutter(fig)


def _share(axes: Sequence[plt.Axes], values: list[float], *, log: bool) -> None:
    """The per-sample panels of one row on one y range, so that clipping's effect reads off directly."""
    finite = [v for v in values if np.isfinite(v) and (v > 0 or not log)]
    if not axes or not finite:
        return
    lo, hi = min(finite), max(finite)
    if log:
        lo, hi = min(lo, 1.0), max(hi, 1.0)
        pad = (hi / lo) ** 0.05
        limits = (lo / pad, hi * pad)
    else:
        lo, hi = min(lo, 0.0), max(hi, 0.0)
        pad = 0.05 * max(hi - lo, 0.1)
        limits = (lo - pad, hi + pad)
    for ax in axes:
        ax.set_ylim(*limits)
        if log:
            log_axis(ax)


def _spread(groups: list[tuple[str, pd.DataFrame]]) -> str:
    seeds = pd.concat([part.groupby("line")["run_dir"].nunique() for _, part in groups])
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
    data, groups, ordered, notes = _select(df)
    levels = _levels(data)
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
            if not values:  # label flipping has no ASR: say so instead of an empty frame
                empty_panel(ax, f"{group}: no {label(metric)}" if group else f"no {label(metric)}")
                continue
            if log:
                log_axis(ax)
            elif metric in BOUNDED:
                metric_limits(ax, metric, values)
            ax.set(xlabel="epoch", ylabel=label(metric))
            panel_title(ax, group)
    outside_legend(fig, [Line2D([], [], color=colors[lv], label=lv) for lv in levels])
    title(fig, "Training curves", *notes)
    return declutter(fig)
