"""Panels of a figure: which settings become panels (the attack, dataset and model always do, so a line never
joins two of them), which are fixed at one value instead, and the panels' titles."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from gsdefense.analysis import setting_columns
from gsdefense.plots._common import DP_KEYS, VANILLA, fmt, pct, short

# What a line must never join across: each is a panel (or a row of panels) when it varies.
IDENTITY = ("attack.name", "dataset.name", "model.name")
ADD_VANILLA = "add dp=dpsgd,none"


def context(df: pd.DataFrame, keys: Sequence[str]) -> str:
    """``attack: label_flip, dataset: digits, model: mlp``: what the whole figure shows, for each of the attack,
    dataset and model that has one value and no panel title names."""
    parts = []
    for key in IDENTITY:
        if key in keys or key not in df.columns or df[key].nunique() != 1:
            continue
        parts.append(f"{short(key)}: {df[key].iloc[0]}")
    return ", ".join(parts)


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


def vanilla_note(groups: Sequence[tuple[str, pd.DataFrame]]) -> str:
    """Why a figure that draws vanilla as a reference has none (in some panels): never promise a line not drawn."""
    missing = [title or "all" for title, part in groups if not (part["defense"] == VANILLA).any()]
    if not missing:
        return ""
    if len(missing) == len(groups):
        return f"no vanilla line: no run with dp=none in this sweep ({ADD_VANILLA})"
    return f"no vanilla line for {'; '.join(missing)}: no run with dp=none there ({ADD_VANILLA})"
