"""Final-metric figures over the DP grid: RAD vs poison ratio (Hong Fig. 4), ASR/RAD vs clip and noise (Fig. 5)."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from gsdefense.plots._common import (
    VANILLA,
    averaged_note,
    defense_order,
    fmt,
    label,
    ok_runs,
    palette,
    present_metrics,
    require,
    split_defense,
    styled,
    title,
    value_axis,
)


def _most_common(values: pd.Series) -> float:
    # Ties go to the smaller value: for σ, the slice closest to clipping alone.
    counts = values.value_counts()
    return float(min(counts[counts == counts.max()].index))


@styled
def rad_vs_poison_ratio(runs: pd.DataFrame, *, metric: str = "rad", noise: float | None = None) -> Figure:
    """RAD vs poison ratio, one line per clip norm plus vanilla, one panel per attack (Hong et al. Fig. 4).

    DP runs are taken at one noise multiplier: ``noise`` or the most common one in the sweep.
    """
    name = "rad_vs_poison_ratio"
    df = ok_runs(runs, figure=name)
    require(df, ["attack.poison_ratio", metric, "attack.name"], figure=name)
    vanilla, dp = split_defense(df)
    if not dp.empty:
        noise = _most_common(dp["dp.noise"]) if noise is None else noise
        dp = dp[dp["dp.noise"] == noise]
    data = pd.concat([vanilla, dp]).dropna(subset=[metric, "attack.poison_ratio"])
    if data["attack.poison_ratio"].nunique() < 2:
        raise ValueError(f"{name}: needs ≥2 attack.poison_ratio values with a {metric}; the ok runs have fewer")
    clips = data["dp.clip"] if "dp.clip" in data.columns else pd.Series(float("nan"), index=data.index)
    data = data.assign(
        clip=[VANILLA if d == VANILLA else f"C={c:g}" for d, c in zip(data["defense"], clips, strict=True)]
    )
    order = defense_order(data["clip"])
    attacks = sorted(data["attack.name"].unique())
    grid = sns.relplot(
        data=data,
        kind="line",
        x="attack.poison_ratio",
        y=metric,
        hue="clip",
        hue_order=order,
        palette=palette(order),
        style="clip",
        style_order=order,
        dashes={lv: (4, 2) if lv == VANILLA else "" for lv in order},
        markers=True,
        errorbar="sd",
        err_style="bars",
        col="attack.name",
        col_order=attacks,
        col_wrap=min(len(attacks), 3),
        height=3.4,
        aspect=1.2,
        facet_kws={"sharey": True},
    )
    grid.set_axis_labels(label("attack.poison_ratio"), label(metric))
    grid.set_titles("attack: {col_name}")
    grid.legend.set_title("clip norm")
    for ax in grid.axes.flat:
        value_axis(ax, data["attack.poison_ratio"], log=False)
    sigma = f"DP at σ = {fmt(noise)}" if noise is not None and not dp.empty else "no DP runs"
    note = averaged_note(data, ["attack.poison_ratio", "attack.name", "dp.clip", "dp.noise"])
    title(grid.figure, f"{label(metric)} vs poison ratio ({sigma})", note)
    grid.tight_layout()
    return grid.figure


def _panels(dp: pd.DataFrame, clip: float | None) -> list[tuple[str, pd.DataFrame, str]]:
    """(x column, runs, slice description) for each sweep axis the data supports."""
    panels = []
    noise0 = float(dp["dp.noise"].min())
    at_noise = dp[dp["dp.noise"] == noise0]
    if at_noise["dp.clip"].nunique() >= 2:
        panels.append(("dp.clip", at_noise, f"σ = {fmt(noise0)}"))
    if clip is None:
        # The clip norm with the widest noise sweep; ties go to the smaller.
        width = dp.groupby("dp.clip")["dp.noise"].nunique()
        clip = float(min(width[width == width.max()].index)) if len(width) else None
    at_clip = dp[dp["dp.clip"] == clip]
    if at_clip["dp.noise"].nunique() >= 2:
        panels.append(("dp.noise", at_clip, f"C = {fmt(clip)}"))
    return panels


@styled
def asr_rad_vs_dp(runs: pd.DataFrame, *, metrics: Sequence[str] = ("asr", "rad"), clip: float | None = None) -> Figure:
    """ASR and RAD vs clip norm at the smallest noise, and vs noise at a fixed clip norm (Hong et al. Fig. 5).

    Lines are attacks; dashed horizontal lines are the same attack without DP.
    """
    name = "asr_rad_vs_dp"
    df = ok_runs(runs, figure=name)
    require(df, ["attack.name"], figure=name)
    vanilla, dp = split_defense(df)
    if dp.empty:
        raise ValueError(f"{name}: no DP runs with dp.clip and dp.noise")
    metrics = present_metrics(dp, metrics, figure=name)
    panels = _panels(dp, clip)
    if not panels:
        raise ValueError(f"{name}: needs ≥2 dp.clip values at one noise, or ≥2 dp.noise values at one clip")
    attacks = sorted(df["attack.name"].unique())
    colors = dict(zip(attacks, sns.color_palette("tab10", len(attacks)), strict=True))
    fig, axes = plt.subplots(len(metrics), len(panels), figsize=(4.6 * len(panels), 3.3 * len(metrics)), squeeze=False)
    for row, metric in enumerate(metrics):
        for col, (x, data, where) in enumerate(panels):
            ax = axes[row][col]
            data = data.dropna(subset=[metric])
            if data.empty:
                ax.set_axis_off()
                continue
            sns.lineplot(
                data=data, x=x, y=metric, hue="attack.name", palette=colors, marker="o",
                errorbar="sd", err_style="bars", legend=False, ax=ax,
            )  # fmt: skip
            for attack, ref in vanilla.groupby("attack.name")[metric].mean().dropna().items():
                ax.axhline(ref, color=colors.get(attack, "grey"), linestyle="--", linewidth=1)
            value_axis(ax, data[x])
            ax.set(xlabel=label(x), ylabel=label(metric), title=f"vs {label(x)} at {where}")
    handles = [Line2D([], [], color=colors[a], marker="o", label=a) for a in attacks]
    if not vanilla.empty:
        handles.append(Line2D([], [], color="grey", linestyle="--", label="vanilla (no DP)"))
    fig.legend(handles=handles, title="attack", loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    used = ["attack.name", "dp.clip", "dp.noise"]
    title(fig, "Attack success and RAD under DP-SGD", averaged_note(pd.concat([p[1] for p in panels]), used))
    fig.tight_layout()
    return fig
