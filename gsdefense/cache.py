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

from filelock import FileLock

from gsdefense.io import write_json

log = logging.getLogger(__name__)

#: Bump when the training code changes what a cached entry would contain.
CACHE_VERSION = 1


def cache_key(kind: str, spec: dict[str, Any]) -> str:
    blob = json.dumps({"kind": kind, "version": CACHE_VERSION, "spec": spec}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def cached_json(
    cache_dir: str | Path, kind: str, spec: dict[str, Any], compute: Callable[[], dict]
) -> tuple[dict, bool]:
    """The cached result for ``spec``, computing it under a lock if absent.

    Returns ``(entry, hit)`` where ``hit`` says whether it came from disk.
    """
    folder = Path(cache_dir) / kind
    folder.mkdir(parents=True, exist_ok=True)
    key = cache_key(kind, spec)
    path = folder / f"{key}.json"
    with FileLock(str(path) + ".lock"):
        if path.exists():
            try:
                return json.loads(path.read_text())["result"], True
            except (json.JSONDecodeError, KeyError):
                log.warning("cache entry %s is unreadable; recomputing it", path)
        result = compute()
        write_json(path, {"spec": spec, "result": result})
        return result, False
