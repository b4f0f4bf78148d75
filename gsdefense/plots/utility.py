"""Utility and privacy figures: clean accuracy over clip × noise (Hong Fig. 12), ε vs ASR/RAD trade-off."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from gsdefense.analysis import setting_columns
from gsdefense.plots._common import (
    averaged_note,
    fmt,
    label,
    ok_runs,
    present_metrics,
    require,
    split_defense,
    styled,
    title,
)

MARKERS = "osD^vP*X"


@styled
def utility_heatmap(runs: pd.DataFrame, *, metric: str = "clean_acc") -> Figure:
    """Mean clean accuracy over the clip × noise grid, one heatmap per attack (Hong et al. Fig. 12)."""
    name = "utility_heatmap"
    df = ok_runs(runs, figure=name)
    require(df, [metric, "attack.name"], figure=name)
    vanilla, dp = split_defense(df)
    dp = dp.dropna(subset=[metric])
    if dp[["dp.clip", "dp.noise"]].drop_duplicates().shape[0] < 2:
        raise ValueError(f"{name}: needs ≥2 (dp.clip, dp.noise) settings with a {metric}")
    attacks = sorted(dp["attack.name"].unique())
    lo, hi = float(dp[metric].min()), float(dp[metric].max())
    ncols = len(attacks)
    fig, axes = plt.subplots(1, ncols, figsize=(1.0 + 3.6 * ncols, 3.4), squeeze=False)
    for ax, attack in zip(axes[0], attacks, strict=True):
        cells = dp[dp["attack.name"] == attack].pivot_table(
            index="dp.noise", columns="dp.clip", values=metric, aggfunc="mean"
        )
        cells = cells.sort_index(ascending=False)  # largest noise on top, like a y axis
        sns.heatmap(
            cells, annot=True, fmt=".2f", cmap="viridis", vmin=lo, vmax=hi, ax=ax,
            cbar=ax is axes[0][-1], cbar_kws={"label": label(metric)},
        )  # fmt: skip
        ax.set_xticklabels([fmt(float(v)) for v in cells.columns])
        ax.set_yticklabels([fmt(float(v)) for v in cells.index], rotation=0)
        ax.set(xlabel=label("dp.clip"), ylabel=label("dp.noise"))
        ref = vanilla.loc[vanilla["attack.name"] == attack, metric].mean()
        ax.set_title(f"{attack}" + (f" (vanilla {ref:.2f})" if np.isfinite(ref) else ""))
    title(fig, f"Utility: {label(metric)} over clip × noise", averaged_note(dp, ["attack.name", "dp.clip", "dp.noise"]))
    fig.tight_layout()
    return fig


def _per_setting(dp: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """Mean and sd over seeds of ``columns`` for each distinct setting."""
    keys = setting_columns(dp, varying=True) or ["attack.name"]
    if "attack.name" not in keys:
        keys.append("attack.name")
    stats = dp.groupby(keys, dropna=False)[list(columns)].agg(["mean", "std"])
    stats.columns = [f"{c}_{s}" for c, s in stats.columns]
    return stats.reset_index()


@styled
def privacy_tradeoff(
    runs: pd.DataFrame, *, metrics: Sequence[str] = ("asr", "rad"), color: str = "clean_acc"
) -> Figure:
    """Privacy–robustness–utility: ε vs ASR and RAD, colour = clean accuracy, marker = attack.

    One point per setting (mean over seeds, sd as error bars); dashed lines are vanilla runs (ε = ∞).
    """
    name = "privacy_tradeoff"
    df = ok_runs(runs, figure=name)
    require(df, ["attack.name", color], figure=name)
    vanilla, dp = split_defense(df)
    if "epsilon" not in dp.columns:
        raise ValueError(f"{name}: no column 'epsilon' in the data")
    dp = dp[np.isfinite(pd.to_numeric(dp["epsilon"], errors="coerce"))]
    metrics = present_metrics(dp, metrics, figure=name)
    points = _per_setting(dp, ["epsilon", color, *metrics])
    if len(points) < 2:
        raise ValueError(f"{name}: needs ≥2 DP settings with a finite epsilon")
    attacks = sorted(points["attack.name"].unique())
    markers = {a: MARKERS[i % len(MARKERS)] for i, a in enumerate(attacks)}
    cmin, cmax = points[f"{color}_mean"].min(), points[f"{color}_mean"].max()
    size = (4.4 * len(metrics) + 1.2, 3.8)
    fig, axes = plt.subplots(1, len(metrics), figsize=size, squeeze=False, layout="constrained")
    scatter = None
    for ax, metric in zip(axes[0], metrics, strict=True):
        for attack in attacks:
            pts = points[(points["attack.name"] == attack) & points[f"{metric}_mean"].notna()]
            ax.errorbar(
                pts["epsilon_mean"], pts[f"{metric}_mean"], xerr=pts["epsilon_std"].fillna(0),
                yerr=pts[f"{metric}_std"].fillna(0), fmt="none", ecolor="0.6", elinewidth=1, zorder=1,
            )  # fmt: skip
            scatter = ax.scatter(
                pts["epsilon_mean"], pts[f"{metric}_mean"], c=pts[f"{color}_mean"], cmap="viridis",
                vmin=cmin, vmax=cmax, marker=markers[attack], s=55, edgecolors="black", linewidths=0.5, zorder=2,
            )  # fmt: skip
            ref = vanilla.loc[vanilla["attack.name"] == attack, metric].mean()
            if np.isfinite(ref):
                ax.axhline(ref, color="0.3", linestyle="--", linewidth=1)
        eps = points["epsilon_mean"]
        if eps.max() / eps.min() > 3:  # ε spans orders of magnitude across noise levels
            ax.set_xscale("log")
        ax.set(xlabel=label("epsilon"), ylabel=label(metric))
    handles = [Line2D([], [], marker=markers[a], color="0.3", linestyle="", label=a) for a in attacks]
    if not vanilla.empty:
        handles.append(Line2D([], [], color="0.3", linestyle="--", label="vanilla (ε = ∞)"))
    axes[0][0].legend(handles=handles, title="attack", fontsize=8, loc="best")
    fig.colorbar(scatter, ax=list(axes[0]), label=label(color))
    title(fig, "Privacy–robustness–utility trade-off")
    return fig
