"""A content-addressed on-disk cache that many jobs may share at once.

An entry is keyed by a hash of everything that determines it. A per-key file
lock makes concurrent jobs compute an entry once; the others wait and read it.
Entries are written to a temp file and renamed, so a reader never sees half of
one, and a job killed mid-write leaves no entry at all.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock

from gsdefense.io import atomic_write, write_json

log = logging.getLogger(__name__)

#: Bump when the training code changes what a cached entry would contain.
CACHE_VERSION = 2  # 2: DP noise streams seeded per entry (noise_seed)


def cache_key(kind: str, spec: dict[str, Any]) -> str:
    blob = json.dumps({"kind": kind, "version": CACHE_VERSION, "spec": spec}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def cached_entry(
    path: Path, load: Callable[[Path], Any], save: Callable[[Path, Any], None], compute: Callable[[], Any]
) -> tuple[Any, bool]:
    """The entry at ``path``, or ``compute()`` saved there, under a per-entry file lock; ``(entry, hit)``.

    The building block of the typed caches below; use it directly for entries of another shape.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if path.exists():
            try:
                return load(path), True
            except Exception as err:  # noqa: BLE001 - a corrupt entry is recomputed, never trusted
                log.warning("cache entry %s is unreadable (%s); recomputing it", path, err)
        result = compute()
        save(path, result)
        return result, False


def noise_seed(key: str) -> int:
    """A DP noise seed derived from a run's or entry's key: distinct configs draw independent noise."""
    return int(hashlib.sha256(f"noise:{key}".encode()).hexdigest()[:15], 16)


def json_path(cache_dir: str | Path, kind: str, spec: dict[str, Any]) -> Path:
    return Path(cache_dir) / kind / f"{cache_key(kind, spec)}.json"


def cached_json(
    cache_dir: str | Path, kind: str, spec: dict[str, Any], compute: Callable[[], dict]
) -> tuple[dict, bool]:
    """The cached JSON result for ``spec``, computing it under a lock if absent.

    Returns ``(entry, hit)`` where ``hit`` says whether it came from disk.
    """
    path = json_path(cache_dir, kind, spec)
    return cached_entry(
        path,
        lambda p: json.loads(p.read_text())["result"],
        lambda p, result: write_json(p, {"spec": spec, "result": result}),
        compute,
    )


def cached_tensors(
    cache_dir: str | Path, kind: str, spec: dict[str, Any], compute: Callable[[], dict[str, torch.Tensor]]
) -> tuple[dict[str, torch.Tensor], bool]:
    """Like ``cached_json`` for a dict of tensors (model weights, triggers, poisons).

    Loaded with ``weights_only=True`` onto the CPU; the spec sits beside it as JSON.
    """
    path = Path(cache_dir) / kind / f"{cache_key(kind, spec)}.pt"

    def save(p: Path, tensors: dict[str, torch.Tensor]) -> None:
        atomic_write(p, lambda fh: torch.save({k: v.detach().cpu() for k, v in tensors.items()}, fh), mode="wb")
        write_json(p.with_suffix(".json"), {"spec": spec})

    return cached_entry(path, lambda p: torch.load(p, map_location="cpu", weights_only=True), save, compute)
