"""Neural Cleanse over the DP grid: the target label's anomaly index vs clip and noise, and ASR before/after repair.

Both take the runs frame (``gsdefense.analysis.load_runs``) of runs with ``detector=neural_cleanse``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from gsdefense.analysis import setting_columns
from gsdefense.plots._axes import panel_title
from gsdefense.plots._common import (
    VANILLA,
    defense_order,
    fmt,
    label,
    ok_runs,
    require,
    split_defense,
    styled,
    title,
)
from gsdefense.plots._facets import context, facet_panels, facets, vanilla_note

INDEX = "nc_target_anomaly_index"
DETECTED = "nc_detected"
THRESHOLD = "detector.anomaly_threshold"
SYMBOL = {"dp.clip": "C", "dp.noise": "σ"}


def _threshold(df: pd.DataFrame) -> float:
    values = pd.to_numeric(df[THRESHOLD], errors="coerce").dropna().unique() if THRESHOLD in df.columns else []
    return float(values[0]) if len(values) == 1 else 2.0


def _grid_axis(ax: plt.Axes, values: Iterable[float]) -> None:
    """Ticks at the swept values; log scale over a wide positive range, symlog when 0 is among them."""
    vals = sorted({float(v) for v in values if np.isfinite(v)})
    positive = [v for v in vals if v > 0]
    if vals and vals[0] == 0 and positive:
        ax.set_xscale("symlog", linthresh=positive[0], linscale=0.5)
    elif positive and vals[0] > 0 and vals[-1] / vals[0] > 3:
        ax.set_xscale("log")
    ax.set_xticks(vals, [fmt(v) for v in vals])
    ax.minorticks_off()


def _slices(dp: pd.DataFrame) -> list[tuple[str, pd.DataFrame, str]]:
    """(x column, runs, where): vs clip at the smallest noise, vs noise at the clip with the widest noise sweep."""
    out = []
    noise0 = float(dp["dp.noise"].min())
    at_noise = dp[dp["dp.noise"] == noise0]
    if at_noise["dp.clip"].nunique() >= 2:
        out.append(("dp.clip", at_noise, f"σ = {fmt(noise0)}"))
    width = dp.groupby("dp.clip")["dp.noise"].nunique()
    clip = float(min(width[width == width.max()].index))
    at_clip = dp[dp["dp.clip"] == clip]
    if at_clip["dp.noise"].nunique() >= 2:
        out.append(("dp.noise", at_clip, f"C = {fmt(clip)}"))
    return out


def _pooled(df: pd.DataFrame, keys: Sequence[str]) -> str:
    """Name the settings that vary within one plotted group (other than the seed): they are averaged over."""
    columns = [c for c in setting_columns(df, varying=True) if c not in keys and not c.startswith("dp.")]
    if not columns:
        return ""
    spread = df.groupby(list(keys), dropna=False)[columns].nunique(dropna=False).max()
    pooled = [c for c in columns if spread[c] > 1]
    return f"pooled over {', '.join(pooled)}" if pooled else ""


def _rate(detected: pd.Series) -> str:
    hits = detected.dropna().astype(bool)
    return f"{int(hits.sum())}/{len(hits)}" if len(hits) else "–"


@styled
def nc_anomaly_vs_dp(runs: pd.DataFrame) -> Figure:
    """The target label's anomaly index vs clip (at the smallest noise) and vs noise (at one clip), one row per
    attack (and dataset and model, when they vary).

    Dots are seeds, the line their mean; the label above each x is the detection rate (target flagged / seeds).
    The dashed black line is the attack without DP (its detection rate in the panel title) when the sweep has
    such runs, the dotted grey line the flagging threshold.
    """
    name = "nc_anomaly_vs_dp"
    df = ok_runs(runs, figure=name)
    require(df, ["attack.name"], figure=name)
    require(df, [INDEX], figure=name, hint="no run used detector=neural_cleanse")
    df = df.dropna(subset=[INDEX])
    vanilla, dp = split_defense(df)
    if dp.empty:
        raise ValueError(f"{name}: no DP runs with dp.clip, dp.noise and {INDEX}")
    if not _slices(dp):
        raise ValueError(f"{name}: needs ≥2 dp.clip values at one noise, or ≥2 dp.noise values at one clip")
    threshold = _threshold(df)
    keys, rest = facets(df, [])
    groups, at, df = facet_panels(df, keys, rest)
    ncols = max(len(_slices(split_defense(part)[1])) for _, part in groups)
    fig, axes = plt.subplots(len(groups), ncols, figsize=(4.6 * ncols, 3.2 * len(groups)), squeeze=False,
                             sharey=True)  # fmt: skip
    for row, (group, part) in enumerate(groups):
        ref, part_dp = split_defense(part)
        slices = _slices(part_dp) if not part_dp.empty else []
        for col in range(ncols):
            ax = axes[row][col]
            if col >= len(slices):
                ax.set_axis_off()
                continue
            x, data, where = slices[col]
            ax.scatter(data[x], data[INDEX], s=18, alpha=0.45, color="tab:blue", zorder=2)
            means = data.groupby(x)[INDEX].mean()
            ax.plot(means.index, means.values, marker="o", color="tab:blue", zorder=3)
            for value, rows in data.groupby(x):
                ax.annotate(_rate(rows[DETECTED]) if DETECTED in rows else "", (value, rows[INDEX].max()),
                            textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)  # fmt: skip
            if not ref.empty:
                ax.axhline(ref[INDEX].mean(), color="black", linestyle="--", linewidth=1)
            ax.axhline(threshold, color="grey", linestyle=":", linewidth=1)
            _grid_axis(ax, data[x])
            vanilla_rate = f" (vanilla {_rate(ref[DETECTED])})" if not ref.empty and DETECTED in ref else ""
            panel = f"{group}: " if group else ""
            ax.set(xlabel=label(x), ylabel="target anomaly index" if col == 0 else "")
            panel_title(ax, f"{panel}vs {SYMBOL[x]} at {where}{vanilla_rate}")
    handles = [Line2D([], [], color="tab:blue", marker="o", label="mean over seeds (dots: seeds)")]
    if not vanilla.empty:
        handles.append(Line2D([], [], color="black", linestyle="--", label="vanilla (no DP)"))
    handles.append(Line2D([], [], color="grey", linestyle=":", label=f"flag threshold {fmt(threshold)}"))
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, fontsize=9)
    notes = ", ".join(n for n in (context(df, keys), at) if n)
    title(fig, "Neural Cleanse: anomaly index of the backdoor target under DP-SGD", notes,
          "labels: detection rate, target flagged / seeds", vanilla_note(groups),
          _pooled(df, [*keys, "defense"]))  # fmt: skip
    fig.tight_layout()
    return fig


@styled
def nc_asr_before_after(runs: pd.DataFrame, *, metrics: Sequence[str] = ("asr", "clean_acc")) -> Figure:
    """ASR (and clean accuracy) of each DP setting before and after Neural Cleanse's repair, one panel per attack.

    Bars are means over seeds with sd error bars. "After" is the model the defender deploys: unchanged when
    nothing was flagged.
    """
    name = "nc_asr_before_after"
    df = ok_runs(runs, figure=name)
    require(df, ["attack.name", "defense"], figure=name)
    require(
        df,
        ["asr_after"],
        figure=name,
        hint="no run used detector.mitigation=unlearn|prune",
    )
    metrics = [m for m in metrics if m in df.columns and f"{m}_after" in df.columns and df[f"{m}_after"].notna().any()]
    if not metrics:
        raise ValueError(f"{name}: no metric has both a before and an after value")
    keys, rest = facets(df, [])
    groups, at, df = facet_panels(df, keys, rest)
    order = defense_order(df["defense"])
    width = max(4.0, 0.55 * len(order) + 1.5)
    colors = dict(zip(["before", "after repair"], sns.color_palette("Paired", 2), strict=True))
    fig, axes = plt.subplots(len(groups), len(metrics), figsize=(width * len(metrics), 3.6 * len(groups)),
                             squeeze=False)  # fmt: skip
    for row, (group, rows) in enumerate(groups):
        for col, metric in enumerate(metrics):
            ax = axes[row][col]
            part = pd.concat(
                [rows[["defense"]].assign(value=rows[column], stage=stage)
                 for stage, column in (("before", metric), ("after repair", f"{metric}_after"))],
                ignore_index=True,
            ).dropna(subset=["value"])  # fmt: skip
            sns.barplot(data=part, x="defense", y="value", hue="stage", hue_order=["before", "after repair"],
                        order=[o for o in order if o in set(part["defense"])], errorbar="sd", palette=colors,
                        legend=False, ax=ax)  # fmt: skip
            ax.set(xlabel="", ylabel=label(metric), ylim=(0, 1.05))
            panel_title(ax, group)
            ax.tick_params(axis="x", rotation=45)
            for tick in ax.get_xticklabels():
                tick.set_horizontalalignment("right")
                tick.set_fontweight("bold" if tick.get_text() == VANILLA else "normal")
    handles = [Patch(color=color, label=stage) for stage, color in colors.items()]
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, fontsize=9)
    pooled = _pooled(df, [*keys, "defense"])
    title(fig, "Neural Cleanse repair: before vs after", ", ".join(n for n in (context(df, keys), at) if n),
          "mean ± sd over seeds", pooled)  # fmt: skip
    fig.tight_layout()
    return fig
