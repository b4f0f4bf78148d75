"""``hydra/launcher=slurm|local``: hydra-submitit-launcher's launchers, settling every job's outcome.

The library's launcher collects the jobs' results in order and stops at the first job that died without one
(out of memory, ``scancel``, a time limit without requeue): ``launch.py`` then exits with submitit's
``UncompletedJobError`` and no sweep summary, although the rest of the array runs on. Here a job that dies is
recorded like any failed run — its folder gets ``.hydra/`` (if the job never wrote it) and a ``metrics.json``
with ``status: failed`` and submitit's reason — and the other jobs' results are still collected, so the sweep
ends with its summary and exit status 1.

This module is imported whenever Hydra scans for plugins: it imports neither torch nor gsdefense at import time.
"""

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus, _save_config
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher, SlurmLauncher
from omegaconf import OmegaConf, open_dict

log = logging.getLogger(__name__)


class _Settled:
    """A submitit job whose ``results()`` never raises: a job that died answers with its failure record."""

    def __init__(self, job: Any, record) -> None:
        self.job, self.record = job, record

    def results(self) -> list:
        try:
            return self.job.results()
        except Exception as err:  # noqa: BLE001 - a dead job is a failed run, not the end of the sweep
            return [self.record(err)]


class _SettlingMixin:
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import submitit

        original = submitit.AutoExecutor.map_array
        launcher = self

        def map_array(executor, fn, *args):
            jobs = original(executor, fn, *args)
            overrides, indices = args[0], args[2]
            return [_Settled(job, lambda err, o=o, i=i: launcher._failed(o, i, err))
                    for job, o, i in zip(jobs, overrides, indices)]  # fmt: skip

        submitit.AutoExecutor.map_array = map_array
        try:
            return super().launch(job_overrides, initial_job_idx)
        finally:
            submitit.AutoExecutor.map_array = original

    def _failed(self, overrides: list[str], idx: int, err: BaseException) -> JobReturn:
        """Write the dead job's failure record into its folder; the sweep goes on."""
        from gsdefense.run import record_failure

        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(cfg):
            cfg.hydra.job.id = cfg.hydra.job.num = idx
        output_dir = Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir)
        task_cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
        with open_dict(task_cfg):
            del task_cfg["hydra"]
        hydra_dir = output_dir / str(cfg.hydra.output_subdir)
        if not (hydra_dir / "config.yaml").exists():  # the job died before Hydra wrote its config
            _save_config(task_cfg, "config.yaml", hydra_dir)
            _save_config(OmegaConf.create(list(overrides)), "overrides.yaml", hydra_dir)
        reason = " ".join(str(err).split())[:500] or type(err).__name__  # submitit's message spans lines
        log.error("job #%d died without a result: %s", idx, reason)
        metrics = record_failure(output_dir, RuntimeError(f"the job died without a result: {reason}"), task_cfg)
        ret = JobReturn(overrides=list(overrides), cfg=task_cfg, hydra_cfg=cfg, working_dir=str(output_dir))
        ret.return_value, ret.status = metrics, JobStatus.COMPLETED
        return ret


class SettledSlurmLauncher(_SettlingMixin, SlurmLauncher):
    pass


class SettledLocalLauncher(_SettlingMixin, LocalLauncher):
    """Its jobs end with it: each watches the launcher's process and, once it is gone (SIGTERM, SIGINT, SIGKILL),
    kills itself and submitit's controller (submitit's job process ignores SIGTERM; orphans trained on)."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        self.launcher_pid = os.getpid()
        return super().launch(job_overrides, initial_job_idx)

    def __call__(self, *args: Any, **kwargs: Any) -> JobReturn:  # runs in the job's process
        from gsdefense.workers import end_with

        end_with(self.launcher_pid)
        return super().__call__(*args, **kwargs)


__all__ = ["SettledLocalLauncher", "SettledSlurmLauncher"]
