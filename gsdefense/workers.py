"""Worker processes for the parallel and fused launchers (``hydra/launcher=parallel|fused``).

``WorkerPool`` starts ``workers`` processes forked from a server that has imported gsdefense, torch and Hydra
(``multiprocessing``'s forkserver), so each pays start-up and imports once, and keeps its in-process caches
(``gsdefense.data.memo``) from job to job. A job runs in a worker as Hydra's basic launcher runs it in its own
process: its config composed there, then Hydra's ``run_job`` (folder, ``.hydra/``, log file, callbacks).

The pool ends with its process: on SIGTERM or SIGINT the launcher kills the workers and exits (143 / 130), and a
worker whose parent is gone is killed by the kernel (Linux ``PR_SET_PDEATHSIG``), so no job trains on as an orphan.
(This lives outside ``hydra_plugins``: Hydra's plugin scan re-executes those modules, which would reset a worker's
state.)
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

import cloudpickle
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, run_job, setup_globals
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
PRELOAD = ["gsdefense.launch", "gsdefense.fuse", "gsdefense.workers"]  # imported once, by the fork server


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def available_gb() -> float | None:
    """MemAvailable (Linux /proc/meminfo) in GB, or None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def uses_cuda(config: DictConfig) -> bool:
    """Whether the sweep's jobs train on a GPU (``device`` cuda…, or auto where CUDA is available)."""
    device = str(config.get("device", "auto"))
    if device == "auto":
        import torch

        return torch.cuda.is_available()
    return device.startswith("cuda")


def worker_count(workers: int | None, jobs: int, *, mem_per_worker_gb: float, cuda: bool = False) -> int:
    """``workers`` as set (at most ``jobs``), or one per usable core that memory allows (one when the jobs use the
    GPU: they would share it; set ``hydra.launcher.workers`` to run several on it)."""
    if workers is not None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"hydra.launcher.workers must be a positive integer or null (got {workers!r})")
        return max(1, min(workers, jobs))
    if cuda:
        return 1
    count = min(usable_cores(), jobs)
    free = available_gb()
    if free is not None and mem_per_worker_gb > 0:
        count = min(count, max(1, int(free // mem_per_worker_gb)))
    return max(1, count)


def die_with_parent(parent: int | None = None) -> None:
    """Have the kernel SIGKILL this process when its parent dies (Linux); exit now if it already has."""
    expected = os.getppid() if parent is None else parent
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))
    except (OSError, AttributeError):  # not Linux: the launcher's signal handlers still end the workers
        return
    if os.getppid() != expected:
        os._exit(1)


def end_with(pid: int, *, interval: float = 0.5) -> threading.Thread:
    """A daemon thread that SIGKILLs this process and its parent (a submitit controller) once ``pid`` is gone.

    For ``hydra/launcher=local``, where a job runs under submitit's controller process, not under the launcher:
    neither may outlive the launcher (submitit's job process ignores SIGTERM)."""

    def watch() -> None:
        while True:
            time.sleep(interval)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                log.error("the launcher (process %d) is gone: ending this job", pid)
                parent = os.getppid()
                if parent not in (1, pid):
                    with contextlib.suppress(OSError):
                        os.kill(parent, signal.SIGKILL)
                os.kill(os.getpid(), signal.SIGKILL)
            except PermissionError:
                return

    thread = threading.Thread(target=watch, name="end-with-launcher", daemon=True)
    thread.start()
    return thread


_WORKER: dict[str, Any] = {}  # this worker's (hydra_context, task_function, config, Singleton state)


def _init_worker(payload: bytes, launcher_pid: int) -> None:
    die_with_parent()
    try:
        os.kill(launcher_pid, 0)
    except ProcessLookupError:
        os._exit(1)
    _WORKER["context"] = cloudpickle.loads(payload)


def run_job_here(hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig,
                 overrides: list[str], idx: int) -> JobReturn:  # fmt: skip
    """Job ``idx`` of the sweep in this process, as Hydra's basic launcher runs it."""
    setup_globals()
    sweep_config = hydra_context.config_loader.load_sweep_config(config, list(overrides))
    with open_dict(sweep_config):
        sweep_config.hydra.job.id = sweep_config.hydra.job.num = idx
    return run_job(hydra_context=hydra_context, task_function=task_function, config=sweep_config,
                   job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")  # fmt: skip


def _run_one(overrides: list[str], idx: int) -> JobReturn:
    hydra_context, task_function, config, singleton_state = _WORKER["context"]
    Singleton.set_state(singleton_state)
    return run_job_here(hydra_context, task_function, config, overrides, idx)


def _call(fn: Callable, args: tuple) -> bytes:
    """``fn(*args)`` pickled by cloudpickle: a job's config holds the launcher's config class as Hydra's plugin scan
    loaded it, which plain pickle refuses ("not the same object")."""
    return cloudpickle.dumps(fn(*args))


class WorkerPool:
    """``workers`` processes that end with this one: killed on SIGTERM/SIGINT, or by the kernel if it dies."""

    def __init__(self, workers: int, *, hydra_context: HydraContext, task_function: TaskFunction,
                 config: DictConfig) -> None:  # fmt: skip
        payload = cloudpickle.dumps((hydra_context, task_function, config, Singleton.get_state()))
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)
        self.executor = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                                            initargs=(payload, os.getpid()))  # fmt: skip
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> WorkerPool:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.previous[sig] = signal.signal(sig, self._stop)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        if exc[0] is not None:
            self.kill()
        self.executor.shutdown(wait=exc[0] is None, cancel_futures=True)

    def kill(self) -> None:
        for process in list((getattr(self.executor, "_processes", None) or {}).values()):
            if process.is_alive():
                process.kill()

    def _stop(self, signum: int, frame) -> None:
        self.abort(f"{signal.Signals(signum).name}: the sweep's workers were stopped.", code=128 + signum)

    def abort(self, message: str, *, code: int = 1) -> None:
        """Kill the workers, print ``message`` (one line) and leave now (the pool cannot be shut down cleanly)."""
        self.kill()
        logging.shutdown()
        sys.stdout.flush()
        print(message, file=sys.stderr, flush=True)
        os._exit(code)

    def call(self, fn: Callable, *args) -> Future:
        """``fn(*args)`` in a worker; the future's ``result()`` is the (cloud)pickled return value: ``unpack`` it."""
        return self.executor.submit(_call, fn, args)

    def job(self, overrides: Sequence[str], idx: int) -> Future:
        return self.call(_run_one, list(overrides), idx)

    @staticmethod
    def result(future: Future) -> Any:
        return cloudpickle.loads(future.result())
