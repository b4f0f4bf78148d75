"""Atomic writes: a reader sees the old file or the complete new one, never half of one.

Files are created with the permissions the umask allows (``0666 & ~umask``), like any ``open()``: results and the
shared cache stay readable by collaborators on a shared filesystem (``mkstemp`` alone would make them 0600).
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import re
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any


def umask() -> int:
    """The process umask, read without changing it where Linux tells it (``/proc/self/status``)."""
    try:
        match = re.search(r"^Umask:\s*([0-7]+)", Path("/proc/self/status").read_text(), re.MULTILINE)
    except OSError:
        match = None
    if match:
        return int(match.group(1), 8)
    current = os.umask(0o022)  # elsewhere the only way to read it is to set it, then put it back
    os.umask(current)
    return current


def file_mode() -> int:
    """The mode ``open()`` would give a new file: ``0666`` less the umask."""
    return 0o666 & ~umask()


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN; a missing number is null
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def atomic_write(path: str | Path, write: Callable[[IO], None], *, mode: str = "w", fsync: bool = True) -> None:
    """Write via a temp file in the same directory, fsync (unless ``fsync=False``), then ``os.replace``.

    An OSError (a full disk surfaces in ``write``, ``flush`` or ``fsync``, where Python names no file) is raised
    again naming ``path``, so the one line a user sees says which file could not be written.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, mode) as fh:
            write(fh)
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        _discard(tmp)
        cause = os_error_in(err)
        if cause is not None and (cause is not err or err.filename is None) and cause.errno is not None:
            raise OSError(cause.errno, cause.strerror, str(path)) from err
        raise


def os_error_in(err: BaseException | None) -> OSError | None:
    """The OSError behind ``err``: itself, or one it was raised from (torch.save turns ENOSPC into a RuntimeError)."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, OSError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def _discard(tmp: str | None) -> None:
    if tmp is not None:
        with contextlib.suppress(OSError):  # the original error is the one to report
            Path(tmp).unlink(missing_ok=True)


def write_json(path: str | Path, data: dict) -> None:
    atomic_write(path, lambda fh: json.dump(_jsonable(data), fh, indent=2, sort_keys=False))


def write_csv(path: str | Path, rows: Iterable[dict]) -> None:
    rows = list(rows)
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]

    def write(fh: IO) -> None:
        writer = csv.DictWriter(fh, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)

    atomic_write(path, write)
