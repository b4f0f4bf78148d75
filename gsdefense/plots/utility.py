"""Utility over the DP grid: clean accuracy over clip × noise (Hong et al. Fig. 12)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from gsdefense.plots._axes import MIN_SPAN, declutter, panel_title
from gsdefense.plots._common import (
    fmt,
    label,
    ok_runs,
    require,
    seed_stats,
    split_defense,
    spread_note,
    styled,
    title,
)
from gsdefense.plots._facets import context, facet_panels, facets


def _color_range(values: pd.Series) -> tuple[float, float]:
    # The colour scale spans at least MIN_SPAN, so that 0.95 vs 0.96 is not drawn as black vs yellow.
    lo, hi = float(values.min()), float(values.max())
    if hi - lo < MIN_SPAN:
        mid = (lo + hi) / 2
        lo, hi = mid - MIN_SPAN / 2, mid + MIN_SPAN / 2
    return lo, hi


@styled
def utility_heatmap(runs: pd.DataFrame, *, metric: str = "clean_acc") -> Figure:
    """Mean clean accuracy (over seeds) in each clip × noise cell, one heatmap per attack (Hong et al. Fig. 12).

    The cell text is the mean; the panel title gives the same attack's vanilla accuracy.
    """
    name = "utility_heatmap"
    df = ok_runs(runs, figure=name)
    require(df, [metric, "attack.name"], figure=name)
    vanilla, dp = split_defense(df)
    dp = dp.dropna(subset=[metric])
    if dp[["dp.clip", "dp.noise"]].drop_duplicates().shape[0] < 2:
        raise ValueError(f"{name}: needs ≥2 (dp.clip, dp.noise) settings with a {metric}")
    data = pd.concat([vanilla, dp], ignore_index=True)
    keys, rest = facets(data, [])
    groups, at, data = facet_panels(data, keys, rest)
    vmin, vmax = _color_range(split_defense(data)[1][metric])
    n_noise, n_clip = dp["dp.noise"].nunique(), dp["dp.clip"].nunique()
    width, height = 0.75 * n_clip + 1.6, 0.42 * n_noise + 1.5
    fig, axes = plt.subplots(
        1, len(groups), figsize=(width * len(groups) + 1.2, height), squeeze=False, layout="constrained"
    )
    counts = []
    for ax, (group, part) in zip(axes[0], groups, strict=True):
        part_vanilla, part_dp = split_defense(part)
        stats = seed_stats(part_dp, ["dp.noise", "dp.clip"], metric)
        counts += list(stats["n"])
        cells = stats.pivot(index="dp.noise", columns="dp.clip", values="mean").sort_index(ascending=False)
        sns.heatmap(
            cells, annot=True, fmt=".2f", cmap="viridis", vmin=vmin, vmax=vmax, ax=ax, cbar=ax is axes[0][-1],
            cbar_kws={"label": f"{label(metric)} (mean)"}, annot_kws={"fontsize": 8},
        )  # fmt: skip
        ax.set_xticklabels([fmt(float(v)) for v in cells.columns], rotation=0)
        ax.set_yticklabels([fmt(float(v)) for v in cells.index], rotation=0)
        ax.set(xlabel=label("dp.clip"), ylabel=label("dp.noise"))
        ref = pd.to_numeric(part_vanilla[metric], errors="coerce").mean() if not part_vanilla.empty else np.nan
        panel_title(ax, "\n".join(t for t in (group, f"vanilla {ref:.2f}" if np.isfinite(ref) else "") if t))
    title(fig, f"Utility: {label(metric)} over clip × noise", ", ".join(n for n in (context(data, keys), at) if n),
          spread_note(counts, sd=False))  # fmt: skip
    return declutter(fig)
