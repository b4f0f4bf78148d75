"""Shared checks and axis helpers for the figure modules."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, NullLocator

from gsdefense.analysis import add_defense, setting_columns

F = TypeVar("F", bound=Callable[..., Figure])
VANILLA = "vanilla"
VANILLA_COLOR = "black"
LABELS = {
    "attack.poison_ratio": "poison ratio",
    "dp.clip": "clip norm C",
    "dp.noise": "noise multiplier σ",
    "clean_acc": "clean accuracy",
    "asr": "attack success rate",
    "rad": "RAD",
    "rad_dp_matched": "RAD (DP-matched ref.)",
    "train_loss": "train loss",
    "epsilon": "ε",
    "epoch": "epoch",
}


def label(column: str) -> str:
    return LABELS.get(column, column)


def styled(func: F) -> F:
    """Draw inside one seaborn style so figures look alike without changing global rcParams."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Figure:
        with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.9):
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def require(df: pd.DataFrame, columns: Iterable[str], *, figure: str) -> None:
    """Raise a one-line ValueError naming the first column ``figure`` needs that has no data."""
    for col in columns:
        if col not in df.columns:
            raise ValueError(f"{figure}: no column {col!r} in the data")
        if df[col].isna().all():
            raise ValueError(f"{figure}: column {col!r} has no values")


def ok_runs(df: pd.DataFrame, *, figure: str) -> pd.DataFrame:
    """Rows with status ok (all rows when there is no status column), with a ``defense`` column."""
    if "status" in df.columns:
        df = df[df["status"] == "ok"]
    if df.empty:
        raise ValueError(f"{figure}: no runs with status ok")
    return df if "defense" in df.columns else add_defense(df)


def split_defense(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(vanilla rows, DP rows with a numeric clip and noise)."""
    vanilla = df["defense"] == VANILLA
    dp = df[~vanilla]
    for col in ("dp.clip", "dp.noise"):
        dp = dp[pd.to_numeric(dp[col], errors="coerce").notna()] if col in dp.columns else dp.iloc[0:0]
    return df[vanilla], dp


def present_metrics(df: pd.DataFrame, metrics: Sequence[str], *, figure: str) -> list[str]:
    """The metrics of ``metrics`` that have any value in ``df``; ValueError if none does."""
    found = [m for m in metrics if m in df.columns and df[m].notna().any()]
    if not found:
        raise ValueError(f"{figure}: none of the columns {list(metrics)} has values")
    return found


def averaged_note(df: pd.DataFrame, used: Iterable[str]) -> str:
    """Name the settings a figure silently averages over: those varying within one plotted point or line."""
    used = [c for c in dict.fromkeys([*used, "dp.name", "defense"]) if c in df.columns]
    candidates = [c for c in setting_columns(df, varying=True) if c not in used]
    if not candidates or df.empty:
        return ""
    # Attack-specific keys vary across attacks, not within one: only within-group variation is averaged.
    spread = (
        df.groupby(used, dropna=False)[candidates].nunique(dropna=False).max() if used else df[candidates].nunique()
    )
    left = [c for c in candidates if spread[c] > 1]
    shown = ", ".join(left[:4]) + (f" and {len(left) - 4} more" if len(left) > 4 else "")
    return f"mean over {shown}" if left else ""


def fmt(value: float) -> str:
    return f"{value:g}"


def value_axis(ax: plt.Axes, values: Iterable[float], *, axis: str = "x", log: bool = True) -> None:
    """Ticks at exactly the swept values; log scale, or symlog when 0 is among them (σ = 0)."""
    vals = sorted({float(v) for v in values if np.isfinite(v)})
    if log and vals and vals[0] >= 0:
        positive = [v for v in vals if v > 0]
        if vals[0] == 0 and positive:
            # Linear between 0 and the smallest positive value, log above: 0 gets its own tick.
            getattr(ax, f"set_{axis}scale")("symlog", linthresh=positive[0], linscale=0.5)
        elif vals[0] > 0 and vals[-1] / vals[0] > 3:
            getattr(ax, f"set_{axis}scale")("log")
    target = ax.xaxis if axis == "x" else ax.yaxis
    target.set_major_locator(FixedLocator(vals))
    target.set_minor_locator(NullLocator())
    getattr(ax, f"set_{axis}ticks")(vals, [fmt(v) for v in vals])


def palette(levels: Sequence[str], *, cmap: str = "viridis") -> dict[str, Any]:
    """Colours per level with vanilla always black, so vanilla reads as the baseline in every figure."""
    dp_levels = [lv for lv in levels if lv != VANILLA]
    colors = sns.color_palette(cmap, n_colors=max(len(dp_levels), 1))
    out: dict[str, Any] = dict(zip(dp_levels, colors, strict=False))
    if VANILLA in levels:
        out[VANILLA] = VANILLA_COLOR
    return out


def defense_order(levels: Iterable[str]) -> list[str]:
    """Vanilla first, then DP settings in numeric order of clip and noise."""
    levels = set(levels)

    def key(level: str) -> tuple:
        nums = [float(p.split("=")[1]) for p in level.split() if "=" in p]
        return (level != VANILLA, nums, level)

    return sorted(levels, key=key)


def title(fig: Figure, text: str, note: str = "") -> None:
    fig.suptitle(f"{text}\n({note})" if note else text, fontsize=11)
