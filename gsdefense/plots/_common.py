"""Shared checks, labels, per-seed aggregation and faceting for the figure modules."""

from __future__ import annotations

import functools
import textwrap
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from gsdefense.analysis import add_defense

F = TypeVar("F", bound=Callable[..., Figure])
VANILLA = "vanilla"
DP_KEYS = ("dp.name", "dp.clip", "dp.noise")
LABELS = {
    "attack.poison_ratio": "poison ratio",
    "dp.clip": "clip norm C",
    "dp.noise": "noise multiplier σ",
    "clean_acc": "clean accuracy",
    "asr": "attack success rate",
    "rad": "RAD (final epoch)",
    "rad_best": "RAD (best epochs)",
    "rad_early_stop": "RAD (Hong's code: best epochs, ≥ 0)",
    "rad_dp_matched": "RAD (DP-matched ref.)",
    "rad_dp_matched_best": "RAD (DP-matched ref., best epochs)",
    "train_loss": "train loss",
    "epsilon": "ε",
    "epoch": "epoch",
}
# Facet titles: the group's name instead of its dotted column.
SHORT = {
    "attack.name": "attack",
    "attack.poison_ratio": "poison ratio",
    "model.name": "model",
    "dataset.name": "dataset",
    "scenario.name": "scenario",
    "dp.clip": "C",
    "dp.noise": "σ",
}


#: ``rad_definition`` → the metrics.json column a figure plots
RAD_COLUMNS = {"final": "rad", "best": "rad_best", "early_stop": "rad_early_stop"}


def rad_metric(df: pd.DataFrame) -> str:
    """The RAD a figure plots: the column of the runs' ``rad_definition`` when every run asks for the same one and
    has it (``best``: ``rad_best``; ``early_stop``: ``rad_early_stop``, Hong's ``do_ipoisoning.py``, which the Hong
    Fig. 4 presets set), else ``rad`` (final epochs)."""
    column = "config.rad_definition"
    if column not in df or not len(df) or df[column].nunique(dropna=False) != 1:
        return "rad"
    wanted = RAD_COLUMNS.get(str(df[column].iloc[0]), "rad")
    return wanted if wanted in df and df[wanted].notna().any() else "rad"


def label(column: str) -> str:
    return LABELS.get(column, column)


def short(column: str) -> str:
    """A facet title's name for a setting: ``attack``, ``C``, or the last part of its dotted name."""
    return SHORT.get(column, column.rsplit(".", 1)[-1])


def fmt(value: float) -> str:
    return f"{value:g}"


def pct(value: float) -> str:
    """A ratio as a percentage: 0.0005 → 0.05%, 0.1 → 10%."""
    return f"{100 * value:.6g}%"


def styled(func: F) -> F:
    """Draw inside one seaborn style so figures look alike without changing global rcParams."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Figure:
        with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.9):
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def require(df: pd.DataFrame, columns: Iterable[str], *, figure: str, hint: str | None = None) -> None:
    """Raise a one-line ValueError naming the first column ``figure`` needs that has no data.

    ``hint`` says in the user's terms what a sweep lacks when these columns are empty (e.g. which option writes
    them); it leads the message and the column follows in brackets.
    """
    for col in columns:
        problem = f"no column {col!r} in the data" if col not in df.columns else None
        if problem is None and df[col].isna().all():
            problem = f"column {col!r} has no values"
        if problem:
            raise ValueError(f"{figure}: {hint} ({problem})" if hint else f"{figure}: {problem}")


def ok_runs(df: pd.DataFrame, *, figure: str) -> pd.DataFrame:
    """Rows with status ok, with a ``defense`` column.

    Every other status is left out: ``failed``/``missing`` have no numbers, ``stale`` numbers belong to another
    config, ``invalid`` ones could not be read, and ``diverged`` runs are not a model to evaluate.
    """
    if "status" in df.columns:
        df = df[df["status"] == "ok"]
    if df.empty:
        raise ValueError(f"{figure}: no runs with status ok")
    return hashable(df if "defense" in df.columns else add_defense(df))


def split_defense(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(vanilla rows, DP rows with a numeric clip and noise)."""
    vanilla = df["defense"] == VANILLA
    dp = df[~vanilla]
    for col in ("dp.clip", "dp.noise"):
        dp = dp[pd.to_numeric(dp[col], errors="coerce").notna()] if col in dp.columns else dp.iloc[0:0]
    if not dp.empty:
        dp = dp.assign(**{c: pd.to_numeric(dp[c]).astype(float) for c in ("dp.clip", "dp.noise")})
    return df[vanilla], dp


def present_metrics(df: pd.DataFrame, metrics: Sequence[str], *, figure: str) -> list[str]:
    """The metrics of ``metrics`` that have any value in ``df``; ValueError if none does."""
    found = [m for m in metrics if m in df.columns and df[m].notna().any()]
    if not found:
        raise ValueError(f"{figure}: none of the columns {list(metrics)} has values")
    return found


def seed_stats(df: pd.DataFrame, keys: Sequence[str], column: str) -> pd.DataFrame:
    """``keys`` + mean, sd and n of ``column`` per group: one point of a figure, over its seeds."""
    values = pd.to_numeric(df[column], errors="coerce")
    frame = df[list(keys)].assign(_v=values).dropna(subset=["_v"])
    stats = frame.groupby(list(keys), dropna=False, sort=True)["_v"].agg(mean="mean", sd="std", n="count")
    return stats.reset_index()


def spread_note(n: Iterable[int], *, sd: bool = True) -> str:
    """What a point (and its bar) is: ``mean ± sd over 3 seeds``, ``mean over 2–3 seeds``, or one run."""
    counts = [int(v) for v in n]
    if not counts:
        return ""
    lo, hi = min(counts), max(counts)
    if hi == 1:
        return "one run per point" + (", no error bars" if sd else "")
    return f"mean{' ± sd' if sd else ''} over {lo if lo == hi else f'{lo}–{hi}'} seeds"


def hashable(df: pd.DataFrame) -> pd.DataFrame:
    """Lists in object columns (``dataset.classes`` from a frame built by hand or read back from Parquet) become
    tuples, so that they can be grouped and compared like any other setting."""
    out = df
    for col in df.columns:
        if df[col].dtype == object and df[col].map(lambda v: isinstance(v, list | np.ndarray)).any():
            if out is df:
                out = df.copy()
            out[col] = df[col].map(lambda v: tuple(v) if isinstance(v, list | np.ndarray) else v)
    return out


def dp_line_label(clip: float, noise: float, *, clips: int, noises: int) -> str:
    """``C=4``, ``σ=0.001`` or ``C=4, σ=0.001``: only what differs between the lines."""
    parts = [f"C={fmt(clip)}"] if clips > 1 or noises == 1 else []
    parts += [f"σ={fmt(noise)}"] if noises > 1 else []
    return ", ".join(parts)


def defense_order(levels: Iterable[str]) -> list[str]:
    """Vanilla first, then DP settings in numeric order of their numbers (clip, then noise)."""

    def key(level: str) -> tuple:
        nums = []
        for part in level.replace(",", " ").split():
            if "=" in part:
                try:
                    nums.append(float(part.split("=")[1]))
                except ValueError:
                    nums.append(np.inf)
        return (level != VANILLA, nums, level)

    return sorted(set(levels), key=key)


def title(fig: Figure, text: str, *notes: str) -> None:
    """The figure title, and below it, in one wrapped line, what the reader must know (slices, n, averaging)."""
    note = "; ".join(n for n in notes if n)
    # Wrapped to the figure's width (≈ 11 characters per inch at 11 pt), at most 110 characters a line.
    chars = max(40, min(110, int(fig.get_figwidth() * 11)))
    fig.suptitle(text + ("\n" + "\n".join(textwrap.wrap(f"({note})", chars)) if note else ""), fontsize=11)
