"""Which runs form a check's arm (``Arm``), and the levels a check compares its effect with (``Scaled``, ``Paper``).

A check reads the ok runs of its claim's sweeps (``Frames``: part name → ``load_runs`` rows with status ok, plus any
derived columns). Arms select rows by config values (``where``), never by folder names.

A level is a number, ``Scaled`` (a factor times an arm's mean: "a 2× reduction" is claimed = 0.5 · mean of the
vanilla arm), or ``Paper`` (a paper's number, which holds only for runs on the dataset it was measured on: on any
other dataset the check is direction-only, and the report says so).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

Frames = Mapping[str, pd.DataFrame]


@dataclass(frozen=True)
class Arm:
    """The ok runs of sweep ``part`` whose config matches ``where`` (numbers compared with a tolerance)."""

    part: str
    label: str
    where: Mapping[str, Any] = field(default_factory=dict)
    paper: float | None = None  # the paper's value of this arm's metric, drawn in the figure

    def rows(self, frames: Frames) -> pd.DataFrame:
        if self.part not in frames:
            return pd.DataFrame()
        df = frames[self.part]
        keep = np.ones(len(df), dtype=bool)
        for column, value in self.where.items():
            if column not in df:
                return df.iloc[0:0]
            col = df[column]
            if value is None:
                keep &= col.isna().to_numpy()
            elif isinstance(value, bool | str):
                keep &= (col == value).to_numpy()
            else:
                keep &= np.isclose(pd.to_numeric(col, errors="coerce").to_numpy(dtype=float), float(value))
        return df[keep]

    def pairs(self, frames: Frames, metric: str) -> tuple[list[float], list[object]]:
        """(finite values of ``metric``, the seed of each; None seeds when the runs have no seed column)."""
        rows = self.rows(frames)
        if metric not in rows:
            return [], []
        values = pd.to_numeric(rows[metric], errors="coerce")
        keep = np.isfinite(values.to_numpy(dtype=float))
        seeds = rows["seed"][keep].tolist() if "seed" in rows else [None] * int(keep.sum())
        return [float(v) for v in values[keep]], seeds

    def values(self, frames: Frames, metric: str) -> list[float]:
        return self.pairs(frames, metric)[0]


@dataclass(frozen=True)
class Scaled:
    """``factor`` × the mean of ``arm``'s metric: a null or claimed value relative to a baseline."""

    arm: str  # "high" or "low" (Compare), or the arm's label
    factor: float

    def value(self, means: Mapping[str, float]) -> float:
        return self.factor * means[self.arm]


@dataclass(frozen=True)
class Paper:
    """A level that is a paper's number (or a multiple of an arm's mean taken from one): it holds only where the
    check's runs are on ``dataset`` (``dataset_id``), the dataset of ``source``; elsewhere the check falls back to
    direction only."""

    level: float | Scaled
    dataset: str
    source: str  # e.g. "Fig. 4a"


Level = float | Scaled | Paper

NAMES = {
    "fashion_mnist_3_4": "FashionMNIST-3/4",
    "fashion_mnist": "FashionMNIST",
    "purchase100": "Purchase-100",
    "cifar10": "CIFAR-10",
    "breast_cancer": "breast_cancer",
    "digits": "digits",
}


def dataset_id(rows: pd.DataFrame) -> str | None:
    """``fashion_mnist_3_4`` for fashion_mnist with classes (3, 4), else ``dataset.name`` (None without runs)."""
    if rows.empty or "dataset.name" not in rows:
        return None
    name = str(rows["dataset.name"].iloc[0])
    classes = rows["dataset.classes"].iloc[0] if "dataset.classes" in rows else None
    if isinstance(classes, list | tuple | np.ndarray):
        ids = [str(int(c)) for c in classes]
    elif isinstance(classes, str):
        ids = re.findall(r"\d+", classes)
    else:
        ids = []
    return f"{name}_{'_'.join(ids)}" if ids else name


def display(dataset: str | None) -> str:
    return NAMES.get(dataset or "", dataset or "no runs")


def resolve(level: Level | None, means: Mapping[str, float], dataset: str | None) -> tuple[float | None, str]:
    """(the level's value, a note) for runs on ``dataset``; None (with the reason) where a ``Paper`` level's
    dataset is not the runs' own."""
    if level is None:
        return None, ""
    if isinstance(level, Paper):
        if dataset != level.dataset:
            why = f"{level.source}'s number is on {display(level.dataset)}, these runs on {display(dataset)}"
            return None, why
        level = level.level
    return (level.value(means) if isinstance(level, Scaled) else float(level)), ""
