"""Nothing hangs, nothing is lost, nothing is credited to the wrong config (issue 11).

Each case runs with a bounded timeout; CLI behaviours go through the real ``launch.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import gsdefense.run as run_module
from gsdefense.identity import run_id, run_noise_seed
from gsdefense.run import run
from tests.conftest import compose_cfg, run_cli

QUICK = ["optimizer.epochs=1", "optimizer.batch_size=256", "telemetry.enabled=false"]

NOT_FINITE = [
    (["dp.noise=nan"], "dp.noise"),
    (["dp.noise=inf"], "dp.noise"),
    (["dp.clip=inf"], "dp.clip"),
    (["dp.delta=-inf"], "dp.delta"),
    (["optimizer.lr=nan"], "optimizer.lr"),
    (["attack.poison_ratio=nan"], "attack.poison_ratio"),
    (["dataset.test_fraction=nan"], "dataset.test_fraction"),
    (["seed=99999999999999999999999"], "seed"),
    (["seed=-1"], "seed"),
    (["attack.target_class=99999999999999999999"], "attack.target_class"),
    (["telemetry.seed=99999999999999999999"], "telemetry.seed"),
]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("overrides, field", NOT_FINITE, ids=[" ".join(o) for o, _ in NOT_FINITE])
def test_non_finite_and_out_of_range_numbers_fail_before_training(tmp_path, overrides, field):
    run_dir = tmp_path / "run"
    proc = run_cli(*QUICK, *overrides, f"hydra.run.dir={run_dir}", timeout=90)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {field}:"), proc.stderr
    assert not (run_dir / "history.csv").exists(), "no training may start"
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "failed"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("where", ["cache_dir", "hydra.run.dir"])
def test_unusable_folders_fail_before_training(tmp_path, where):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    run_dir = blocker / "run" if where == "hydra.run.dir" else tmp_path / "run"
    cache = blocker if where == "cache_dir" else tmp_path / "cache"
    proc = run_cli(*QUICK, f"cache_dir={cache}", f"hydra.run.dir={run_dir}", timeout=90)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and f"error: {where}:" in proc.stderr
    assert not (tmp_path / "run" / "history.csv").exists()


@pytest.mark.timeout(240)
def test_a_bad_value_in_a_grid_is_refused_before_any_job(tmp_path):
    """NaN noise used to spin forever in the accountant, later to fail job 0 while job 1 trained: the sweeper now
    validates every job's typed config first (a failure at run time is recorded per job, see below)."""
    sweep = tmp_path / "sweep"
    proc = run_cli("-m", *QUICK, "dp.noise=nan,1", f"hydra.sweep.dir={sweep}", timeout=200)
    assert proc.returncode == 2, proc.stderr[-2000:]
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: dp.noise: must be a finite number") and "in job 0 (" in line
    assert not sweep.exists()


@pytest.mark.timeout(120)
def test_a_runtime_error_is_recorded_and_the_sweep_goes_on(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli("-m", "dp=none", "scenario=retrain", "scenario.pretrain_epochs=1", "scenario.retrain_epochs=1",
                   "optimizer.lr=1e30,0.05", "telemetry.enabled=false", f"hydra.sweep.dir={sweep}",
                   timeout=100)  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-2000:]
    bad, good = (json.loads((sweep / str(i) / "metrics.json").read_text()) for i in (0, 1))
    assert bad["status"] == "failed" and "pretraining diverged" in bad["error"]
    assert bad["run_id"] == run_id(OmegaConf.load(sweep / "0" / ".hydra" / "config.yaml"))
    assert good["status"] == "ok"


def test_spellings_of_one_value_are_one_run(tmp_path, monkeypatch):
    pairs = [("dp.noise=1", "dp.noise=1.0"), ("optimizer.lr=1e-2", "optimizer.lr=0.01"), ("dp.clip=2", "dp.clip=2.0")]
    for a, b in pairs:
        cfg_a, cfg_b = compose_cfg(*QUICK, a), compose_cfg(*QUICK, b)
        assert run_id(cfg_a) == run_id(cfg_b), (a, b)
        assert run_noise_seed(cfg_a) == run_noise_seed(cfg_b), (a, b)
    first = run(compose_cfg(*QUICK, "dp.noise=1"), output_dir=tmp_path)
    calls = []
    real = run_module.fit
    monkeypatch.setattr(run_module, "fit", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = run(compose_cfg(*QUICK, "dp.noise=1.0"), output_dir=tmp_path)
    assert calls == [] and again == first  # resumed, not recomputed and overwritten


def _files(run_dir: Path) -> set[str]:
    return {p.name for p in run_dir.iterdir() if p.name not in {".hydra", "superseded"} and p.suffix != ".log"}


def test_another_configs_outputs_are_moved_aside_and_restored(tmp_path):
    a = run(compose_cfg(*QUICK, "dp.clip=0.5"), output_dir=tmp_path)
    b = run(compose_cfg(*QUICK, "dp.clip=2"), output_dir=tmp_path)
    assert a["run_id"] != b["run_id"]
    assert json.loads((tmp_path / "metrics.json").read_text())["run_id"] == b["run_id"]
    assert json.loads((tmp_path / "identity.json").read_text())["run_id"] == b["run_id"]
    (kept,) = (tmp_path / "superseded").iterdir()
    assert kept.name.startswith(a["run_id"]) and json.loads((kept / "metrics.json").read_text()) == a
    assert {"history.csv", "model.pt"} <= _files(kept)
    (kept / "notes.txt").write_text("a file no run writes")  # stays, with its folder, after the restore
    again = run(compose_cfg(*QUICK, "dp.clip=0.5"), output_dir=tmp_path)  # the first config again: restored
    assert again == a and json.loads((tmp_path / "identity.json").read_text())["run_id"] == a["run_id"]
    left = sorted(p.name.split("-")[0] for p in (tmp_path / "superseded").iterdir())
    assert left == sorted([a["run_id"], b["run_id"]]) and [p.name for p in kept.iterdir()] == ["notes.txt"]


def test_a_crash_midway_never_leaves_another_configs_results(tmp_path, monkeypatch):
    a = run(compose_cfg(*QUICK, "dp.clip=0.5"), output_dir=tmp_path)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(run_module, "finish", disk_full)
    cfg_b = compose_cfg(*QUICK, "dp.clip=2")
    with pytest.raises(OSError):
        run(cfg_b, output_dir=tmp_path)
    failed = run_module.record_failure(tmp_path, OSError(28, "No space left on device"), cfg_b)
    assert failed["status"] == "failed" and failed["run_id"] == run_id(cfg_b)
    top = _files(tmp_path)
    assert "model.pt" not in top and "history.csv" not in top  # nothing of config A is left beside B's failure
    assert json.loads((tmp_path / "identity.json").read_text())["run_id"] == run_id(cfg_b)
    (kept,) = (tmp_path / "superseded").iterdir()
    assert json.loads((kept / "metrics.json").read_text()) == a


def test_a_failed_recomputation_keeps_the_finished_result(tmp_path, monkeypatch):
    cfg = compose_cfg(*QUICK)
    done = run(cfg, output_dir=tmp_path)

    def boom(*args, **kwargs):
        raise RuntimeError("killed halfway")

    monkeypatch.setattr(run_module, "fit", boom)
    with pytest.raises(RuntimeError):
        run(compose_cfg(*QUICK, "resume=false"), output_dir=tmp_path)
    run_module.record_failure(tmp_path, RuntimeError("killed halfway"), cfg)
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "failed"
    monkeypatch.undo()
    assert run(cfg, output_dir=tmp_path) == done  # restored from superseded/, not recomputed


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_a_bad_rerun_of_a_finished_sweep_loses_nothing(tmp_path):
    sweep = tmp_path / "sweep"
    grid = ["-m", *QUICK, "dp.clip=0.5,2", f"hydra.sweep.dir={sweep}"]
    assert run_cli(*grid, timeout=200).returncode == 0
    before = {i: json.loads((sweep / str(i) / "metrics.json").read_text()) for i in (0, 1)}
    bad = run_cli(*grid, "dp.noise=-1", timeout=200)  # refused before any job: nothing is moved or written
    assert bad.returncode == 2 and bad.stderr.startswith("error: dp.noise: must be >= 0")
    for i in (0, 1):
        assert json.loads((sweep / str(i) / "metrics.json").read_text()) == before[i]
        assert not (sweep / str(i) / "superseded").exists()
    other = run_cli(*grid, "dp.noise=2", timeout=200)  # another valid grid in the same folder moves them aside
    assert other.returncode == 0, other.stderr[-2000:]
    for i in (0, 1):
        job = sweep / str(i)
        (kept,) = (job / "superseded").iterdir()
        assert json.loads((kept / "metrics.json").read_text()) == before[i]
    good = run_cli(*grid, timeout=200)  # the first command again: restored in seconds, nothing retrains
    assert good.returncode == 0, good.stderr[-2000:]
    console = good.stdout + good.stderr
    assert "restored the finished result" in console and "train epoch" not in console
    for i in (0, 1):
        job = sweep / str(i)
        metrics = json.loads((job / "metrics.json").read_text())
        assert metrics == before[i]
        assert metrics["run_id"] == run_id(OmegaConf.load(job / ".hydra" / "config.yaml"))
