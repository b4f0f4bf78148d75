"""What a Hydra job does around ``run``: output dir, error reporting, exit codes.

Bad input (ConfigError) prints one line and, in a single run, exits with 2.
In a multirun every job records its own ``metrics.json`` (ok, diverged or
failed) and the sweep goes on; ``SweepSummary`` reports failures at the end.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from gsdefense.errors import ConfigError, DatasetNotFoundError
from gsdefense.run import record_failure, run

log = logging.getLogger("gsdefense")


def main_task(cfg: DictConfig) -> dict:
    hydra_cfg = HydraConfig.get()
    output_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    try:
        return run(cfg, output_dir=output_dir)
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
        metrics = record_failure(output_dir, err, cfg)
        log.error("run failed: %s\n%s", err, traceback.format_exc())
        if multirun:
            return metrics
        raise


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
