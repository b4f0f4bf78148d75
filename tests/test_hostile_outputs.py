"""Results never lost or misreported (issue 23 §2–§3): one writer per run folder, auto-named folders of their
own, files collaborators can read, a full disk that costs a line (not a traceback, not the run), a relative cache
that stays shared under ``hydra.job.chdir``, and analysis that survives hostile metrics or an empty folder."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from omegaconf import OmegaConf

from gsdefense.callbacks import SweepSummary, sweep_status
from gsdefense.errors import ConfigError
from gsdefense.paths import MIN_FREE_BYTES, check_dir
from gsdefense.run import run
from gsdefense.runlock import acquire, release
from tests.cli_batch import run_batch
from tests.conftest import ROOT, compose_cfg, run_cli

QUICK = ["optimizer.epochs=1", "optimizer.batch_size=256", "telemetry.enabled=false"]


def _one_line(result_stderr: str, field: str) -> str:
    lines = result_stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {field}: "), result_stderr[-2000:]
    assert "Traceback" not in result_stderr
    return lines[0]


@pytest.mark.timeout(300)
def test_a_folder_in_use_is_refused_naming_its_holder_and_a_dead_holder_blocks_nothing(tmp_path):
    run_dir, sweep = tmp_path / "run", tmp_path / "sweep"
    acquire(run_dir)  # this test process "trains" in both folders
    acquire(sweep / "1")
    try:
        results = run_batch([{"args": [*QUICK, f"hydra.run.dir={run_dir}"]},
                             {"args": ["-m", *QUICK, "dp.clip=1,2", f"hydra.sweep.dir={sweep}"]}])  # fmt: skip
    finally:
        release(run_dir)
        release(sweep / "1")
    for result, field in zip(results, ("hydra.run.dir", "hydra.sweep.dir")):
        assert result["code"] == 2
        assert f"in use by another run (pid {os.getpid()} on " in _one_line(result["stderr"], field)
    assert {p.name for p in run_dir.iterdir()} == {".lock"}  # no .hydra/, nothing of the second run
    assert {p.name for p in sweep.iterdir()} == {"1"} and not (sweep / "0").exists()
    # A holder killed outright leaves its lock file behind; the kernel released the lock: the next run proceeds.
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from gsdefense.runlock import acquire; "
                               f"acquire({str(run_dir)!r}); print('held', flush=True); time.sleep(60)"],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    assert str(holder.pid) in (run_dir / ".lock").read_text()
    proc = run_cli(*QUICK, f"hydra.run.dir={run_dir}", timeout=200)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "ok"


def test_auto_named_run_folders_differ_between_processes(tmp_path):
    """Two runs started in the same second shared outputs/<date>/<time>: the folder now ends in a per-process tag.
    The clock is frozen here, so the two names can only differ by that tag."""
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        import hydra_plugins.gsdefense_sweeper.sweeper  # what Hydra imports when it scans for plugins
        from hydra import compose, initialize_config_dir
        import datetime
        import hydra.core.utils
        class Frozen(datetime.datetime):
            @classmethod
            def now(cls, tz=None):
                return datetime.datetime(2026, 1, 1, 12, 0, 0)
        hydra.core.utils.datetime = Frozen  # what the now resolver reads
        with initialize_config_dir(config_dir={str(ROOT / "conf")!r}, version_base="1.3"):
            cfg = compose("config", return_hydra_config=True)
        print(cfg.hydra.run.dir, cfg.hydra.sweep.dir)
    """)
    names = [subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path)
             for _ in range(2)]  # fmt: skip
    assert all(n.returncode == 0 for n in names), names[0].stderr[-2000:]
    (run_a, sweep_a), (run_b, sweep_b) = (n.stdout.split() for n in names)
    assert run_a != run_b and sweep_a != sweep_b
    assert run_a.startswith("outputs/2026-01-01/12-00-00-")  # still readable: the date, the time, a short tag


def _modes(folder: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.rglob("*") if p.is_file()}


def test_run_and_cache_files_honour_the_umask(tmp_path, _isolated_cache):
    old = os.umask(0o002)  # a group sharing results and the cache
    try:
        run(compose_cfg(*QUICK), output_dir=tmp_path / "run")
        acquire(tmp_path / "locked")
        release(tmp_path / "locked")
    finally:
        os.umask(old)
    written = _modes(tmp_path / "run") | _modes(_isolated_cache) | _modes(tmp_path / "locked")
    assert {"metrics.json", "history.csv", "model.pt", "identity.json", ".lock"} <= set(written)
    assert {name: mode for name, mode in written.items() if mode != 0o664} == {}


FULL_DISK = """
import errno, os, runpy, sys, tempfile
sys.path.insert(0, {root!r})
import gsdefense.io
real = tempfile.mkstemp
def full(*args, prefix=None, **kwargs):  # these files meet a full disk (ENOSPC), the others are written
    if prefix and any(prefix.startswith(f".{{name}}.") for name in {names!r}):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return real(*args, prefix=prefix, **kwargs)
gsdefense.io.tempfile.mkstemp = full
sys.argv = ["launch.py", *sys.argv[1:]]
runpy.run_path({launch!r}, run_name="__main__")
"""


@pytest.mark.timeout(300)
def test_a_full_disk_costs_a_checkpoint_warning_then_one_line(tmp_path):
    """Checkpoints that cannot be written: a warning each, training goes on. The final model.pt cannot be written
    either: one line naming the folder's setting and the file, exit 2, a failed record."""
    driver = tmp_path / "full_disk.py"
    driver.write_text(FULL_DISK.format(root=str(ROOT), names=["checkpoint.pt", "model.pt"],
                                       launch=str(ROOT / "launch.py")))  # fmt: skip
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, str(driver), "optimizer.epochs=2", "optimizer.batch_size=256",
                           "telemetry.enabled=false", "checkpoint.min_seconds=0", f"hydra.run.dir={run_dir}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=240)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = _one_line(proc.stderr, "hydra.run.dir")
    assert f"cannot write {run_dir}/model.pt (No space left on device)" in line
    assert proc.stdout.count("could not write checkpoint") == 2 and "train epoch 2/2" in proc.stdout
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "failed" and "No space left on device" in metrics["error"]
    assert not list(run_dir.glob(".*.tmp")) and not (run_dir / "model.pt").exists()


def test_a_nearly_full_filesystem_is_refused_before_writing(tmp_path, monkeypatch):
    import shutil

    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=MIN_FREE_BYTES - 1))
    with pytest.raises(ConfigError, match=r"^cache_dir: the filesystem of .* is full \(2.0 MiB free"):
        check_dir(tmp_path / "cache", field="cache_dir")


@pytest.mark.timeout(200)
def test_a_full_tmpfs_run_folder_is_one_line(tmp_path):
    """A real 1 MiB filesystem (needs root, to mount a tmpfs): refused before Hydra writes .hydra/ there."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (not root)")
    try:
        proc = run_cli(*QUICK, f"hydra.run.dir={mount}/run", timeout=120)
        assert proc.returncode == 2
        assert "is full (1.0 MiB free" in _one_line(proc.stderr, "hydra.run.dir")
        assert [p.name for p in mount.rglob("*")] in ([], ["run"])
    finally:
        subprocess.run(["umount", str(mount)], check=True)


@pytest.mark.timeout(300)
def test_a_relative_cache_stays_in_the_launch_directory_with_chdir(tmp_path):
    """hydra.job.chdir=true ran each job inside its folder, so ./.cache/gsdefense was a new cache per run."""
    proc = run_cli(*QUICK, "hydra.job.chdir=true", "cache_dir=.cache/gsdefense", "hydra.run.dir=out/run",
                   cwd=tmp_path, timeout=200)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert list((tmp_path / ".cache" / "gsdefense" / "reference").glob("*.json"))
    assert not (tmp_path / "out" / "run" / ".cache").exists()


def _fake_run(folder: Path, metrics_text: str) -> None:
    (folder / ".hydra").mkdir(parents=True)
    OmegaConf.save(compose_cfg(*QUICK), folder / ".hydra" / "config.yaml")
    (folder / "metrics.json").write_text(metrics_text)


def test_a_metrics_json_nested_too_deep_is_invalid_not_a_crash(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    _fake_run(sweep / "0", '{"status": "ok", "x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    groups = sweep_status(sweep)
    assert list(groups) == ["invalid"] and "RecursionError" in groups["invalid"][0][1]
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}})
    with pytest.raises(SystemExit) as done:
        SweepSummary().on_multirun_end(config)
    assert done.value.code == 1 and "1 invalid" in capsys.readouterr().err
    from gsdefense.report import main as report

    assert report([str(sweep), "--out", str(tmp_path / "report")]) == 0
    (sweep / "0" / "identity.json").write_text("[" * 100_000)  # a rerun into the folder reads both, unharmed
    assert run(compose_cfg(*QUICK), output_dir=sweep / "0")["status"] == "ok"


@pytest.mark.timeout(300)
def test_the_notebook_says_no_runs_like_the_report(tmp_path, monkeypatch):
    nb = nbformat.read(ROOT / "notebooks" / "aggregate.ipynb", as_version=4)
    monkeypatch.setenv("GSDEFENSE_SWEEP", str(tmp_path))
    NotebookClient(nb, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    outputs = [o for c in nb.cells for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any(f"no runs (directories with .hydra/config.yaml) under {tmp_path}" in o.get("text", "")
               for o in outputs)  # fmt: skip
