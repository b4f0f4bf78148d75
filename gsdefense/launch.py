"""What a Hydra job does around ``run``: output dir, error reporting, exit codes.

Bad input (ConfigError) prints one line and, in a single run, exits with 2; so does a filesystem that cannot
take the run's files (full, read-only: ``errors.ENVIRONMENT_ERRNOS``), naming the folder's setting. In a
multirun every job records its own ``metrics.json`` (ok, diverged or failed) and the sweep goes on;
``SweepSummary`` reports failures at the end. A folder held by another live run is never written to.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sys
import traceback
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

import gsdefense.resolvers  # noqa: F401 - ${gsdefense.unique:} in conf/config.yaml
from gsdefense.errors import ENVIRONMENT_ERRNOS, ConfigError, DatasetNotFoundError, FolderBusy, environment_error
from gsdefense.io import os_error_in
from gsdefense.run import record_failure, run
from gsdefense.runlock import release_all

log = logging.getLogger("gsdefense")
# A full disk must not turn every log line into a "--- Logging error ---" traceback on the console.
logging.raiseExceptions = False


def main_task(cfg: DictConfig) -> dict:
    hydra_cfg = HydraConfig.get()
    output_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    try:
        return _task(cfg, output_dir=output_dir, multirun=multirun)
    finally:
        release_all()  # the basic launcher runs the next job in this process


def as_config_error(err: BaseException, cfg: DictConfig, *, output_dir: Path, multirun: bool) -> ConfigError | None:
    """An OSError of the environment (a full or read-only disk …) in the run's folder or the cache as the one line
    naming that folder's setting; None for anything else (a bug keeps its traceback)."""
    from gsdefense.paths import launch_path

    cause = os_error_in(err)
    if cause is None or cause.errno not in ENVIRONMENT_ERRNOS:
        return None
    where = Path(str(cause.filename)).absolute() if cause.filename else None
    folders = {"hydra.sweep.dir" if multirun else "hydra.run.dir": output_dir.absolute()}
    with contextlib.suppress(Exception):  # an unresolvable cache_dir failed long before
        folders["cache_dir"] = launch_path(str(cfg.cache_dir)).absolute()
    field = next((f for f, folder in folders.items() if where is not None and folder in where.parents), None)
    if field is None and (where is not None or cause.errno not in (errno.ENOSPC, errno.EDQUOT)):
        return None
    full = cause.errno in (errno.ENOSPC, errno.EDQUOT)
    fix = "free space there" if full else "make it writable"
    fix += " (or point it at another filesystem), then rerun the same command: it continues from its last checkpoint."
    return environment_error(cause, field=field or next(iter(folders)), fix=fix)


def _task(cfg: DictConfig, *, output_dir: Path, multirun: bool) -> dict:
    try:
        return run(cfg, output_dir=output_dir)
    except FolderBusy as err:  # another live run's folder: nothing may be written there, not even a failure
        if multirun:
            log.error("%s", err)
            return {"run_id": None, "status": "failed", "error": f"FolderBusy: {err}"}
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except ConfigError as err:
        metrics = record_failure(output_dir, err, cfg)
        kind = "data not found" if isinstance(err, DatasetNotFoundError) else "invalid config"
        if multirun:
            log.error("%s: %s", kind, err)
            return metrics
        print(f"error: {err}", file=sys.stderr)  # one line, once: no log line repeats it on the console
        sys.exit(2)
    except Exception as err:  # noqa: BLE001 - a sweep must outlive one bad job
        # (SystemExit and KeyboardInterrupt pass: submitit requeues a preempted job by raising SystemExit)
        if (line := as_config_error(err, cfg, output_dir=output_dir, multirun=multirun)) is not None:
            metrics = record_failure(output_dir, line, cfg)  # may fail too on a full disk: logged, not raised
            if multirun:
                log.error("%s", line)
                return metrics
            print(f"error: {line}", file=sys.stderr)
            sys.exit(2)
        metrics = record_failure(output_dir, err, cfg)
        log.error("run failed: %s\n%s", err, traceback.format_exc())
        if multirun:
            return metrics
        raise


CONFIG_DIR_FLAGS = ("--config-dir", "-cd", "--config-path", "-cp")


def config_dirs(argv: list[str]) -> list[tuple[str, str]]:
    """``(flag, folder)`` for each ``--config-dir``/``--config-path`` (or ``-cd``/``-cp``) on the command line."""
    out = []
    for i, arg in enumerate(argv):
        flag, _, value = arg.partition("=")
        if flag in CONFIG_DIR_FLAGS:
            value = value or (argv[i + 1] if i + 1 < len(argv) else "")
            if value:
                out.append((flag, value))
    return out


def check_config_dirs(argv: list[str]) -> None:
    """Every YAML file under a user's config folder parses to a mapping; else one line (Hydra would print an
    85-line traceback, and only once the file is used)."""
    import yaml
    from omegaconf import DictConfig, OmegaConf

    from gsdefense.errors import short_path

    for flag, folder in config_dirs(argv):
        for path in sorted(Path(folder).expanduser().rglob("*.y*ml")) if Path(folder).expanduser().is_dir() else []:
            fix = "correct the YAML syntax of that file (or move it out of the folder)."
            try:
                loaded = OmegaConf.load(path)
            except yaml.YAMLError as err:
                mark = getattr(err, "problem_mark", None)
                where = f" line {mark.line + 1} column {mark.column + 1}" if mark else ""
                problem = getattr(err, "problem", None) or " ".join(str(err).split())
                raise ConfigError(flag, f"{short_path(path)}{where}: {problem}.", fix) from None
            except Exception as err:  # noqa: BLE001 - unreadable files, bad encodings …
                raise ConfigError(flag, f"{short_path(path)} cannot be read ({' '.join(str(err).split())}).",
                                  fix) from None  # fmt: skip
            if path.stat().st_size and not isinstance(loaded, DictConfig):
                raise ConfigError(flag, f"{short_path(path)} is not a YAML mapping (key: value lines).", fix)


def exit_now(code: int | str | None) -> None:
    """Leave the process once everything is written: flush, close the logs, and skip the interpreter's
    teardown of torch's modules (~2 s per process, measured), which has nothing left to save."""
    if isinstance(code, str):
        print(code, file=sys.stderr)
    status = code if isinstance(code, int) else (0 if code is None else 1)
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(status)
