"""What a Hydra job does around ``run``: output dir, error reporting, exit codes.

Bad input (ConfigError) prints one line and, in a single run, exits with 2.
In a multirun every job records its own ``metrics.json`` (ok, diverged or
failed) and the sweep goes on; ``SweepSummary`` reports failures at the end.
"""

from __future__ import annotations

import logging
import sys
import traceback
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from gsdefense.errors import ConfigError
from gsdefense.io import write_json
from gsdefense.run import failure_metrics, run

log = logging.getLogger("gsdefense")


def main_task(cfg: DictConfig) -> dict:
    hydra_cfg = HydraConfig.get()
    output_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    try:
        return run(cfg, output_dir=output_dir)
    except ConfigError as err:
        write_json(output_dir / "metrics.json", failure_metrics(err, cfg))
        log.error("invalid config: %s", err)
        if multirun:
            return {"status": "failed", "error": str(err)}
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except Exception as err:  # noqa: BLE001 - a sweep must outlive one bad job
        write_json(output_dir / "metrics.json", failure_metrics(err, cfg))
        log.error("run failed: %s\n%s", err, traceback.format_exc())
        if multirun:
            return {"status": "failed", "error": str(err)}
        raise
