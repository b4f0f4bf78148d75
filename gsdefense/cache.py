"""A content-addressed on-disk cache that many jobs may share at once.

An entry is keyed by a hash of everything that determines it (its *spec*). A
per-key file lock makes concurrent jobs compute an entry once; the others wait
and read it. Entries are written to a temp file and renamed, so a reader never
sees half of one, and a job killed mid-write leaves no entry at all.

Every entry stores the spec it was computed for. On reading, an entry is used
only if it loads, its stored spec equals the requested one, its values have the
expected types and are finite, and the caller's ``check`` accepts it; anything
else is recomputed (and overwritten) with a warning. A bad entry is never
trusted and never a crash that repeats on every rerun.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock

from gsdefense.io import atomic_write, file_mode, write_json
from gsdefense.paths import check_dir as check_dir  # re-exported: callers check the cache folder here

log = logging.getLogger(__name__)

#: Bump when the training code changes what a cached entry would contain.
CACHE_VERSION = 4  # 4: Poisson batches drawn as Binomial sizes + uniform subsets (DP references retrain)

Check = Callable[[Any], None]  # raises (any Exception) when an entry must not be used


class StaleEntry(ValueError):
    """A cache entry that loads but must not be used (wrong spec, type or value)."""


def canonical(spec: dict[str, Any]) -> str:
    """The spec as the JSON text it is hashed and stored as (sorted keys, non-JSON values as text)."""
    return json.dumps(spec, sort_keys=True, default=str)


def cache_key(kind: str, spec: dict[str, Any]) -> str:
    blob = json.dumps({"kind": kind, "version": CACHE_VERSION, "spec": json.loads(canonical(spec))}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def cached_entry(
    path: Path,
    load: Callable[[Path], Any],
    save: Callable[[Path, Any], None],
    compute: Callable[[], Any],
) -> tuple[Any, bool]:
    """The entry at ``path``, or ``compute()`` saved there, under a per-entry file lock; ``(entry, hit)``.

    ``load`` raises when the file is unreadable or fails validation; the entry is then recomputed.
    The building block of the typed caches below.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock", mode=file_mode()):  # collaborators sharing the cache can take it too
        if path.exists():
            try:
                return load(path), True
            except Exception as err:  # noqa: BLE001 - a corrupt or stale entry is recomputed, never trusted
                log.warning("cache entry %s cannot be used (%s); recomputing it", path, err)
        result = compute()
        save(path, result)
        return result, False


def noise_seed(key: str) -> int:
    """A DP noise seed derived from a run's or entry's key: distinct configs draw independent noise."""
    return int(hashlib.sha256(f"noise:{key}".encode()).hexdigest()[:15], 16)


def json_path(cache_dir: str | Path, kind: str, spec: dict[str, Any]) -> Path:
    return Path(cache_dir) / kind / f"{cache_key(kind, spec)}.json"


def _same_spec(stored: Any, spec: dict[str, Any]) -> None:
    if not isinstance(stored, str) or stored != canonical(spec):
        raise StaleEntry("it was computed for another spec")


def finite_numbers(entry: Any) -> None:
    """Raise StaleEntry unless every number in a JSON-like ``entry`` is finite."""
    if isinstance(entry, dict):
        for value in entry.values():
            finite_numbers(value)
    elif isinstance(entry, list):
        for value in entry:
            finite_numbers(value)
    elif isinstance(entry, float) and not math.isfinite(entry):
        raise StaleEntry("it holds a non-finite number")


def cached_json(
    cache_dir: str | Path, kind: str, spec: dict[str, Any], compute: Callable[[], dict], *, check: Check | None = None
) -> tuple[dict, bool]:
    """The cached JSON result for ``spec``, computing it under a lock if absent or invalid; ``(entry, hit)``."""

    def load(p: Path) -> dict:
        data = json.loads(p.read_text())
        if not isinstance(data, dict) or not isinstance(data.get("result"), dict):
            raise StaleEntry("it is not a {spec, result} object")
        _same_spec(data.get("spec_json"), spec)
        finite_numbers(data["result"])
        if check is not None:
            check(data["result"])
        return data["result"]

    def save(p: Path, result: dict) -> None:
        write_json(p, {"spec": json.loads(canonical(spec)), "spec_json": canonical(spec), "result": result})

    return cached_entry(json_path(cache_dir, kind, spec), load, save, compute)


def check_tensors(entry: Any, *, keys: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """``entry`` as a dict of finite tensors holding at least ``keys``; StaleEntry otherwise."""
    if not isinstance(entry, dict) or not all(isinstance(v, torch.Tensor) for v in entry.values()):
        raise StaleEntry("it is not a dict of tensors")
    missing = [k for k in keys if k not in entry]
    if missing:
        raise StaleEntry(f"it lacks {missing}")
    for name, value in entry.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise StaleEntry(f"{name} holds non-finite values")
    return entry


def load_tensor_entry(p: Path, spec: dict[str, Any]) -> dict[str, Any]:
    """A ``{spec_json, tensors, meta}`` file saved by ``save_tensor_entry``, checked against ``spec``."""
    data = torch.load(p, map_location="cpu", weights_only=True)
    if not isinstance(data, dict) or "tensors" not in data:
        raise StaleEntry("it is not a tensor entry")
    _same_spec(data.get("spec_json"), spec)
    check_tensors(data["tensors"])
    return data


def save_tensor_entry(p: Path, spec: dict[str, Any], tensors: dict[str, torch.Tensor], meta: str = "") -> None:
    payload = {"spec_json": canonical(spec), "tensors": {k: v.detach().cpu() for k, v in tensors.items()}, "meta": meta}
    atomic_write(p, lambda fh: torch.save(payload, fh), mode="wb")
    write_json(p.with_suffix(".json"), {"spec": json.loads(canonical(spec))})


def cached_tensors(
    cache_dir: str | Path,
    kind: str,
    spec: dict[str, Any],
    compute: Callable[[], dict[str, torch.Tensor]],
    *,
    check: Check | None = None,
) -> tuple[dict[str, torch.Tensor], bool]:
    """Like ``cached_json`` for a dict of tensors (model weights, triggers, poisons).

    Loaded with ``weights_only=True`` onto the CPU. ``check(tensors)`` may reject a loaded entry
    (e.g. a wrong shape); tensors are also required to be finite.
    """
    path = Path(cache_dir) / kind / f"{cache_key(kind, spec)}.pt"

    def load(p: Path) -> dict[str, torch.Tensor]:
        tensors = load_tensor_entry(p, spec)["tensors"]
        if check is not None:
            check(tensors)
        return tensors

    return cached_entry(path, load, lambda p, t: save_tensor_entry(p, spec, t), compute)
