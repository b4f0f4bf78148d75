"""A run folder holds the outputs of one config, and a finished result is never destroyed.

Rules, applied by ``claim`` before a run writes anything:

* ``identity.json`` (written first) names the config (``run_id`` and the typed
  config) that every other output in the folder belongs to.
* A folder that holds outputs of another config (another ``run_id``, or a
  config that fails validation) has them moved, whole, to
  ``superseded/<run_id>-<time>/`` before the new run writes. So one config's
  metrics never sit under another config's ``.hydra/config.yaml``, and a bad
  rerun (a typo in an override) cannot overwrite a finished result.
* With ``resume: true`` a complete ``status: ok`` result of this config is kept
  and the run is skipped; one found in ``superseded/`` is moved back (rerunning
  the right command after a wrong one restores the results in seconds).
* With ``resume: false`` an ok result of this config is moved aside too, so that
  a failed recomputation cannot destroy it.

The folder is locked for the life of the run (``gsdefense.runlock``): a second writer is refused, naming the
holder, before it moves or writes anything.

Only the files runs write (``OUTPUT_PATTERNS``) are ever moved: Hydra's ``.hydra/`` folder, the job's
``*.log`` and anything else in the folder stay.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from gsdefense.errors import ConfigError
from gsdefense.io import write_json
from gsdefense.runlock import acquire

log = logging.getLogger(__name__)

IDENTITY = "identity.json"
METRICS = "metrics.json"
SUPERSEDED = "superseded"
#: What runs write into their folder (every writer uses one of these names); nothing else is ever moved.
OUTPUT_PATTERNS = (
    IDENTITY,
    METRICS,
    "history.csv",
    "model.pt",
    "checkpoint.pt",
    "mextracts_epoch.csv",
    "aextracts_epoch.csv",
    "telemetry.csv",
    "targets.csv",
    "neural_cleanse*",
    "nc_label_*.png",
    "poisons.csv",
)


def outputs(run_dir: Path) -> list[Path]:
    """The files a run wrote into ``run_dir`` (not Hydra's ``.hydra/`` and log, not anything else a user put there)."""
    if not run_dir.is_dir():
        return []
    return sorted({p for pattern in OUTPUT_PATTERNS for p in run_dir.glob(pattern)})


def read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):  # RecursionError: absurdly nested JSON
        return None
    return data if isinstance(data, dict) else None


def owner(run_dir: Path) -> str | None:
    """The run_id the folder's outputs belong to (identity.json, else metrics.json), or None if unknown."""
    for name in (IDENTITY, METRICS):
        data = read_json(run_dir / name)
        if data is not None and isinstance(data.get("run_id"), str):
            return data["run_id"]
    return None


def finished(run_dir: Path, ident: str) -> dict | None:
    """The metrics of a complete, successful run of ``ident`` in ``run_dir``, if any."""
    metrics = read_json(run_dir / METRICS)
    if metrics is None or metrics.get("status") != "ok" or metrics.get("run_id") != ident:
        return None
    return metrics


def supersede(run_dir: Path, *, why: str) -> Path | None:
    """Move every output of ``run_dir`` into ``superseded/<owner>-<time>/``; returns that folder (None if empty)."""
    files = outputs(run_dir)
    if not files:
        return None
    target = run_dir / SUPERSEDED / f"{owner(run_dir) or 'unknown'}-{time.strftime('%Y%m%d-%H%M%S')}"
    suffix = 1
    while target.exists():
        target, suffix = target.with_name(f"{target.name.rsplit('~', 1)[0]}~{suffix}"), suffix + 1
    try:
        target.mkdir(parents=True)
        for path in files:
            shutil.move(str(path), target / path.name)
    except OSError as err:
        raise ConfigError(
            "output dir", f"cannot move the earlier outputs of {run_dir} aside ({err}).", "check its permissions."
        ) from None
    log.warning("moved the outputs of another run out of %s into %s (%s)", run_dir, target, why)
    return target


def restore(run_dir: Path, ident: str) -> dict | None:
    """Move a complete ok result of ``ident`` back from ``superseded/`` (the newest); its metrics, or None."""
    candidates = sorted((run_dir / SUPERSEDED).glob(f"{ident}-*"), reverse=True)
    for folder in candidates:
        metrics = finished(folder, ident)
        if metrics is None:
            continue
        supersede(run_dir, why="restoring an earlier result of this config")
        try:
            for path in outputs(folder):
                shutil.move(str(path), run_dir / path.name)
        except OSError as err:
            raise ConfigError(
                "output dir", f"cannot restore {folder} into {run_dir} ({err}).", "check their permissions."
            ) from None
        with contextlib.suppress(OSError):  # files a run never writes stay where they were, with their folder
            folder.rmdir()
        log.info("restored the finished result of run %s from %s", ident, folder)
        return metrics
    return None


def claim(run_dir: Path, ident: str | None, *, resume: bool, config: dict[str, Any] | None = None) -> dict | None:
    """Make ``run_dir`` hold only outputs of ``ident`` (None: a config that failed validation).

    Returns the metrics of a finished result of ``ident`` when ``resume`` is on and one exists (the run is
    then complete); otherwise records ``identity.json`` and returns None. FolderBusy when another run holds it.
    """
    acquire(run_dir)
    current = owner(run_dir)
    if outputs(run_dir) and current != ident:
        supersede(run_dir, why=f"they belong to run {current or 'unknown'}, this is {ident or 'an invalid config'}")
    elif ident is not None and (done := finished(run_dir, ident)) is not None:
        if resume:
            return done
        supersede(run_dir, why="resume=false recomputes; the finished result is kept aside")
    if ident is None:
        return None
    if resume and (restored := restore(run_dir, ident)) is not None:
        return restored
    write_json(run_dir / IDENTITY, {"run_id": ident, "config": config})
    return None


def claim_for_failure(run_dir: Path, ident: str | None) -> bool:
    """Prepare ``run_dir`` for a failed run's metrics.json; False when a finished result of ``ident`` is there.

    Outputs of another config are moved aside; a finished result is never replaced by a failure record.
    FolderBusy when another live run holds the folder: its files are not touched.
    """
    acquire(run_dir)
    if outputs(run_dir) and owner(run_dir) != ident:
        supersede(run_dir, why=f"they belong to run {owner(run_dir) or 'unknown'}; this run failed")
    elif ident is not None and finished(run_dir, ident) is not None:
        return False
    return True
