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

from gsdefense.analysis import add_defense, setting_columns

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
    "rad_best": "RAD (best epochs, Hong's code)",
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


def rad_metric(df: pd.DataFrame) -> str:
    """The RAD a figure plots: ``rad_best`` when every run asks for it (``rad_definition: best``, the Hong
    presets, as Hong's ``do_ipoisoning.py`` reports best epochs) and has it, else ``rad`` (final epochs)."""
    column = "config.rad_definition"
    if column in df and len(df) and (df[column] == "best").all() and "rad_best" in df and df["rad_best"].notna().any():
        return "rad_best"
    return "rad"


def label(column: str) -> str:
    return LABELS.get(column, column)


def short(column: str) -> str:
    return SHORT.get(column, column)


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
    return df if "defense" in df.columns else add_defense(df)


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


def context(df: pd.DataFrame, keys: Sequence[str]) -> str:
    """``attack: label_flip`` when the figure has one attack and no panel says so."""
    if "attack.name" in keys or "attack.name" not in df.columns or df["attack.name"].nunique() != 1:
        return ""
    return f"attack: {df['attack.name'].iloc[0]}"


def _determined(df: pd.DataFrame, key: str, others: Sequence[str]) -> bool:
    # A key that follows from the others (attack.mode from attack.name) adds nothing to a facet title.
    if not others:
        return False
    return bool(df.groupby(list(others), dropna=False)[key].nunique(dropna=False).max() <= 1)


def facets(df: pd.DataFrame, used: Iterable[str], *, limit: int = 4) -> tuple[list[str], list[str]]:
    """(facet keys, pooled keys): settings varying in ``df`` that ``used`` does not plot.

    They become panels when they form at most ``limit`` combinations; otherwise only ``attack.name`` does and the
    rest is averaged over (and must be named in the figure).
    """
    used = set(used) | set(DP_KEYS) | {"defense"}
    keys = [c for c in setting_columns(df, varying=True) if c not in used]
    plotted = [c for c in used if c in df.columns]
    for key in list(keys):
        # dp.delta of vanilla runs is empty: it follows from dp.name, which the lines already show.
        if _determined(df, key, [*plotted, *(k for k in keys if k != key)]):
            keys.remove(key)
    if not keys or len(df[keys].drop_duplicates()) <= limit:
        return keys, []
    first = [k for k in keys if k == "attack.name"]
    return first, [k for k in keys if k not in first]


def slice_rest(df: pd.DataFrame, rest: Sequence[str]) -> tuple[pd.DataFrame, str]:
    """Fix each setting of ``rest`` at one value instead of averaging over it; returns (rows, ``at …`` note).

    The poison ratio is fixed at its largest value (the strongest attack, as Hong et al. Figs. 4c/f use 40 %),
    anything else at its most common value (ties: the first in sort order).
    """
    notes = []
    for key in rest:
        values = df[key]
        if key == "attack.poison_ratio":
            value = values.max()
            shown = pct(value)
        else:
            counts = values.value_counts(dropna=False, sort=False).sort_index()
            value = counts.idxmax()
            shown = str(value)
        df = df[values.isna()] if pd.isna(value) else df[values == value]
        notes.append(f"{short(key)} = {shown}")
    return df, ("at " + ", ".join(notes)) if notes else ""


def facet_groups(df: pd.DataFrame, keys: Sequence[str]) -> list[tuple[str, pd.DataFrame]]:
    """(title, rows) per combination of ``keys``; one untitled group without keys."""
    if not keys:
        return [("", df)]
    out = []
    for values, part in df.groupby(list(keys), dropna=False, sort=True):
        values = values if isinstance(values, tuple) else (values,)
        shown = [f"{short(k)}: {v}" for k, v in zip(keys, values, strict=True) if not pd.isna(v)]
        out.append((", ".join(shown), part))
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
    fig.suptitle(text + ("\n" + "\n".join(textwrap.wrap(f"({note})", 100)) if note else ""), fontsize=11)
