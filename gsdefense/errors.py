"""Errors that reach the user as one readable line, never as a traceback."""

from __future__ import annotations

import errno

# OSErrors that are the environment's, not a bug's: a full, read-only or unreachable filesystem, a bad path.
ENVIRONMENT_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENAMETOOLONG, errno.ELOOP, errno.EIO}
)


class ConfigError(ValueError):
    """Bad user input: names the offending field and how to fix it.

    Raised before any training starts; ``launch.py`` prints it and exits with 2.
    """

    def __init__(self, field: str, problem: str, fix: str | None = None) -> None:
        self.field = field
        self.problem = problem
        self.fix = fix
        msg = f"{field}: {problem}"
        if fix:
            msg += f" Fix: {fix}"
        super().__init__(msg)


class DatasetNotFoundError(ConfigError):
    """A dataset's files are not on disk and could not be downloaded."""


class FolderBusy(ConfigError):
    """Another live run holds the output folder's lock: nothing may be written there."""


def one_line(err: BaseException, limit: int = 300) -> str:
    """An exception's message on one line, without OmegaConf's ``full_key: … object_type=…`` trailer."""
    text = " ".join(str(err).split("full_key:")[0].split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def short_path(path: object, limit: int = 80) -> str:
    """A path for a one-line message: an absurdly long one is cut in the middle."""
    text = str(path)
    return text if len(text) <= limit else f"{text[: limit // 2]}…{text[-limit // 2 :]}"


def environment_error(err: OSError, *, field: str, fix: str) -> ConfigError:
    """An OSError of the environment (``ENVIRONMENT_ERRNOS``) as the one-line error naming ``field``."""
    reason = err.strerror or type(err).__name__
    where = f" {short_path(err.filename)}" if err.filename else ""
    verb = "write" if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS) else "use"
    return ConfigError(field, f"cannot {verb}{where} ({reason}).", fix)
