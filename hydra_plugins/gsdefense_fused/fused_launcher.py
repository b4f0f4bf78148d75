"""``hydra/launcher=fused``: train the jobs of a sweep that differ only in ``vary`` keys together.

The launcher groups the multirun's jobs with ``gsdefense.fuse.group_jobs`` and runs
each group in one process (``gsdefense.fuse.run_group``): on this machine's cores, the
groups and the jobs that run alone spread over ``workers`` processes
(``gsdefense.workers``, as ``hydra/launcher=parallel``), or, with a ``submitit`` node
(``hydra/launcher=fused_slurm`` or ``fused_local``), one submitit job per group, so a
Slurm array task trains a whole group. Every job still gets its own output dir with
``.hydra/`` (written here by Hydra's ``run_job``), ``metrics.json``, ``history.csv``, …
A job that cannot fuse runs on its own, as with the basic launcher, after a log line
saying why. Convolutional models (cnn, resnet18) on a CPU run unfused unless
``fuse_conv_on_cpu``: there their grouped convolutions are slower than separate runs
(``benchmarks/fused_grid.py``: 0.82× for a 40-run digits CNN grid).

This module is imported whenever Hydra scans for plugins: it imports neither
torch nor gsdefense at import time.
"""

import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit
from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)

# The keys a fused group's members may differ in; gsdefense.fuse.FUSABLE (a test keeps them equal).
FUSABLE = ["dp.clip", "dp.noise", "dp.noise_std", "dp.delta", "optimizer.lr"]
# submitit's executor-independent parameters; the others get the cluster's prefix (slurm_partition, …).
BASE_PARAMS = {"timeout_min", "cpus_per_task", "gpus_per_node", "tasks_per_node", "mem_gb", "nodes", "name",
               "stderr_to_stdout"}  # fmt: skip


@dataclass
class FusedLauncherConf:
    _target_: str = "hydra_plugins.gsdefense_fused.fused_launcher.FusedLauncher"
    _recursive_: bool = False  # `submitit` carries the submitit launcher's _target_: a node to read, not to build
    # At most this many runs train together; bounds memory (M copies of the model, its activations
    # and per-sample gradient terms). 40 MLP/CNN members fit easily on a CPU; lower it for resnet18.
    max_group_size: int = 40
    # Config keys the members of a group may differ in; everything else must be equal.
    vary: list[str] = field(default_factory=lambda: list(FUSABLE))
    # null: the groups run on this machine (see workers). A hydra-submitit-launcher node
    # (hydra/launcher=fused_slurm or fused_local set it): one submitit job per group.
    submitit: Any | None = None
    # Without submitit: worker processes for the groups and lone jobs (null: one per core that memory allows at
    # mem_per_worker_gb each; 1: one after another in this process), as hydra/launcher=parallel.
    workers: Any = None
    mem_per_worker_gb: float = 2.0
    # Fuse cnn/resnet18 grids on a CPU too (by default they run unfused there: grouped convolutions are slower).
    fuse_conv_on_cpu: bool = False


ConfigStore.instance().store(group="hydra/launcher", name="fused", node=FusedLauncherConf, provider="gsdefense")


CONV_MODELS = ("cnn", "resnet18")


class FusedLauncher(Launcher):
    def __init__(
        self,
        max_group_size: int = 40,
        vary: Sequence[str] = tuple(FUSABLE),
        submitit: Any = None,
        workers: Any = None,
        mem_per_worker_gb: float = 2.0,
        fuse_conv_on_cpu: bool = False,
    ) -> None:
        self.workers, self.mem_per_worker_gb, self.fuse_conv_on_cpu = workers, mem_per_worker_gb, fuse_conv_on_cpu
        if max_group_size < 1:
            raise ValueError(f"hydra.launcher.max_group_size must be >= 1 (got {max_group_size})")
        unknown = [k for k in vary if k not in FUSABLE]
        if unknown:
            raise ValueError(f"hydra.launcher.vary: {unknown} cannot differ within a fused group; use {FUSABLE}")
        self.max_group_size, self.vary = max_group_size, list(vary)
        self.submitit_params = OmegaConf.to_container(submitit, resolve=True) if submitit is not None else None
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from gsdefense.fuse import group_jobs

        setup_globals()
        assert self.config is not None and self.hydra_context is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        sweep_configs = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(cfg):
                cfg.hydra.job.id = cfg.hydra.job.num = idx
            sweep_configs.append(cfg)
        task_cfgs = [_without_hydra(c) for c in sweep_configs]
        groups = self._unfuse_conv_on_cpu(group_jobs(task_cfgs, vary=self.vary, max_group_size=self.max_group_size),
                                          task_cfgs)  # fmt: skip
        log.info("Launching %d jobs as %d fused groups", len(job_overrides), len(groups))
        returns: list[JobReturn | None] = [None] * len(sweep_configs)
        pending = []  # (indices, JobReturns, output dirs) of the groups still to train
        alone = []  # jobs that run on their own on this machine
        for indices, reason in groups:
            for i in indices:
                log.info("\t#%d : %s", initial_job_idx + i, " ".join(filter_overrides(job_overrides[i])))
            if reason is not None:
                log.info("\t#%d runs alone: %s", initial_job_idx + indices[0], reason)
                if self.submitit_params is None:
                    alone.append(indices[0])
                    continue
            rets = [self._run_job(sweep_configs[i], _pending) for i in indices]  # writes each job's .hydra/
            pending.append((indices, rets))
        pool = self._pool(len(alone) + len(pending)) if self.submitit_params is None else None
        with pool if pool is not None else _Here():
            lone = {i: pool.job(job_overrides[i], initial_job_idx + i) if pool else None for i in alone}
            metrics = self._train(pending, task_cfgs, pool)
            for i, future in lone.items():
                returns[i] = pool.result(future) if pool else self._run_job(sweep_configs[i], self.task_function)
        for (indices, rets), group_metrics in zip(pending, metrics):
            for i, ret, m in zip(indices, rets, group_metrics):
                ret.return_value, ret.status = m, JobStatus.COMPLETED
                returns[i] = ret
        return returns  # type: ignore[return-value]

    def _run_job(self, cfg: DictConfig, task_function) -> JobReturn:
        ret = run_job(hydra_context=self.hydra_context, task_function=task_function, config=cfg,
                      job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")  # fmt: skip
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return ret

    def _unfuse_conv_on_cpu(self, groups: list, task_cfgs: list[DictConfig]) -> list:
        """Groups of convolutional models on a CPU split into jobs that run alone (unless ``fuse_conv_on_cpu``)."""
        out = []
        for indices, reason in groups:
            cfg = task_cfgs[indices[0]]
            if reason is None and not self.fuse_conv_on_cpu and cfg.model.name in CONV_MODELS and _on_cpu(cfg):
                why = (f"model={cfg.model.name} on the CPU runs unfused: grouped convolutions are slower there than "
                       "separate runs (hydra.launcher.fuse_conv_on_cpu=true fuses anyway)")  # fmt: skip
                out += [([i], why) for i in indices]
            else:
                out.append((indices, reason))
        return out

    def _pool(self, units: int) -> Any:
        from gsdefense.workers import WorkerPool, uses_cuda, worker_count

        workers = worker_count(self.workers, units, mem_per_worker_gb=self.mem_per_worker_gb,
                               cuda=uses_cuda(self.config))  # fmt: skip
        if workers == 1:
            return None
        log.info("Running %d fused groups and lone jobs on %d workers", units, workers)
        return WorkerPool(workers, hydra_context=self.hydra_context, task_function=self.task_function,
                          config=self.config)  # fmt: skip

    def _train(self, pending, task_cfgs, pool=None) -> list[list[dict]]:
        args = []
        for indices, rets in pending:
            dirs = [Path(r.hydra_cfg.hydra.runtime.output_dir) for r in rets]
            logs = [d / f"{r.hydra_cfg.hydra.job.name}.log" for d, r in zip(dirs, rets)]  # the job's own log file
            args.append(([task_cfgs[i] for i in indices], dirs, logs))
        if self.submitit_params is None:
            if pool is not None:
                return [pool.result(f) for f in [pool.call(GroupTask(), *a) for a in args]]
            return [GroupTask()(*a) for a in args]
        executor = _executor(dict(self.submitit_params))
        jobs = executor.map_array(GroupTask(), *zip(*args)) if args else []
        log.info("Submitted %d submitit jobs to %s: %s", len(jobs), executor.cluster, ", ".join(j.job_id for j in jobs))
        out = []
        for job, (cfgs, dirs, _) in zip(jobs, args):
            try:
                out.append(job.results()[0])
            except Exception as err:  # noqa: BLE001 - a crashed group is recorded, the sweep goes on
                from gsdefense.run import record_failure

                out.append([record_failure(d, err, c) for c, d in zip(cfgs, dirs)])
        return out


class GroupTask(submitit.helpers.Checkpointable):
    """One group's training; on preemption or timeout submitit requeues it and it resumes from checkpoints."""

    def __call__(self, cfgs: list[DictConfig], output_dirs: list[Path], log_files: list[Path]) -> list[dict]:
        from gsdefense.fuse import run_group

        fmt = logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
        handlers: list[logging.Handler] = [logging.FileHandler(f) for f in log_files]  # each job's own log
        root = logging.getLogger()
        if not any(type(h) is logging.StreamHandler for h in root.handlers):  # a submitit process: its stdout too
            handlers.append(logging.StreamHandler(sys.stdout))
        level = root.level
        root.setLevel(min(level, logging.INFO) if level else logging.INFO)
        for h in handlers:
            h.setFormatter(fmt)
            root.addHandler(h)
        try:
            return run_group(cfgs, output_dirs)
        finally:
            root.setLevel(level)
            for h in handlers:
                root.removeHandler(h)
                h.close()


class _Here:
    """No pool: the context of jobs run in this process."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc) -> None:
        return None


def _on_cpu(cfg: DictConfig) -> bool:
    from gsdefense.workers import uses_cuda

    return not uses_cuda(cfg)


def _pending(cfg: DictConfig) -> dict:
    return {"status": "pending", "error": "the fused group has not finished"}


def _without_hydra(cfg: DictConfig) -> DictConfig:
    task = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    with open_dict(task):
        del task["hydra"]
    return task


def _executor(params: dict) -> submitit.AutoExecutor:
    """A submitit executor from a hydra-submitit-launcher node, as that launcher builds it."""
    target = params.pop("_target_", "")
    cluster = "slurm" if target.endswith("SlurmLauncher") else "local"
    folder = params.pop("submitit_folder")
    init = {f"{cluster}_max_num_timeout": params.pop("max_num_timeout")} if "max_num_timeout" in params else {}
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster, **init)
    executor.update_parameters(**{k if k in BASE_PARAMS else f"{cluster}_{k}": v for k, v in params.items()})
    return executor
