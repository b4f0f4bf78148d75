"""One writer per run folder: an exclusive lock on ``<run dir>/.lock`` for the life of a run.

The lock is ``flock(2)`` on that file. Such a lock belongs to the open file, so the kernel drops it when the
process ends, however it ends: a crashed or killed run never leaves a lock that blocks the rerun that resumes it
(the file stays, with its last holder's details, and the next run simply takes it). The holder writes its pid,
host and start time into the file, so a second writer can say who holds the folder. A process may take the same
folder twice (Hydra's callback before the run, then the run itself); a lock is dropped by ``release``, or at the
end of the process.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path

from gsdefense.errors import FolderBusy, short_path

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"
_held: dict[Path, int] = {}  # resolved run folder -> the descriptor holding its lock


def _key(run_dir: str | Path) -> Path:
    return Path(os.path.abspath(run_dir))


def _describe(fd: int) -> str:
    """The holder's details as written into the lock file, or a generic phrase."""
    with contextlib.suppress(OSError, ValueError, UnicodeDecodeError):
        info = json.loads(os.pread(fd, 4096, 0).decode())
        return f"pid {info['pid']} on {info['host']}, started {info['started']}"
    return "another process"


def _open(path: Path) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)  # the umask applies
    except PermissionError:
        return os.open(path, os.O_RDONLY)  # another user's lock file: flock needs no write access


def holder(run_dir: str | Path) -> str | None:
    """Who holds ``run_dir``'s lock (their details), or None when no other live process does. Takes nothing."""
    key = _key(run_dir)
    path = key / LOCK_NAME
    if key in _held or not path.exists():
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return _describe(fd)
    except OSError:
        return None  # a filesystem without locks: nothing to report
    finally:
        os.close(fd)  # closing drops a lock taken here
    return None


def output_field() -> str:
    """The setting that names the current job's output folder, for messages."""
    with contextlib.suppress(Exception):
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            return "hydra.sweep.dir"
    return "hydra.run.dir"


def busy(run_dir: str | Path, who: str, *, field: str) -> FolderBusy:
    return FolderBusy(
        field,
        f"{short_path(run_dir)} is in use by another run ({who}).",
        f"wait for it to finish, or choose another {field}.",
    )


def acquire(run_dir: str | Path, *, field: str | None = None) -> None:
    """Hold ``run_dir``'s lock (creating the folder); FolderBusy naming the holder when another process has it."""
    key = _key(run_dir)
    if key in _held:
        return
    key.mkdir(parents=True, exist_ok=True)
    fd = _open(key / LOCK_NAME)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        who = _describe(fd)
        os.close(fd)
        raise busy(key, who, field=field or output_field()) from None
    except OSError as err:  # e.g. ENOLCK on a filesystem without locks: run unprotected rather than not at all
        os.close(fd)
        log.warning("cannot lock %s (%s); two runs writing there at once would not be noticed", key, err)
        return
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
    _held[key] = fd


def release(run_dir: str | Path) -> None:
    fd = _held.pop(_key(run_dir), None)
    if fd is not None:
        os.close(fd)


def release_all() -> None:
    """Drop every lock this process holds (a sequential sweep runs many jobs in one process)."""
    for key in list(_held):
        release(key)
