"""hydra/launcher=parallel (the default): jobs on every core give the basic launcher's results, and end with it."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from gsdefense.workers import worker_count
from hydra_plugins.gsdefense_fused.fused_launcher import FusedLauncher
from tests.conftest import ROOT

GRID = ["optimizer.epochs=2", "dp.noise=0.5,2", "attack.poison_ratio=0.05,0.1", "telemetry.mode=batches"]


def _env(tmp_path: Path) -> dict:
    env = {**os.environ, "GSDEFENSE_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def _sweep(tmp_path: Path, name: str, *args: str) -> Path:
    sweep = tmp_path / name
    done = subprocess.run([sys.executable, str(ROOT / "launch.py"), "-m", *args, f"hydra.sweep.dir={sweep}"],
                          cwd=ROOT, env=_env(tmp_path / name), capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return sweep


def _results(sweep: Path) -> dict:
    out = {}
    for metrics in sorted(sweep.glob("*/metrics.json")):
        m = json.loads(metrics.read_text())
        rows = list(csv.DictReader((metrics.parent / "history.csv").open()))
        out[metrics.parent.name] = ({k: v for k, v in m.items() if k != "seconds"},
                                    [{k: v for k, v in r.items() if "seconds" not in k} for r in rows])  # fmt: skip
    return out


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_parallel_workers_give_the_basic_launchers_results(tmp_path):
    basic = _results(_sweep(tmp_path, "basic", "hydra/launcher=basic", *GRID))
    parallel = _results(_sweep(tmp_path, "parallel", "hydra.launcher.workers=2", *GRID))
    assert len(basic) == 4 and basic.keys() == parallel.keys()
    for job in basic:
        assert parallel[job] == basic[job], job  # same seeds, same numbers: bit for bit


def _descendants(pid: int) -> set[int]:
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    found, todo = set(), [pid]
    while todo:
        current = todo.pop()
        kids = [p for p, parent in parents.items() if parent == current]
        found |= set(kids)
        todo += kids
    return found


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.add(pid)
    return alive


def _stop_mid_training(tmp_path: Path, launcher: list[str], sig: signal.Signals, *, training: str,
                       victim: str = "launcher") -> tuple:  # fmt: skip
    """Start a sweep of two long jobs, send ``sig`` once ``training`` shows in a job's log (to the launcher, or to
    one ``worker``); (exit code, survivors, stderr)."""
    sweep = tmp_path / "sweep"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "launch.py"), "-m", *launcher, "optimizer.epochs=4000", "dp.noise=0.5,1",
         "optimizer.batch_size=128", "telemetry.enabled=false", f"hydra.sweep.dir={sweep}"],
        cwd=ROOT, env=_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        logs = [p.read_text(errors="ignore") for p in sweep.glob("**/*.log")] + \
               [p.read_text(errors="ignore") for p in sweep.glob(".submitit/*/*_log.out")]  # fmt: skip
        if any(training in text for text in logs):
            break
        time.sleep(0.3)
    assert proc.poll() is None, proc.stderr.read()[-3000:]
    family = _descendants(proc.pid)
    assert family, "the jobs run in processes of their own"
    if victim == "worker":  # a worker is a child of the fork server, itself a child of the launcher (picking any
        # leaf process instead once picked a short-lived helper a busy worker had started, and nothing died)
        servers = [c for c in _children_of(proc.pid) if b"forkserver" in _cmdline(c)]
        workers = sorted(_children_of(servers[0])) if servers else []
        assert workers, f"no fork server with workers among {sorted(family)}"
        os.kill(workers[0], sig)
    else:
        os.kill(proc.pid, sig)
    code = proc.wait(timeout=60)
    deadline = time.time() + 15
    while _alive(family) and time.time() < deadline:
        time.sleep(0.2)
    survivors = _alive(family)
    for pid in survivors:  # never leave them behind, even when the test fails
        os.kill(pid, signal.SIGKILL)
    return code, survivors, proc.stderr.read()


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _children_of(pid: int) -> set[int]:
    kids = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                kids.add(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return kids


@pytest.mark.slow
@pytest.mark.timeout(400)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stopping_the_parallel_launcher_ends_its_workers(tmp_path, sig):
    code, survivors, _ = _stop_mid_training(tmp_path, ["hydra.launcher.workers=2"], sig,
                                            training="train epoch 2/4000")  # fmt: skip
    assert code == 128 + sig and not survivors


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_a_killed_worker_ends_the_sweep_with_one_line(tmp_path):
    """A worker killed (say by the out-of-memory killer) ends the sweep: exit 1, one line, no traceback, no orphan."""
    code, survivors, err = _stop_mid_training(tmp_path, ["hydra.launcher.workers=2"], signal.SIGKILL,
                                              training="train epoch 2/4000", victim="worker")  # fmt: skip
    assert code == 1 and not survivors
    assert "a worker process died" in err and "Rerun the same command to resume" in err and "Traceback" not in err


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_sigterm_of_the_local_launcher_ends_its_jobs(tmp_path):
    """Issue 23: submitit's local jobs (which ignore SIGTERM) trained on as orphans for ≥ 45 s."""
    code, survivors, _ = _stop_mid_training(tmp_path, ["hydra/launcher=local", "hydra.launcher.gpus_per_node=0"],
                                            signal.SIGTERM, training="train epoch 2/4000")  # fmt: skip
    assert code == -signal.SIGTERM and not survivors


def test_worker_count_follows_cores_jobs_and_memory(monkeypatch):
    import gsdefense.workers as workers

    monkeypatch.setattr(workers, "usable_cores", lambda: 8)
    monkeypatch.setattr(workers, "available_gb", lambda: 5.0)
    assert worker_count(None, 40, mem_per_worker_gb=2.0) == 2  # memory holds two
    assert worker_count(None, 3, mem_per_worker_gb=0.5) == 3  # three jobs
    assert worker_count(None, 40, mem_per_worker_gb=0.5) == 8  # eight cores
    assert worker_count(4, 40, mem_per_worker_gb=2.0) == 4 and worker_count(4, 2, mem_per_worker_gb=2.0) == 2
    with pytest.raises(ValueError, match="workers"):
        worker_count(0, 4, mem_per_worker_gb=2.0)


def test_conv_groups_on_a_cpu_run_unfused():
    cfgs = [OmegaConf.create({"model": {"name": name}, "device": "cpu"}) for name in ("cnn", "cnn", "mlp", "mlp")]
    groups = [([0, 1], None), ([2, 3], None)]
    split = FusedLauncher()._unfuse_conv_on_cpu(groups, cfgs)
    assert [g[0] for g in split] == [[0], [1], [2, 3]] and "runs unfused" in split[0][1]
    assert FusedLauncher(fuse_conv_on_cpu=True)._unfuse_conv_on_cpu(groups, cfgs) == groups
