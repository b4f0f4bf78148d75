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
ADD_VANILLA = "add dp=dpsgd,none"
# What a line must never join across: each is a panel (or a row of panels) when it varies.
IDENTITY = ("attack.name", "dataset.name", "model.name")
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


def context(df: pd.DataFrame, keys: Sequence[str]) -> str:
    """``attack: label_flip, dataset: digits, model: mlp``: what the whole figure shows, for each of the attack,
    dataset and model that has one value and no panel title names."""
    parts = []
    for key in IDENTITY:
        if key in keys or key not in df.columns or df[key].nunique() != 1:
            continue
        parts.append(f"{short(key)}: {df[key].iloc[0]}")
    return ", ".join(parts)


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


def equals(values: pd.Series, value: Any) -> pd.Series:
    """``values == value`` that takes a tuple (``dataset.classes``) or a null as one value, never elementwise."""
    text = _key(value)
    return values.map(_key) == text


def _determined(df: pd.DataFrame, key: str, others: Sequence[str]) -> bool:
    # A key that follows from the others (attack.pattern_seed from attack.name) adds nothing to a facet title.
    if not others:
        return False
    return bool(df.groupby(list(others), dropna=False)[key].nunique(dropna=False).max() <= 1)


def facets(df: pd.DataFrame, used: Iterable[str], *, limit: int = 4) -> tuple[list[str], list[str]]:
    """(facet keys, fixed keys): settings varying in ``df`` that ``used`` does not plot.

    The attack, dataset and model (``IDENTITY``) are always facets when they vary: a line never joins two of them.
    A setting that follows from them (``attack.pattern_seed`` from ``attack.name``) is dropped. The other settings
    become facets too when all together form at most ``limit`` panels; otherwise each is fixed at one value
    (``slice_rest``, which the figure must name).
    """
    used = set(used) | set(DP_KEYS) | {"defense"}
    varying = [c for c in setting_columns(df, varying=True) if c not in used]
    identity = [k for k in IDENTITY if k in varying]
    keys = [c for c in varying if c not in identity]
    plotted = [c for c in used if c in df.columns]
    for key in list(keys):
        # dp.delta of vanilla runs is empty: it follows from dp.name, which the lines already show.
        if _determined(df, key, [*identity, *plotted, *(k for k in keys if k != key)]):
            keys.remove(key)
    if not keys or len(df[[*identity, *keys]].drop_duplicates()) <= limit:
        return [*identity, *keys], []
    return identity, keys


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
            counts = values.map(_key).value_counts()
            common = {_key(v): v for v in values if counts[_key(v)] == counts.max()}
            value = min(common.values(), key=_order)
            shown = value_text(value)
        df = df[equals(values, value)]
        notes.append(f"{short(key)} = {shown}")
    return df, ("at " + ", ".join(notes)) if notes else ""


def _key(value: Any) -> str:
    """One text per distinct setting value, whatever its Python or numpy type (0.4 and np.float64(0.4) agree)."""
    if isinstance(value, tuple):
        return repr(tuple(_key(v) for v in value))
    if pd.isna(value):
        return "<null>"
    if isinstance(value, int | float | np.number) and not isinstance(value, bool | np.bool_):
        return repr(float(value))
    return repr(value)


def value_text(value: Any) -> str:
    """A setting's value for a title: ``0.1``, ``badnets``, ``3, 4`` (a list), ``all`` (null: the default)."""
    if isinstance(value, tuple):
        return ", ".join(map(str, value))
    if pd.isna(value):
        return "all"
    return fmt(value) if isinstance(value, float) else str(value)


def facet_groups(df: pd.DataFrame, keys: Sequence[str]) -> list[tuple[str, pd.DataFrame]]:
    """(title, rows) per combination of ``keys``; one untitled group without keys.

    A panel of one dataset setting (``dataset.classes``) names the dataset too: figures over mixed datasets
    must say which one each panel shows.
    """
    if not keys:
        return [("", df)]
    out = []
    named = [*keys]
    if any(k.startswith("dataset.") for k in keys) and "dataset.name" not in keys and "dataset.name" in df.columns:
        named = ["dataset.name", *keys]
    # FashionMNIST-3/4 is dataset fashion_mnist with classes [3, 4]: its panels say so.
    subsets = (
        "dataset.classes" in df.columns
        and "dataset.classes" not in keys
        and df["dataset.classes"].map(_key).nunique() > 1
    )
    for part in _groups(df, keys):
        shown = [f"{short(k)}: {value_text(part[k].iloc[0])}" for k in named]
        if subsets and "dataset.name" in named and not _null(classes := part["dataset.classes"].iloc[0]):
            shown[named.index("dataset.name")] += f" (classes {value_text(classes)})"
        out.append((", ".join(shown), part))
    return out


def _null(value: Any) -> bool:
    return not isinstance(value, tuple) and bool(pd.isna(value))


def facet_panels(
    df: pd.DataFrame, keys: Sequence[str], rest: Sequence[str]
) -> tuple[list[tuple[str, pd.DataFrame]], str, pd.DataFrame]:
    """(title, rows) per panel (``facet_groups``), each with the settings of ``rest`` fixed within it
    (``slice_rest``: a panel's own largest poison ratio, its own most common value), the ``at …`` note they share
    (a note that differs between panels goes into their titles instead), and all rows shown."""
    groups = facet_groups(df, keys)
    sliced = [(group, *slice_rest(part, rest)) for group, part in groups]
    notes = {note for _, _, note in sliced}
    common = notes.pop() if len(notes) == 1 else ""
    out = [(", ".join(t for t in (group, "" if common else note) if t), part) for group, part, note in sliced]
    shown = pd.concat([part for _, part in out]) if out else df.iloc[0:0]
    return out, common, shown


def _order(value: Any) -> tuple:
    # Numbers numerically, then text, then tuples; null last.
    if not isinstance(value, tuple) and pd.isna(value):
        return (3, "")
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (0, float(value))
    return (2, str(value)) if isinstance(value, tuple) else (1, str(value))


def _groups(df: pd.DataFrame, keys: Sequence[str]) -> list[pd.DataFrame]:
    """The rows of each combination of ``keys``, in a stable order; a tuple or a null is one value like any other."""
    combos = df[list(keys)].map(_key).drop_duplicates()
    parts = []
    for combo in combos.itertuples(index=False):
        mask = np.ones(len(df), dtype=bool)
        for key, text in zip(keys, combo, strict=True):
            mask &= (df[key].map(_key) == text).to_numpy()
        parts.append(df[mask])
    return sorted(parts, key=lambda part: [_order(part[k].iloc[0]) for k in keys])


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


def vanilla_note(groups: Sequence[tuple[str, pd.DataFrame]]) -> str:
    """Why a figure that draws vanilla as a reference has none (in some panels): never promise a line not drawn."""
    missing = [title or "all" for title, part in groups if not (part["defense"] == VANILLA).any()]
    if not missing:
        return ""
    if len(missing) == len(groups):
        return f"no vanilla line: no run with dp=none in this sweep ({ADD_VANILLA})"
    return f"no vanilla line for {'; '.join(missing)}: no run with dp=none there ({ADD_VANILLA})"


def title(fig: Figure, text: str, *notes: str) -> None:
    """The figure title, and below it, in one wrapped line, what the reader must know (slices, n, averaging)."""
    note = "; ".join(n for n in notes if n)
    # Wrapped to the figure's width (≈ 11 characters per inch at 11 pt), at most 110 characters a line.
    chars = max(40, min(110, int(fig.get_figwidth() * 11)))
    fig.suptitle(text + ("\n" + "\n".join(textwrap.wrap(f"({note})", chars)) if note else ""), fontsize=11)
