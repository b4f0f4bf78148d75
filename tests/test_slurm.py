"""Sweeps through the submitit launchers, on a real one-node Slurm cluster.

The cluster is the one of ``scripts/slurm-local-cluster.sh`` (slurmctld, slurmd, slurmdbd with
MariaDB, munged, all on localhost). Plain ``python -m pytest`` never installs or starts system software:
the tests use that cluster when it is already up, and otherwise skip with one line saying how to enable
them. ``GSDEFENSE_SLURM_TESTS=1`` (CI, via .ci/run) installs and starts it when needed (as root, with
apt-get) and stops it afterwards; there, "cannot run here" is a failure. ``GSDEFENSE_SLURM_TESTS=0``
skips them even when a cluster runs.

Every Slurm sweep runs CPU-only (``gpus_per_node=0``), one CPU and one thread per run, and gets a
unique job name so that whatever it leaves in the queue can be cancelled.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gsdefense.analysis import load_runs
from tests.conftest import ROOT, TINY, run_cli

pytestmark = pytest.mark.slow

SCRIPT = ROOT / "scripts" / "slurm-local-cluster.sh"
DESIGN = ["dp.clip=0.1,1,4", "dp.noise=0.4,4.0", "attack=blend"]
# A SIGKILLed job must fail its sweep within this many seconds (it used to hang it forever).
KILL_BOUND_S = 120


def slurm_overrides(name: str, *, launcher: str = "slurm", node: str = "hydra.launcher") -> list[str]:
    """hydra/launcher=slurm, sized for the CPU-only test node, over whatever conf/local/slurm.yaml sets."""
    return [
        f"hydra/launcher={launcher}",
        f"{node}.name={name}",
        f"{node}.partition=null",
        f"{node}.account=null",
        f"{node}.qos=null",
        f"{node}.gpus_per_node=0",
        f"{node}.cpus_per_task=1",
        f"{node}.mem_gb=1",
        f"{node}.timeout_min=10",
        f"{node}.additional_parameters={{}}",
        # Two runs share the node's 2 cores: more threads than cores makes torch crawl.
        f'{node}.setup=["export OMP_NUM_THREADS=1"]',
    ]


def _script(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout)


ENABLE = "GSDEFENSE_SLURM_TESTS=1 python -m pytest tests/test_slurm.py"


@pytest.fixture(scope="module")
def slurm() -> Iterator[dict[str, str]]:
    """The environment that points Slurm's commands at the local cluster (``SLURM_CONF``)."""
    flag = os.environ.get("GSDEFENSE_SLURM_TESTS", "")
    if flag == "0":
        pytest.skip("GSDEFENSE_SLURM_TESTS=0")
    started = False
    if _script("status").returncode != 0:
        if flag != "1":
            pytest.skip(f"no local Slurm cluster runs; {ENABLE} installs and starts one (root, apt-get)")
        if os.geteuid() != 0:
            pytest.fail("GSDEFENSE_SLURM_TESTS=1 but starting a local Slurm cluster needs root")
        install = _script("install", timeout=900)
        if install.returncode != 0:
            reason = (install.stderr.strip().splitlines() or ["?"])[-1]
            pytest.fail(f"GSDEFENSE_SLURM_TESTS=1 but Slurm cannot be installed here: {reason}")
        # Installed, as root: from here on a failure to start is a bug, not a missing prerequisite.
        start = _script("start", timeout=300)
        assert start.returncode == 0, f"the local Slurm cluster did not start:\n{start.stderr[-3000:]}"
        started = True
    line = _script("env").stdout.strip()  # export SLURM_CONF=...
    env = {"SLURM_CONF": line.split("=", 1)[1]}
    yield env
    if started:
        stop = _script("stop")
        assert stop.returncode == 0, stop.stderr


def slurm_cmd(env: dict[str, str], *args: str) -> str:
    proc = subprocess.run(args, env={**os.environ, **env}, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"{' '.join(args)}: {proc.stderr}"
    return proc.stdout


def popen_cli(*args: str, env: dict[str, str]) -> subprocess.Popen:
    """``python launch.py ARGS`` in the background, as run_cli does in the foreground."""
    full_env = {**os.environ, **env}
    full_env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.Popen(
        [sys.executable, str(ROOT / "launch.py"), *args],
        cwd=ROOT,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_log(
    sweep: Path, folder: str, text: str, proc: subprocess.Popen, timeout: float = 120, stream: str = "out"
) -> tuple[str, Path]:
    """Wait until the submitit stdout (``stream="err"``: stderr) of the job in ``.submitit/<folder>`` shows ``text``.

    Returns the Slurm job id (the folder's name: ``<array id>_<task>``, or ``<id>`` for a lone
    job) and the log's path.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the sweep ended before its job logged {text!r}:\n{proc.stderr.read()[-3000:]}"
        for log in sweep.glob(f".submitit/{folder}/*_0_log.{stream}"):
            if text in log.read_text():
                return log.parent.name, log
        time.sleep(0.25)
    raise AssertionError(f"no job in {sweep}/.submitit/{folder} logged {text!r} within {timeout}s")


def finish(proc: subprocess.Popen, timeout: float, what: str) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"{what}: the sweep was still waiting after {timeout}s\n{err[-3000:]}")


def wait_until_gone(env: dict[str, str], name: str, timeout: float = 30) -> bool:
    """Wait for the jobs called ``name`` to leave the queue; False if some are still there.

    A sweep returns as soon as each job has written its result, while Slurm may still be
    finishing the job; sacct tells the final state only after that.
    """
    deadline = time.monotonic() + timeout
    while slurm_cmd(env, "squeue", "-h", f"--name={name}", "-o", "%i").strip():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.25)
    return True


def release_requeued(env: dict[str, str], job: str) -> None:
    """Slurm holds a requeued job back for ~2 minutes; release it as soon as it is pending."""
    deadline = time.monotonic() + 60
    while slurm_cmd(env, "squeue", "-h", "-j", job, "-o", "%T").strip() != "PENDING":
        assert time.monotonic() < deadline, f"job {job} was not requeued"
        time.sleep(0.25)
    slurm_cmd(env, "scontrol", "update", f"JobId={job}", "StartTime=now")


def sacct_rows(env: dict[str, str], args: list[str], *, done, timeout: float = 60) -> list[str]:
    """``sacct ARGS`` rows, polled until ``done(rows)`` or ``timeout`` seconds: a task's result can land
    before slurmdbd records its end, so accounting gets a bounded moment to catch up."""
    deadline = time.time() + timeout
    while True:
        rows = slurm_cmd(env, "sacct", *args).splitlines()
        if done(rows) or time.time() > deadline:
            return rows
        time.sleep(1)


def cancel_leftovers(env: dict[str, str], name: str, proc: subprocess.Popen) -> None:
    """After a test: stop its sweep if it still runs, and cancel whatever it left in the queue."""
    if proc.poll() is None:
        proc.kill()
        proc.communicate()
    else:
        wait_until_gone(env, name)
    slurm_cmd(env, "scancel", f"--name={name}")


# --- the design sweep, once, as a Slurm job array ------------------------------------------------


@pytest.fixture(scope="module")
def design_sweep(slurm, tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path, Path]:
    tmp = tmp_path_factory.mktemp("slurm-design")
    sweep, cache = tmp / "sweep", tmp / "cache"
    proc = run_cli(
        "-m",
        *DESIGN,
        *TINY,
        *slurm_overrides("gsd-design"),
        f"hydra.sweep.dir={sweep}",
        env={**slurm, "GSDEFENSE_CACHE_DIR": str(cache)},
        timeout=400,
    )
    assert wait_until_gone(slurm, "gsd-design"), "the sweep's jobs stayed in the queue"
    return proc, sweep, cache


def test_design_sweep_runs_as_one_slurm_job_array(slurm, design_sweep):
    proc, sweep, cache = design_sweep
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "6 ok" in proc.stderr

    for run in range(6):
        metrics = json.loads((sweep / str(run) / "metrics.json").read_text())
        assert metrics["status"] == "ok", (run, metrics)
        assert metrics["device"] == "cpu"

    # One array job: submitit keeps task i of array A in .submitit/A_i/.
    folders = sorted(p.name for p in (sweep / ".submitit").iterdir() if p.is_dir() and "_" in p.name)
    array_ids = {name.split("_")[0] for name in folders}
    assert len(array_ids) == 1, folders
    array_id = array_ids.pop()
    assert folders == [f"{array_id}_{i}" for i in range(6)]
    for folder in folders:
        assert (sweep / ".submitit" / folder / f"{folder}_0_result.pkl").exists()
        assert f"job_id={folder}," in (sweep / ".submitit" / folder / f"{folder}_0_log.out").read_text()

    # Slurm's accounting saw all six tasks finish (sacct is what submitit polls).
    expected = [f"{array_id}_{i}|gsd-design|COMPLETED" for i in range(6)]
    rows = sacct_rows(slurm, ["-j", array_id, "-X", "-n", "-P", "-o", "JobID,JobName,State"],
                      done=lambda rows: sorted(rows) == expected)  # fmt: skip
    assert sorted(rows) == expected

    # GSDEFENSE_CACHE_DIR reached the jobs: their clean references are cached there.
    assert any(cache.rglob("*")), f"nothing cached in {cache}"


def test_load_runs_reads_the_slurm_sweep(design_sweep):
    _, sweep, _ = design_sweep
    df = load_runs(sweep)
    assert len(df) == 6
    assert set(df["status"]) == {"ok"}
    assert sorted({(float(c), float(n)) for c, n in zip(df["dp.clip"], df["dp.noise"])}) == [
        (c, n) for c in (0.1, 1.0, 4.0) for n in (0.4, 4.0)
    ]
    assert df["clean_acc"].notna().all()


# --- a job killed outright ------------------------------------------------------------------------


def test_sigkilled_job_fails_the_sweep_instead_of_hanging_it(slurm, tmp_path):
    """SIGKILL (as the OOM killer or a time limit would) leaves no result; sacct must tell submitit, and the
    job is recorded as a failed run while the sweep ends with its summary."""
    name = f"gsd-kill-{os.getpid()}"
    sweep = tmp_path / "sweep"
    # Run 0 is tiny; run 1 would train for minutes, and is killed at its 3rd epoch.
    proc = popen_cli(
        "-m",
        "optimizer.epochs=2,300",
        "optimizer.batch_size=128",
        *slurm_overrides(name),
        f"hydra.sweep.dir={sweep}",
        env=slurm,
    )
    try:
        job, _ = wait_for_log(sweep, "*_1", "train epoch 3/300", proc)
        slurm_cmd(slurm, "scancel", "--signal=KILL", job)
        killed = time.monotonic()
        _, err = finish(proc, KILL_BOUND_S + 30, f"job {job} was SIGKILLed")
        elapsed = time.monotonic() - killed
    finally:
        cancel_leftovers(slurm, name, proc)

    assert proc.returncode == 1, err[-3000:]
    assert elapsed < KILL_BOUND_S
    # the dead job is a failed run with submitit's reason, and the sweep ends with its summary
    assert "1 failed" in err and "1 ok" in err and "has not produced any output" in err, err[-3000:]
    assert json.loads((sweep / "0" / "metrics.json").read_text())["status"] == "ok"
    failed = json.loads((sweep / "1" / "metrics.json").read_text())
    assert failed["status"] == "failed" and f"Job {job} " in failed["error"], failed


# --- preemption and requeue -----------------------------------------------------------------------

EPOCH = re.compile(r"\btrain epoch (\d+)/(\d+)\b")


@pytest.mark.parametrize("interrupt", ["requeue", "preempt"])
def test_requeued_job_resumes_and_ends_ok(slurm, tmp_path, interrupt):
    """A run interrupted mid-training is requeued, continues from its checkpoint, and ends ok.

    requeue: ``scontrol requeue`` (Slurm kills the job and queues it again).
    preempt: the USR2 signal Slurm sends before a time limit (``--signal=USR2@...``), which
    submitit answers by checkpointing the job and requeueing it itself.
    """
    name = f"gsd-{interrupt}-{os.getpid()}"
    sweep = tmp_path / "sweep"
    proc = popen_cli(
        "-m",
        "optimizer.epochs=30",
        "optimizer.batch_size=128",
        "checkpoint.min_seconds=0",  # a checkpoint every epoch, so the requeued run has one to resume from
        *slurm_overrides(name),
        f"hydra.sweep.dir={sweep}",
        env=slurm,
    )
    try:
        job, log = wait_for_log(sweep, "*", "train epoch 3/30", proc)
        if interrupt == "requeue":
            slurm_cmd(slurm, "scontrol", "requeue", job)
        else:
            slurm_cmd(slurm, "scancel", "--signal=USR2", job)
        release_requeued(slurm, job)
        _, err = finish(proc, 240, f"job {job} was requeued")
    finally:
        cancel_leftovers(slurm, name, proc)

    assert proc.returncode == 0, err[-3000:]
    states = sacct_rows(slurm, ["-j", job, "-D", "-X", "-n", "-P", "-o", "State"],
                        done=lambda rows: bool(rows) and rows[-1] == "COMPLETED")  # fmt: skip
    assert states[0] == "REQUEUED" and states[-1] == "COMPLETED", states

    attempts = log.read_text().split("Starting with JobEnvironment")[1:]
    assert len(attempts) == 2, f"expected 2 starts of job {job}, got {len(attempts)}"
    first = [int(m[1]) for m in EPOCH.finditer(attempts[0])]
    second = [int(m[1]) for m in EPOCH.finditer(attempts[1])]
    assert first and max(first) >= 3, first
    # After a requeue Slurm lets the run go on for a few seconds (submitit ignores SIGTERM), so the
    # first attempt may even finish training; then the second has no training epochs left.
    if second:
        assert second[0] > 1, f"the requeued run trained again from epoch 1 (epochs after requeue: {second})"
        assert second[0] <= max(first) + 1, f"resumed at epoch {second[0]}, after {max(first)} were trained"
        assert second == list(range(second[0], 31)), second
    metrics = json.loads((sweep / "0" / "metrics.json").read_text())
    assert metrics["status"] == "ok", metrics
    with open(sweep / "0" / "history.csv", newline="") as fh:
        epochs = [int(row["epoch"]) for row in csv.DictReader(fh)]
    assert epochs == list(range(1, 31)), "the resumed history must hold every epoch once"


def test_fused_sweep_trains_a_group_in_one_slurm_task(slurm, tmp_path):
    sweep = tmp_path / "sweep"
    overrides = slurm_overrides("gsd-fused", launcher="fused_slurm", node="hydra.launcher.submitit")
    proc = run_cli("-m", *DESIGN, *TINY, *overrides, f"hydra.sweep.dir={sweep}",
                   env={**slurm, "GSDEFENSE_CACHE_DIR": str(tmp_path / "cache")}, timeout=400)  # fmt: skip
    assert wait_until_gone(slurm, "gsd-fused"), "the sweep's jobs stayed in the queue"
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "6 ok" in proc.stderr
    for run in range(6):
        metrics = json.loads((sweep / str(run) / "metrics.json").read_text())
        assert metrics["status"] == "ok" and metrics["fused_group_size"] == 6, (run, metrics)
        assert (sweep / str(run) / ".hydra" / "overrides.yaml").exists()
    # All six runs trained in one Slurm task: one submitit result.
    results = list(sweep.glob(".submitit/*/*_result.pkl"))
    assert len(results) == 1, results


FUSED_EPOCH = re.compile(r"\btrain fused×2 epoch (\d+)/(\d+)\b")


def test_requeued_fused_group_resumes_from_its_members_checkpoints(slurm, tmp_path):
    """A fused group requeued mid-training continues every member from its checkpoint and ends ok."""
    name = f"gsd-fused-requeue-{os.getpid()}"
    sweep, epochs = tmp_path / "sweep", 120
    overrides = slurm_overrides(name, launcher="fused_slurm", node="hydra.launcher.submitit")
    proc = popen_cli("-m", "dp.clip=0.5,2", f"optimizer.epochs={epochs}", "optimizer.batch_size=16", *overrides,
                     "checkpoint.min_seconds=0", f"hydra.sweep.dir={sweep}", env=slurm)  # fmt: skip
    try:
        # a group logs through submitit's root handler, to the task's stderr
        job, log = wait_for_log(sweep, "*", f"train fused×2 epoch 3/{epochs}", proc, stream="err")
        slurm_cmd(slurm, "scontrol", "requeue", job)
        release_requeued(slurm, job)
        _, err = finish(proc, 300, f"job {job} was requeued")
    finally:
        cancel_leftovers(slurm, name, proc)

    assert proc.returncode == 0, err[-3000:]
    attempts = log.read_text().split("training 2 runs fused")[1:]  # each attempt says so once, first
    assert len(attempts) == 2, f"expected 2 starts of job {job}, got {len(attempts)}"
    first = [int(m[1]) for m in FUSED_EPOCH.finditer(attempts[0])]
    second = [int(m[1]) for m in FUSED_EPOCH.finditer(attempts[1])]
    assert first and max(first) >= 3, first
    if second:  # the first attempt may have finished training in the seconds Slurm gives it
        assert 1 < second[0] <= max(first) + 1, (first, second)
        assert second == list(range(second[0], epochs + 1)), second
    for run in range(2):
        metrics = json.loads((sweep / str(run) / "metrics.json").read_text())
        assert metrics["status"] == "ok" and metrics["fused_group_size"] == 2, metrics
        with open(sweep / str(run) / "history.csv", newline="") as fh:
            assert [int(row["epoch"]) for row in csv.DictReader(fh)] == list(range(1, epochs + 1))


# --- the same sweep machinery without Slurm -------------------------------------------------------


def test_local_launcher_runs_a_sweep_as_subprocesses(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli("-m", *TINY, "hydra/launcher=local", f"hydra.sweep.dir={sweep}", env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "1 ok" in proc.stderr
    assert json.loads((sweep / "0" / "metrics.json").read_text())["status"] == "ok"
    # It went through submitit, in a subprocess of its own.
    assert len(list(sweep.glob(".submitit/*/*_result.pkl"))) == 1
