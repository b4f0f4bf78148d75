"""Final-metric figures over the DP grid: RAD vs poison ratio (Hong Fig. 4), ASR/RAD vs clip and noise (Fig. 5).

Every point is the mean over seeds of one setting with ± sd bars; the figure title says over how many.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from gsdefense.plots._axes import (
    declutter,
    dodge,
    empty_panel,
    grid_axis,
    line_colors,
    line_markers,
    metric_limits,
    outside_legend,
    panel_title,
    value_axis,
)
from gsdefense.plots._common import (
    VANILLA,
    dp_line_label,
    fmt,
    label,
    ok_runs,
    pct,
    present_metrics,
    rad_metric,
    require,
    seed_stats,
    split_defense,
    spread_note,
    styled,
    title,
)
from gsdefense.plots._facets import IDENTITY, context, facet_panels, facets, vanilla_note

MAX_LINES = 8  # more DP settings than this in one panel: one panel per σ
DODGE = 0.2  # the sideways spread of a panel's error bars at one x, as a share of the gap between two x values


def _lines(vanilla: pd.DataFrame, dp: pd.DataFrame, *, clip_only: bool) -> tuple[pd.DataFrame, bool, str]:
    """Runs with a ``line`` label (vanilla, or only what differs among DP settings; only C with ``clip_only``),
    whether the DP lines form one ordered series (one of C or σ varies), and what all DP lines share (``σ = 0``)."""
    clips, noises = dp["dp.clip"].nunique(), 1 if clip_only else dp["dp.noise"].nunique()
    labels = [dp_line_label(c, s, clips=clips, noises=noises) for c, s in zip(dp["dp.clip"], dp["dp.noise"])]
    data = pd.concat([vanilla.assign(line=VANILLA), dp.assign(line=labels)], ignore_index=True)
    common = []
    if not dp.empty and clips == 1 and noises > 1:
        common.append(f"C = {fmt(dp['dp.clip'].iloc[0])}")
    if not dp.empty and dp["dp.noise"].nunique() == 1:
        common.append(f"σ = {fmt(dp['dp.noise'].iloc[0])}")
    return data, clips <= 1 or noises <= 1, ", ".join(common)


def _by_sigma(groups: list[tuple[str, pd.DataFrame]]) -> list[tuple[str, pd.DataFrame]]:
    """Each panel split into one per σ, vanilla repeated in each."""
    out = []
    for panel, part in groups:
        vanilla = part[part["line"] == VANILLA]
        for sigma, rows in part[part["line"] != VANILLA].groupby("dp.noise"):
            out.append((", ".join(t for t in (panel, f"σ = {fmt(sigma)}") if t), pd.concat([vanilla, rows])))
    return out


def _panels(n: int, *, width: float, height: float, sharey: bool = True) -> tuple[Figure, list[plt.Axes]]:
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(width * ncols + 1.8, height * nrows), squeeze=False, sharey=sharey, layout="constrained"
    )
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.set_axis_off()
    return fig, flat[:n]


@styled
def rad_vs_poison_ratio(runs: pd.DataFrame, *, metric: str | None = None) -> Figure:
    """RAD vs poison ratio, one line per DP setting plus vanilla, one panel per attack (Hong et al. Fig. 4).

    An unevenly spaced ratio grid (Hong's 0, 1, …, 5, 10, …, 40 %) is drawn at evenly spaced positions, one per
    swept ratio, so that every ratio keeps a readable label; the axis label then says "not to scale". With more
    than eight DP settings, each σ gets its own panel.
    """
    name = "rad_vs_poison_ratio"
    df = ok_runs(runs, figure=name)
    metric = metric or rad_metric(df)  # None: the runs' rad_definition
    require(df, ["attack.poison_ratio", metric], figure=name)
    df = df.dropna(subset=[metric, "attack.poison_ratio"])
    _require_ratio_sweep(df, figure=name, metric=metric)
    vanilla, dp = split_defense(df)
    split_sigma = dp[["dp.clip", "dp.noise"]].drop_duplicates().shape[0] > MAX_LINES
    data, ordered, common = _lines(vanilla, dp, clip_only=split_sigma)
    keys, rest = facets(data, ["attack.poison_ratio"])
    groups, at, data = facet_panels(data, keys, rest)
    groups = _by_sigma(groups) if split_sigma else groups
    levels = sorted(data["line"].unique(), key=lambda lv: (lv != VANILLA, _numbers(lv)))
    colors, markers = line_colors(levels, ordered=ordered), line_markers(levels)
    fig, axes = _panels(len(groups), width=4.4, height=3.4)
    counts, values = [], []
    for ax, (panel, part) in zip(axes, groups, strict=True):
        pos, categorical = grid_axis(ax, part["attack.poison_ratio"], percent=True)
        step = 1.0 if categorical or len(pos) < 2 else min(b - a for a, b in zip(sorted(pos), sorted(pos)[1:]))
        for i, level in enumerate(levels):
            stats = seed_stats(part[part["line"] == level], ["attack.poison_ratio"], metric)
            if stats.empty:
                continue
            # Error bars side by side, all within a fifth of the gap between two ratios: never read as another ratio.
            x = stats["attack.poison_ratio"].map(pos) + dodge(i, len(levels), DODGE * step)
            sd = stats["sd"].fillna(0)
            ax.errorbar(
                x, stats["mean"], yerr=sd, color=colors[level], marker=markers[level], markersize=4.5, linewidth=1.4,
                capsize=2, elinewidth=0.9, linestyle="--" if level == VANILLA else "-",
            )  # fmt: skip
            counts += list(stats["n"])
            values += [*(stats["mean"] - sd), *(stats["mean"] + sd)]
        panel_title(ax, panel)
        ax.set_xlabel(label("attack.poison_ratio") + (" (not to scale)" if categorical else ""))
        ax.set_ylabel(label(metric))
    for ax in axes:
        metric_limits(ax, metric, values)
    handles = [
        Line2D([], [], color=colors[lv], marker=markers[lv], linestyle="--" if lv == VANILLA else "-", label=lv)
        for lv in levels
    ]
    outside_legend(fig, handles, title="clip norm" if common.startswith("σ") else "setting")
    dp_note = f"DP-SGD at {common}" if common else ""
    notes = (context(data, keys), dp_note, at)
    title(fig, f"{label(metric)} vs poison ratio", ", ".join(n for n in notes if n), spread_note(counts),
          vanilla_note(groups))  # fmt: skip
    return declutter(fig)


def _require_ratio_sweep(df: pd.DataFrame, *, figure: str, metric: str) -> None:
    """A line needs ≥2 poison ratios of one attack (dataset, model): say which ratio each one ran at otherwise."""
    keys = [k for k in IDENTITY if k in df.columns]
    counts = df.groupby(keys, dropna=False)["attack.poison_ratio"].nunique() if keys else df["attack.poison_ratio"]
    if (counts.max() if keys else counts.nunique()) >= 2:
        return
    if "attack.name" in df.columns and df["attack.name"].nunique() > 1:
        ran = df.groupby("attack.name")["attack.poison_ratio"].agg(lambda v: "/".join(pct(x) for x in sorted(set(v))))
        at = ", ".join(f"{attack} {ratios}" for attack, ratios in ran.items())
        raise ValueError(f"{figure}: each attack ran at one poison ratio ({at}); sweep attack.poison_ratio to draw it")
    raise ValueError(f"{figure}: needs ≥2 attack.poison_ratio values with a {metric}; the ok runs have fewer")


def _numbers(level: str) -> list[float]:
    out = []
    for part in level.replace(",", " ").split():
        if "=" in part:
            out.append(float(part.split("=")[1]))
    return out


# (x column, line column): vs C one line per σ, vs σ one line per C.
AXES = (("dp.clip", "dp.noise"), ("dp.noise", "dp.clip"))


@styled
def asr_rad_vs_dp(runs: pd.DataFrame, *, metrics: Sequence[str] | None = None) -> Figure:
    """ASR and RAD vs clip norm (one line per σ) and vs noise multiplier (one line per C) (Hong et al. Fig. 5).

    One row per metric (and per attack); dashed black is the same attack without DP. ASR is drawn on [0, 1] and
    RAD on a range that includes 0, so that small differences look small.
    """
    name = "asr_rad_vs_dp"
    df = ok_runs(runs, figure=name)
    require(df, ["attack.name"], figure=name)
    vanilla, dp = split_defense(df)
    if dp.empty:
        raise ValueError(f"{name}: no DP runs with dp.clip and dp.noise")
    metrics = present_metrics(dp, metrics or ("asr", rad_metric(df)), figure=name)
    panels = [(x, line) for x, line in AXES if (dp.groupby(line)[x].nunique() >= 2).any()]
    if not panels:
        raise ValueError(f"{name}: needs ≥2 dp.clip values at one noise, or ≥2 dp.noise values at one clip")
    data = pd.concat([vanilla, dp], ignore_index=True)
    keys, rest = facets(data, [])
    groups, at, data = facet_panels(data, keys, rest)
    # A row per attack (dataset, model) and metric it has: label flipping has no ASR.
    rows = [(g, m) for g in groups for m in metrics if m in g[1] and split_defense(g[1])[1][m].notna().any()]
    fig, axes = plt.subplots(
        len(rows), len(panels), figsize=(4.6 * len(panels) + 1.6, 2.9 * len(rows)), squeeze=False, layout="constrained"
    )
    counts, legends = [], set()
    for r, ((group, part), metric) in enumerate(rows):
        part_vanilla, part_dp = split_defense(part)
        ref = pd.to_numeric(part_vanilla[metric], errors="coerce").mean() if metric in part_vanilla else float("nan")
        for c, (x, line) in enumerate(panels):
            ax = axes[r][c]
            if not (part_dp.groupby(line)[x].nunique() >= 2).any():
                _no_sweep(ax, part_dp, x=x, group=group)
                continue
            # A legend wherever the lines' values differ from those of a legend above (another attack's grid).
            key = (c, tuple(sorted(part_dp[line].unique())))
            counts += _dp_panel(ax, part_dp, x=x, line=line, metric=metric, ref=ref, group=group,
                                legend=key not in legends)  # fmt: skip
            legends.add(key)
    dashed = "dashed: vanilla (no DP)" if not vanilla.empty else ""
    title(fig, "Attack success and RAD under DP-SGD", ", ".join(n for n in (context(data, keys), at) if n),
          spread_note(counts), dashed, vanilla_note(groups))  # fmt: skip
    return declutter(fig)


def _no_sweep(ax: plt.Axes, dp: pd.DataFrame, *, x: str, group: str) -> None:
    """An empty panel that says why: this attack (dataset, model) ran at one value of ``x``."""
    values = ", ".join(fmt(v) for v in sorted(dp[x].unique()))
    empty_panel(ax, f"{group + ': ' if group else ''}one {label(x)} ({values}): nothing to draw")


def _dp_panel(
    ax: plt.Axes, dp: pd.DataFrame, *, x: str, line: str, metric: str, ref: float, group: str, legend: bool
) -> list[int]:
    """One panel of asr_rad_vs_dp: ``metric`` vs ``x``, one line per value of ``line``; returns the points' n."""
    symbol = "C" if line == "dp.clip" else "σ"
    levels = sorted(dp[line].unique())
    colors = line_colors([fmt(v) for v in levels], ordered=True)
    handles, values, counts = [], [ref], []
    for value in levels:
        stats = seed_stats(dp[dp[line] == value], [x], metric)
        if stats.empty:
            continue
        sd, color = stats["sd"].fillna(0), colors[fmt(value)]
        ax.errorbar(stats[x], stats["mean"], yerr=sd, color=color, marker="o", markersize=4, capsize=2,
                    elinewidth=0.9, linewidth=1.4)  # fmt: skip
        text = fmt(value) if len(levels) > 1 else f"DP-SGD, {symbol} = {fmt(value)}"
        handles.append(Line2D([], [], color=color, marker="o", label=text))
        counts += list(stats["n"])
        values += [*(stats["mean"] - sd), *(stats["mean"] + sd)]
    if pd.notna(ref):
        ax.axhline(ref, color="black", linestyle="--", linewidth=1.1)
        handles.append(Line2D([], [], color="black", linestyle="--", label="vanilla (no DP)"))
    value_axis(ax, dp[x])
    metric_limits(ax, metric, values)
    ax.set(xlabel=label(x), ylabel=label(metric))
    one = f"{symbol} = {fmt(levels[0])}" if len(levels) == 1 else ""
    panel_title(ax, ", ".join(t for t in (group, one) if t))
    if legend and len(handles) > 1:
        ax.legend(handles=handles, title=symbol if len(levels) > 1 else None, loc="upper left",
                  bbox_to_anchor=(1.02, 1.0), frameon=False, fontsize=8, title_fontsize=9)  # fmt: skip
    return counts
