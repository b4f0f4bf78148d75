"""Paths a user gives — folders a run writes, files it reads — checked before anything is written.

Each problem is one ``ConfigError`` line naming the field: a name longer than the filesystem allows, a symlink
loop, a file where a folder should be, a folder that cannot be created or written, or a filesystem with less than
``MIN_FREE_BYTES`` free (a run needs room for its model, checkpoint and history; Hydra itself writes ``.hydra/``
before the run starts and would end in a traceback on a full disk).
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

from gsdefense.errors import ConfigError, short_path

# Below this a run cannot write even a small model and its checkpoint; Hydra's own files need ~20 KB.
MIN_FREE_BYTES = 2 * 2**20
SHORTER = "use a shorter path (at most 255 bytes per folder or file name, 4096 in all)."


def launch_path(path: str | Path) -> Path:
    """``path`` with ``~`` expanded; relative to the launch directory, also when ``hydra.job.chdir=true`` has
    moved the job into its output folder (a relative shared cache would otherwise land in every run folder)."""
    path = Path(path).expanduser()
    if path.is_absolute():
        return path
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized() and HydraConfig.get().job.get("chdir"):
            return Path(HydraConfig.get().runtime.cwd) / path
    except Exception:  # noqa: BLE001 - outside a Hydra job the working directory is the launch directory
        pass
    return path


def _limits(path: Path) -> tuple[int, int]:
    """(longest name, longest path) of the filesystem that would hold ``path`` (its nearest existing folder)."""
    existing = path
    while existing != existing.parent and not os.path.isdir(existing):
        existing = existing.parent
    try:
        return os.pathconf(existing, "PC_NAME_MAX"), os.pathconf(existing, "PC_PATH_MAX")
    except (OSError, ValueError, AttributeError):
        return 255, 4096


def check_path(path: str | Path, *, field: str) -> Path:
    """``path`` unless it cannot be used for a reason of the path itself: a name longer than its filesystem allows
    (also below a folder that does not exist yet), a symlink loop."""
    path = Path(path)
    name_max, path_max = _limits(path)
    if len(os.fsencode(str(path.absolute()))) >= path_max or any(len(os.fsencode(p)) > name_max for p in path.parts):
        raise ConfigError(field, f"{short_path(path)} is longer than the filesystem allows.", SHORTER)
    try:
        os.stat(path)
    except OSError as err:
        if err.errno == errno.ENAMETOOLONG:
            raise ConfigError(field, f"{short_path(path)} is longer than the filesystem allows.", SHORTER) from None
        if err.errno == errno.ELOOP:
            raise ConfigError(
                field, f"{short_path(path)} is a symlink loop (too many levels of links).", "point it at a real path."
            ) from None
    except ValueError as err:  # an embedded NUL byte
        raise ConfigError(field, f"is not a usable path ({err}).", "pass a plain path.") from None
    return path


def check_free(path: Path, *, field: str) -> None:
    """Raise unless the filesystem holding ``path`` (an existing folder) has ``MIN_FREE_BYTES`` free."""
    try:
        free = shutil.disk_usage(path).free
    except OSError:
        return  # some filesystems do not report; the writes themselves say it if space runs out
    if free < MIN_FREE_BYTES:
        raise ConfigError(
            field,
            f"the filesystem of {short_path(path)} is full ({free / 2**20:.1f} MiB free, a run needs "
            f"{MIN_FREE_BYTES / 2**20:.0f} MiB).",
            "free some space there, or point it at another filesystem.",
        )


def _writable(path: Path, *, field: str) -> None:
    try:
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise ConfigError(field, f"{short_path(path)} is not writable ({err.strerror or err}).",
                          "use a writable path.") from None  # fmt: skip


def check_dir(path: str | Path, *, field: str) -> Path:
    """``path`` as a usable directory (created if missing, writable, room to write), or a ConfigError naming
    ``field``. A relative path is taken relative to the launch directory (``launch_path``)."""
    path = check_path(launch_path(path), field=field)
    if path.exists() and not path.is_dir():
        raise ConfigError(field, f"{short_path(path)} exists and is not a directory.", "point it at a directory.")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(field, f"cannot create {short_path(path)} ({err.strerror or err}).",
                          "use a writable path.") from None  # fmt: skip
    _writable(path, field=field)
    check_free(path, field=field)
    return path


def check_creatable(path: str | Path, *, field: str) -> Path:
    """Like ``check_dir``, without creating anything: the nearest existing ancestor is a writable folder with
    room to write. For a sweep folder, checked before the grid is validated (a grid that cannot run touches
    nothing)."""
    path = check_path(launch_path(path), field=field)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "exists and is not a directory" if existing == path else f"is inside {short_path(existing)}, a file"
        raise ConfigError(field, f"{short_path(path)} {where}.", "point it at a directory.")
    _writable(existing, field=field)
    check_free(existing, field=field)
    return path
