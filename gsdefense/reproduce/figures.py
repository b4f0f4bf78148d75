"""One figure per claim: a panel per check, with every run's value, each arm's mean ± sd and the paper's number.

- ``Compare`` / ``OneSample``: one column of points per arm (jittered), the mean ± sd bar, a red star at the
  paper's value for that arm where it has one; one-sample checks draw their null (dashed) and claimed (dotted)
  levels.
- ``Trend``: the metric against the setting (jittered), with the median per setting.
- ``BudgetCompare``: each setting's mean metric against its mean utility cost, per mechanism, and the budget.
"""

from __future__ import annotations

import math
import textwrap

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from gsdefense.reproduce.arms import Arm
from gsdefense.reproduce.checks import BudgetCompare, Compare, OneSample, Ratio, Trend
from gsdefense.reproduce.evaluate import ClaimResult
from gsdefense.reproduce.verdicts import Summary

COLORS = {
    "reproduced": "tab:green",
    "smaller than claimed": "tab:purple",
    "opposite direction": "tab:red",
    "inconclusive": "tab:orange",
    "not testable here": "tab:gray",
}
WRAP = 42


def _jitter(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-0.12, 0.12, n)


def _arms_panel(ax: plt.Axes, arms: list[Arm], metric: str, frames: dict[str, pd.DataFrame]) -> None:
    for i, arm in enumerate(arms):
        values = arm.values(frames, metric)
        s = Summary.of(values)
        ax.scatter(i + _jitter(len(values), i), values, s=14, alpha=0.6, color="tab:blue", linewidths=0)
        if s.n:
            ax.errorbar(i + 0.25, s.mean, yerr=0 if math.isnan(s.sd) else s.sd, fmt="o", color="black", capsize=4)
        if arm.paper is not None:
            ax.scatter(
                i + 0.25,
                arm.paper,
                marker="*",
                s=120,
                color="tab:red",
                zorder=5,
                label="paper" if i == next(j for j, a in enumerate(arms) if a.paper is not None) else None,
            )
    ax.set_xticks(range(len(arms)), [textwrap.fill(a.label, 14) for a in arms], fontsize=8)
    ax.set_xlim(-0.6, len(arms) - 0.4)
    ax.set_ylabel(metric, fontsize=8)
    if any(a.paper is not None for a in arms):
        ax.legend(fontsize=7, loc="best")


def _trend_panel(ax: plt.Axes, check: Trend, frames: dict[str, pd.DataFrame]) -> None:
    rows = check.arm.rows(frames)
    if rows.empty or check.metric not in rows or check.x not in rows:
        return
    data = rows[[check.x, check.metric]].apply(pd.to_numeric, errors="coerce").dropna()
    settings = sorted(data[check.x].unique())
    pos = {v: i for i, v in enumerate(settings)}
    x = data[check.x].map(pos).to_numpy(dtype=float)
    ax.scatter(x + _jitter(len(x), 0), data[check.metric], s=14, alpha=0.6, color="tab:blue", linewidths=0)
    med = data.groupby(check.x)[check.metric].median()
    ax.plot([pos[v] for v in med.index], med.to_numpy(), color="black", marker="o", label="median")
    ax.set_xticks(range(len(settings)), [f"{v:g}" for v in settings], fontsize=8)
    ax.set_xlabel(check.x, fontsize=8)
    ax.set_ylabel(check.metric, fontsize=8)
    ax.legend(fontsize=7)


def _budget_panel(ax: plt.Axes, check: BudgetCompare, frames: dict[str, pd.DataFrame]) -> None:
    for arm, color in ((check.high, "tab:blue"), (check.low, "tab:purple")):
        rows = arm.rows(frames)
        if rows.empty or check.by not in rows:
            continue
        stats = rows.groupby(check.by)[[check.budget_metric, check.metric]].agg(["mean", "std"])
        x, y = stats[(check.budget_metric, "mean")], stats[(check.metric, "mean")]
        ax.errorbar(
            x,
            y,
            xerr=stats[(check.budget_metric, "std")].fillna(0),
            yerr=stats[(check.metric, "std")].fillna(0),
            fmt="o-",
            color=color,
            capsize=3,
            label=arm.label,
        )
        for setting, xi, yi in zip(stats.index, x, y):
            ax.annotate(
                f"{check.by.split('.')[-1]}={setting:g}",
                (xi, yi),
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
            )
    ax.axvline(check.budget, color="gray", linestyle="--", linewidth=1, label=f"budget {check.budget:g}")
    ax.set_xlabel(f"mean {check.budget_metric}", fontsize=8)
    ax.set_ylabel(f"mean {check.metric}", fontsize=8)
    ax.legend(fontsize=7)


def claim_figure(result: ClaimResult) -> Figure:
    """The claim's figure (a panel per check), titled with the claim and its verdict."""
    checks = result.claim.checks
    cols = min(3, len(checks))
    rows = math.ceil(len(checks) / cols)
    width = max(4.2 * cols, 8.0)  # room for the claim's title above a single panel
    fig, axes = plt.subplots(rows, cols, figsize=(width, 3.6 * rows + 0.8), squeeze=False, layout="constrained")
    for ax, check, outcome in zip(axes.flat, checks, result.outcomes):
        if isinstance(check, Trend):
            _trend_panel(ax, check, result.frames)
        elif isinstance(check, BudgetCompare):
            _budget_panel(ax, check, result.frames)
        elif isinstance(check, Compare | Ratio | OneSample):
            _arms_panel(ax, list(check.arms), check.metric, result.frames)
        if isinstance(check, OneSample) and outcome.null is not None:  # the levels as resolved on these runs
            ax.axhline(outcome.null, color="gray", linestyle="--", linewidth=1)
            if outcome.claimed is not None and outcome.claimed != outcome.null:
                ax.axhline(outcome.claimed, color="gray", linestyle=":", linewidth=1)
        p = "" if outcome.p_value is None else f", p={outcome.p_value:.2g}"
        ax.set_title(
            textwrap.fill(check.name, WRAP) + f"\n{outcome.verdict}{p}",
            fontsize=8,
            color=COLORS.get(outcome.verdict, "black"),
        )
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(checks) :]:
        ax.axis("off")
    claim = result.claim
    fig.suptitle(
        f"{claim.id}: {textwrap.fill(claim.text, int(width * 13))}\nverdict: {result.verdict}",
        fontsize=10,
        color=COLORS.get(result.verdict, "black"),
    )
    return fig
