"""A claim's **Setup** text, generated from its runs' own configs and metrics (never typed: the same words cannot
describe the embedded and the paper-scale runs).

Per part: the dataset and its sizes (one test image's worth of accuracy, so a reader knows how many images a RAD
step is), the model, the attack, the training schedule, DP, any defense or detector, and the seeds; a setting that
varies within the part is listed with all its values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from gsdefense.reproduce.arms import dataset_id, display

# (group label, config keys shown when the part's runs set them; the group's ``name`` leads)
GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("model", ("model.name", "model.depth")),
    ("attack", ("attack.name", "attack.poison_ratio", "attack.n_poisons", "attack.alpha", "attack.patch_size",
                "attack.target_class", "attack.mode", "attack.loss", "attack.percentile", "attack.n_targets",
                "attack.max_poisons", "attack.beta_scale")),
    ("training", ("optimizer.name", "optimizer.lr", "optimizer.momentum", "optimizer.batch_size", "optimizer.epochs")),
    ("scenario", ("scenario.name", "scenario.pretrain_epochs", "scenario.retrain_epochs", "scenario.retrain_lr",
                  "scenario.pretrain_private", "scenario.retrain_private")),
    ("DP", ("dp.name", "dp.clip", "dp.noise", "dp.noise_std")),
    ("defense", ("defense.name", "defense.percentile", "defense.slab")),
    ("detector", ("detector.name", "detector.max_epochs", "detector.mitigation")),
)  # fmt: skip
QUIET = {"scenario.name": "scratch", "defense.name": "none", "detector.name": "none"}


def _values(rows: pd.DataFrame, key: str) -> list[object]:
    if key not in rows:
        return []
    seen = []
    for v in rows[key]:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            continue
        if v not in seen:
            seen.append(v)
    return sorted(seen, key=str)


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _group(rows: pd.DataFrame, keys: Sequence[str]) -> str:
    if keys[0] == "optimizer.name" and _values(rows, "scenario.name") == ["retrain"]:
        keys = tuple(k for k in keys if k != "optimizer.epochs")  # the scenario's epochs are the schedule
    name = _values(rows, keys[0])
    if not name or (len(name) == 1 and QUIET.get(keys[0]) == name[0]):
        return ""
    if keys[0] == "dp.name" and name == ["none"]:
        return "no DP"
    parts = []
    for key in keys[1:]:
        values = _values(rows, key)
        if values:
            parts.append(f"{key.split('.', 1)[1]} {'/'.join(_fmt(v) for v in values)}")
    head = "/".join(map(str, name))
    return f"{head} ({', '.join(parts)})" if parts else head


def _seeds(rows: pd.DataFrame) -> str:
    seeds = sorted({int(s) for s in rows["seed"]}) if "seed" in rows else []
    if not seeds:
        return ""
    span = f"{seeds[0]}–{seeds[-1]}" if seeds == list(range(seeds[0], seeds[-1] + 1)) and len(seeds) > 2 else \
        ", ".join(map(str, seeds))  # fmt: skip
    return f"seed{'s' if len(seeds) > 1 else ''} {span}"


def _data(rows: pd.DataFrame) -> str:
    name = display(dataset_id(rows))
    clean = pd.to_numeric(rows.get("n_clean", pd.Series(dtype=float)), errors="coerce").dropna()
    test = pd.to_numeric(rows.get("n_test", pd.Series(dtype=float)), errors="coerce").dropna()
    sizes = []
    if len(clean):
        sizes.append(f"{int(clean.median()):,} clean training")
    if len(test):
        n = int(test.iloc[0])
        sizes.append(f"{n:,} test images: one image is {1 / n:.2g} of accuracy")
    return f"{name} ({'; '.join(sizes)})" if sizes else name


def part_setup(name: str, rows: pd.DataFrame) -> str:
    """One part's setup line from its ok runs (empty when it has none)."""
    if rows.empty:
        return ""
    groups = [g for g in (_group(rows, keys) for _, keys in GROUPS) if g]
    runs = f"{len(rows)} run{'' if len(rows) == 1 else 's'}"
    seeds = f"; {_seeds(rows)}" if "seed" in rows else ""
    return f"`{name}` ({runs}): {_data(rows)}; " + "; ".join(groups) + seeds + "."
