"""``hydra/launcher=parallel`` (the default): a multirun's jobs on every core, in a pool of worker processes.

``workers`` (null: one per usable core, at most one per job, and no more than the available memory holds at
``mem_per_worker_gb`` each; 1: one job after another in this process, as Hydra's basic launcher) worker
processes each run one job at a time with one thread (``threads: 1``, the default). Workers are forked from a
server that has already imported gsdefense, torch and Hydra, and live for the whole sweep: start-up and imports
are paid once per worker, and a worker keeps the datasets it loaded for its next jobs (``gsdefense.data.memo``).

A job runs in its worker exactly as the basic launcher runs it: its config is composed there and Hydra's
``run_job`` gives it its folder, ``.hydra/``, log file and callbacks. Every job seeds what it draws from its own
config, so the results are the basic launcher's (``tests/test_parallel.py``); they come back in job order.

Stopping: on SIGTERM or SIGINT the launcher kills its workers and exits (143 / 130), and a worker whose parent
is gone is killed by the kernel (Linux ``PR_SET_PDEATHSIG``), so no job trains on as an orphan.
``hydra/launcher=fused`` runs its groups on the same pool (``WorkerPool``).

Its settings are ``conf/hydra/launcher/parallel.yaml``. This module is imported whenever Hydra scans for plugins
(without ``from __future__ import annotations``, as the other plugins): it imports neither torch nor gsdefense.
"""

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, configure_log, filter_overrides, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

log = logging.getLogger(__name__)


class ParallelLauncher(Launcher):
    def __init__(self, workers: int | None = None, mem_per_worker_gb: float = 2.0) -> None:
        self.workers, self.mem_per_worker_gb = workers, mem_per_worker_gb
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def pool(self, jobs: int) -> Any:
        """A ``gsdefense.workers.WorkerPool`` for ``jobs`` jobs, or None when one worker is all there is."""
        from gsdefense.workers import WorkerPool, uses_cuda, worker_count

        workers = worker_count(self.workers, jobs, mem_per_worker_gb=self.mem_per_worker_gb,
                               cuda=uses_cuda(self.config))  # fmt: skip
        if workers == 1:
            return None
        return WorkerPool(workers, hydra_context=self.hydra_context, task_function=self.task_function,
                          config=self.config)  # fmt: skip

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        setup_globals()
        assert self.config is not None and self.hydra_context is not None and self.task_function is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        indices = range(initial_job_idx, initial_job_idx + len(job_overrides))
        pool = self.pool(len(job_overrides))
        workers = pool.executor._max_workers if pool is not None else 1
        log.info("Launching %d jobs on %d worker%s", len(job_overrides), workers, "s" if workers > 1 else "")
        for idx, overrides in zip(indices, job_overrides):
            log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
        if pool is None:
            return [self._here(overrides, idx) for idx, overrides in zip(indices, job_overrides)]
        from concurrent.futures.process import BrokenProcessPool

        with pool:
            futures = [pool.job(overrides, idx) for idx, overrides in zip(indices, job_overrides)]
            try:
                return [pool.result(f) for f in futures]
            except BrokenProcessPool as err:  # a worker was killed (out of memory?): say so in one line
                done = sum(f.done() and f.exception() is None for f in futures)
                pool.abort(f"error: a worker process died ({err}); {done} of {len(futures)} jobs finished and keep "
                           "their results. Rerun the same command to resume, with fewer hydra.launcher.workers if "
                           "memory ran out.")  # fmt: skip

    def _here(self, overrides: Sequence[str], idx: int) -> JobReturn:
        from gsdefense.workers import run_job_here

        ret = run_job_here(self.hydra_context, self.task_function, self.config, list(overrides), idx)
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return ret
