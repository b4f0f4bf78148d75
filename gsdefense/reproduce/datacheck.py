"""Before any sweep runs: is each claim's data on this machine? A claim's sweeps are composed as ``launch.py`` would
compose them and each distinct dataset is loaded once, with downloads off (``gsdefense.data.load_dataset``: the
same search and checks a run does), so a missing dataset is named by the loader's own one-line message (what is
missing, where it looked, how to get it) before anything trains.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

from omegaconf import OmegaConf

from gsdefense.errors import ConfigError
from gsdefense.reproduce.arms import display
from gsdefense.reproduce.runner import Sweep, compose_first


@dataclass(frozen=True)
class Missing:
    """A claim's missing data: the dataset's display name and the loader's one-line message."""

    dataset: str
    message: str

    def line(self, claim: str) -> str:
        return f"{claim}: needs {self.dataset}: {self.message}"


def _dataset_name(node) -> str:
    classes = node.get("classes")
    suffix = "_" + "_".join(str(c) for c in classes) if classes else ""
    return display(f"{node.get('name', '?')}{suffix}")


@functools.lru_cache(maxsize=32)
def _load(dataset_yaml: str, seed: int) -> str | None:
    """None when the dataset loads; else the loader's one-line message."""
    from gsdefense.data import load_dataset

    node = OmegaConf.create(dataset_yaml)
    if "download" in node:
        node.download = False  # checking never fetches: a missing dataset is reported, not downloaded
    try:
        load_dataset(node, seed=seed)
    except ConfigError as err:
        return str(err)
    except Exception as err:  # noqa: BLE001 - anything a loader raises is reported as one line
        return " ".join(f"{type(err).__name__}: {err}".split())
    return None


def missing(sweeps: Sequence[Sweep]) -> dict[str, Missing]:
    """Claim id → its first missing dataset, over ``sweeps`` (claims whose data all load are left out)."""
    out: dict[str, Missing] = {}
    for sweep in sweeps:
        if sweep.claim in out:
            continue
        cfg = compose_first(sweep)
        node = cfg.dataset
        problem = _load(OmegaConf.to_yaml(node, resolve=True), int(cfg.get("seed", 0)))
        if problem is not None:
            out[sweep.claim] = Missing(_dataset_name(node), problem)
    return out
