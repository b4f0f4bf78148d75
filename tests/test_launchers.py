"""hydra/launcher=local|slurm: a job that dies without a result is a failed run; the sweep ends with its summary."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT


def _children(pid: int) -> list[int]:
    """Process ids whose parent is ``pid`` (from /proc)."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_killed_local_job_is_recorded_failed_and_the_sweep_ends_with_its_summary(tmp_path):
    sweep = tmp_path / "sweep"
    env = {**os.environ, "GSDEFENSE_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "launch.py"), "-m", "hydra/launcher=local", "hydra.launcher.gpus_per_node=0",
         "optimizer.epochs=2,4000", "optimizer.batch_size=128", "telemetry.enabled=false", f"hydra.sweep.dir={sweep}"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    victim = None
    deadline = time.time() + 200
    while victim is None and time.time() < deadline and proc.poll() is None:
        for log in (sweep / ".submitit").glob("*/*_log.out"):
            if "train epoch 3/4000" in log.read_text(errors="ignore"):
                victim = int(log.parent.name)  # submitit's local job id is the job's process id
        time.sleep(0.2)
    assert victim is not None, "the long job must be killed mid-training"
    for pid in [*_children(victim), victim]:  # the job's process, then submitit's local controller
        os.kill(pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err[-3000:]
    assert "1 failed" in err and "1 ok" in err and "Traceback" not in err, err[-3000:]
    assert json.loads((sweep / "0" / "metrics.json").read_text())["status"] == "ok"
    failed = json.loads((sweep / "1" / "metrics.json").read_text())
    assert failed["status"] == "failed" and "died without a result" in failed["error"] and failed["run_id"]
    assert (sweep / "1" / ".hydra" / "config.yaml").exists()
