"""``hydra/sweeper=gsdefense`` (the default): Hydra's basic sweeper, with the whole grid checked before any job.

Before launching, every job's typed config is validated as its run will validate it, its folder is checked,
and ``dp=none`` jobs drop the ``dp.*`` overrides that do not apply to them (``gsdefense.grid``). A grid that
cannot run is one ``error:`` line naming the job and the field, and exit 2, before anything is written: no
sweep folder, no failed job, no finished result moved aside.

This module is imported whenever Hydra scans for plugins: it imports neither torch nor the rest of gsdefense
until a sweep starts (only ``gsdefense.resolvers``, which the configs' ``${gsdefense.unique:}`` needs).
"""

import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper, BasicSweeperConf
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

import gsdefense.resolvers  # noqa: F401 - registers ${gsdefense.unique:} wherever Hydra loads this project

log = logging.getLogger(__name__)


@dataclass
class GsdefenseSweeperConf(BasicSweeperConf):
    _target_: str = "hydra_plugins.gsdefense_sweeper.sweeper.GsdefenseSweeper"


ConfigStore.instance().store(group="hydra/sweeper", name="gsdefense", node=GsdefenseSweeperConf, provider="gsdefense")


class GsdefenseSweeper(BasicSweeper):
    def sweep(self, arguments: list[str]) -> Any:
        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        from gsdefense.errors import ConfigError
        from gsdefense.grid import sweep_jobs

        tic = time.perf_counter()
        try:
            asked, jobs = sweep_jobs(loader=self.hydra_context.config_loader, master=self.config,
                                     arguments=[*self._parse_config(), *arguments])  # fmt: skip
        except ConfigError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        log.debug("validated %d jobs in %.2f s", len(jobs), time.perf_counter() - tic)
        if len(jobs) < asked:
            log.info("dp=none jobs ignore dp.* overrides: %d jobs instead of %d", len(jobs), asked)
        self.overrides = list(self.split_overrides_to_chunks(jobs, self.max_batch_size))
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        returns: list[Sequence[Any]] = []
        initial_job_idx = 0
        while not self.is_done():
            batch = self.get_job_batch()
            results = self.launcher.launch(batch, initial_job_idx=initial_job_idx)
            for r in results:
                _ = r.return_value  # raises if the job failed, as Hydra's basic sweeper does
            initial_job_idx += len(batch)
            returns.append(results)
        return returns
