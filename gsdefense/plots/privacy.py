"""Privacy–robustness–utility trade-off: ε against ASR, RAD and clean accuracy, one point per DP setting."""

from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from gsdefense.plots._axes import MARKERS, declutter, dodge, line_colors, metric_limits, outside_legend, panel_title
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

INF = "∞"


def _no_epsilon_reason(vanilla: pd.DataFrame, infinite: pd.DataFrame, unknown: pd.DataFrame) -> str:
    """Why no run has a finite ε, counted by cause."""
    causes = []
    if len(infinite):
        causes.append(f"{len(infinite)} DP runs have σ = 0 (ε = ∞: clipping alone gives no privacy)")
    if len(unknown):
        kinds = ", ".join(sorted(map(str, unknown["dp.name"].dropna().unique()))) if "dp.name" in unknown else "?"
        causes.append(f"{len(unknown)} DP runs with σ > 0 recorded no ε (dp.name: {kinds})")
    if len(vanilla):
        causes.append(f"{len(vanilla)} runs are vanilla (no DP)")
    return "; ".join(causes) or "no DP runs"


def _x_axis(ax: plt.Axes, finite: np.ndarray, x_inf: float, *, log: bool) -> None:
    """Ticks over the finite ε range plus one "∞" tick past a dotted break."""
    lo, hi = float(finite.min()), float(finite.max())
    if log:
        ax.set_xscale("log")
        first, last = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
        step = max(1, math.ceil((last - first) / 5))
        cut = math.sqrt(hi * x_inf)  # the break between finite ε and ∞
        powers = [k for k in range(first, last + 1, step) if 10.0**k < cut]
        ticks, labels = [10.0**k for k in powers], [f"$10^{{{k}}}$" for k in powers]
        ax.set_xlim(lo / 10 ** (0.05 * (last - first + 1)), x_inf * 10 ** (0.05 * (last - first + 1)))
        ax.axvline(cut, color="0.5", linestyle=":", linewidth=1)
    else:
        ticks = [float(t) for t in np.linspace(lo, hi, 4)]
        labels = [f"{t:.3g}" for t in ticks]
        ax.set_xlim(lo - 0.05 * (x_inf - lo), x_inf + 0.05 * (x_inf - lo))
        ax.axvline((hi + x_inf) / 2, color="0.5", linestyle=":", linewidth=1)
    ax.xaxis.set_minor_locator(plt.NullLocator())
    ax.set_xticks([*ticks, x_inf], [*labels, INF])


@styled
def privacy_tradeoff(runs: pd.DataFrame, *, metrics: Sequence[str] = ("asr", "rad", "clean_acc")) -> Figure:
    """ε against ASR, RAD and clean accuracy: one point per (C, σ) setting, mean ± sd over seeds.

    Points are labelled by colour (σ) and marker (C), with the legend as the key. Runs without privacy have
    ε = ∞ and are shown at the "∞" tick past the dotted break: DP runs with σ = 0 (clipping only), and vanilla
    runs (black star). DP runs with σ > 0 that recorded no ε (``dp=adaptive`` has no accountant) are left out and
    counted in the title. Skips, naming the cause, when no run has a finite ε.
    """
    name = "privacy_tradeoff"
    df = ok_runs(runs, figure=name)
    require(df, ["attack.name"], figure=name)
    vanilla, dp = split_defense(df)
    eps = pd.to_numeric(dp["epsilon"], errors="coerce") if "epsilon" in dp.columns else pd.Series(np.nan, dp.index)
    infinite = dp[(dp["dp.noise"] == 0) | np.isposinf(eps)]
    finite = dp[np.isfinite(eps) & (dp["dp.noise"] > 0)]
    unknown = dp.drop(index=infinite.index.union(finite.index))
    if finite.empty:
        raise ValueError(f"{name}: no run has a finite ε ({_no_epsilon_reason(vanilla, infinite, unknown)})")
    metrics = [m for m in metrics if m in df.columns and pd.to_numeric(df[m], errors="coerce").notna().any()]
    if not metrics:
        raise ValueError(f"{name}: the runs with an ε have none of asr, rad, clean_acc")
    data = pd.concat([vanilla, infinite.assign(epsilon=np.inf), finite], ignore_index=True)
    keys, rest = facets(data, [])
    groups, at, data = facet_panels(data, keys, rest)
    finite_eps = pd.to_numeric(data["epsilon"], errors="coerce")
    finite_eps = finite_eps[np.isfinite(finite_eps)].to_numpy()
    if not len(finite_eps):
        raise ValueError(f"{name}: no run with a finite ε {at or 'among the runs shown'}")
    log = finite_eps.max() / finite_eps.min() > 3
    x_inf = finite_eps.max() * (10 ** max(0.5, 0.15 * np.log10(finite_eps.max() / finite_eps.min())) if log else 1)
    if not log:
        x_inf = finite_eps.max() + max(0.25 * np.ptp(finite_eps), 0.5)
    sigmas = sorted(data["dp.noise"].dropna().unique())
    clips = sorted(data["dp.clip"].dropna().unique())
    colors = line_colors([fmt(s) for s in sigmas], ordered=True)
    markers = {c: MARKERS[i % len(MARKERS)] for i, c in enumerate(clips)}
    fig, axes = plt.subplots(
        len(groups), len(metrics), figsize=(4.0 * len(metrics) + 2.0, 3.2 * len(groups)), squeeze=False,
        layout="constrained",
    )  # fmt: skip
    # Points of one σ share their ε whatever C: a small sideways offset per C keeps them apart.
    shift = {c: dodge(i, len(clips) + 1, 0.5) for i, c in enumerate(clips)}
    scale = (lambda x, d: x * 10 ** (d * 0.1 * np.log10(x_inf / finite_eps.min()))) if log else (
        lambda x, d: x + d * 0.1 * (x_inf - finite_eps.min()))  # fmt: skip
    counts = []
    for r, (group, part) in enumerate(groups):
        part_vanilla, part_dp = split_defense(part)
        part_dp = part_dp.assign(epsilon=pd.to_numeric(part_dp["epsilon"]))
        for c, metric in enumerate(metrics):
            ax, values = axes[r][c], []
            stats = seed_stats(part_dp, ["dp.clip", "dp.noise", "epsilon"], metric)
            for clip, sigma, eps, mean, sd in stats[["dp.clip", "dp.noise", "epsilon", "mean", "sd"]].itertuples(
                index=False
            ):
                sd = 0.0 if pd.isna(sd) else sd
                ax.errorbar(scale(x_inf if np.isinf(eps) else eps, shift[clip]), mean, yerr=sd,
                            color=colors[fmt(sigma)], marker=markers[clip], markersize=6, markeredgecolor="black",
                            markeredgewidth=0.5, elinewidth=0.9, capsize=2)  # fmt: skip
                values += [mean - sd, mean + sd]
            counts += list(stats["n"])
            ref = seed_stats(part_vanilla.assign(_k=0), ["_k"], metric) if metric in part_vanilla else pd.DataFrame()
            if not ref.empty:
                mean, sd = ref["mean"].iloc[0], ref["sd"].fillna(0).iloc[0]
                ax.errorbar(scale(x_inf, dodge(len(clips), len(clips) + 1, 0.5)), mean, yerr=sd, color="black",
                            marker="*", markersize=10, capsize=2)  # fmt: skip
                values += [mean - sd, mean + sd]
            _x_axis(ax, finite_eps, x_inf, log=log)
            metric_limits(ax, metric, values)
            ax.set(xlabel=label("epsilon") + " (privacy spent)", ylabel=label(metric))
            panel_title(ax, group)
    fixed = [f"{k} = {fmt(v[0])}" for k, v in (("C", clips), ("σ", sigmas)) if len(v) == 1]
    at = ", ".join(n for n in (context(data, keys), *fixed, at) if n)
    title(fig, "Privacy–robustness–utility trade-off", at, _excluded(unknown), spread_note(counts))
    outside_legend(fig, _handles(sigmas, clips, colors, markers, vanilla=not vanilla.empty), bold=("σ", "C"))
    return declutter(fig)


def _excluded(unknown: pd.DataFrame) -> str:
    if unknown.empty:
        return ""
    kinds = ", ".join(sorted(map(str, unknown["dp.name"].dropna().unique())))
    return f"left out: {len(unknown)} DP runs with σ > 0 but no ε (dp.name: {kinds})"


def _handles(sigmas: list, clips: list, colors: dict, markers: dict, *, vanilla: bool) -> list[Line2D]:
    """Legend: σ colours and C markers (each only when it varies), then vanilla."""
    handles = []
    if len(sigmas) > 1:
        handles.append(Line2D([], [], linestyle="", label="σ"))
        handles += [Line2D([], [], color=colors[fmt(s)], marker="o", linestyle="", label=fmt(s)) for s in sigmas]
    if len(clips) > 1:
        handles.append(Line2D([], [], linestyle="", label="C"))
        handles += [Line2D([], [], color="0.5", marker=markers[c], linestyle="", label=fmt(c)) for c in clips]
    if vanilla:
        handles.append(Line2D([], [], color="black", marker="*", markersize=9, linestyle="", label="vanilla (no DP)"))
    return handles
