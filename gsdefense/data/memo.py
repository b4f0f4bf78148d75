"""Datasets loaded once per process: the jobs a sweep runs in one process (a ``hydra/launcher=parallel`` worker,
or the basic launcher's one process) read and decode each dataset once.

A dataset is keyed by its validated config, the seed and the size and mtime of the files under any path the
config names (``data_dir``, ``path``: a file replaced on disk is read again); each call returns a copy of the
cached tensors, so a job that changes its data in place cannot touch the next job's. Loading FashionMNIST
costs ~1 s per job; a copy ~0.05 s.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from gsdefense.data import DATASETS, load_dataset
from gsdefense.data.bundle import TENSORS, DataBundle

KEEP = 2  # datasets kept per process (a sweep seldom mixes more; each costs its size in memory)
_CACHE: dict[str, DataBundle] = {}


def _files(value: Any, limit: int = 500) -> list:
    """(path, size, mtime) of the files at or under ``value`` when it names an existing path (at most ``limit``)."""
    if not isinstance(value, str) or not value or not os.path.exists(value):
        return []
    root = Path(value).expanduser()
    found = [root] if root.is_file() else (p for p in root.rglob("*") if p.is_file())
    out = []
    for path in found:
        stat = path.stat()
        out.append((str(path), stat.st_size, stat.st_mtime_ns))
        if len(out) >= limit:
            break
    return sorted(out)


def _key(node: Any, seed: int) -> str:
    cfg = dataclasses.asdict(DATASETS.config(node))
    files = {k: _files(v) for k, v in cfg.items() if isinstance(v, str)}
    return json.dumps({"dataset": cfg, "seed": seed, "files": files}, sort_keys=True, default=str)


def _copy(bundle: DataBundle) -> DataBundle:
    return dataclasses.replace(
        bundle, **{k: getattr(bundle, k).clone() for k in TENSORS if getattr(bundle, k) is not None}
    )


def load_dataset_cached(node: Any, *, seed: int) -> DataBundle:
    """``load_dataset(node, seed=seed)``, read once per process (a copy each call)."""
    key = _key(node, seed)
    if key not in _CACHE:
        bundle = load_dataset(node, seed=seed)  # raises before anything is cached
        while len(_CACHE) >= KEEP:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = bundle
    return _copy(_CACHE[key])
