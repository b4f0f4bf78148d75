"""Sweeps lose nothing: resume, checkpoints, isolation of bad jobs, concurrent caches."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import gsdefense.references as references_module
import gsdefense.run as run_module
from gsdefense.data import load_dataset
from gsdefense.models import build_model
from gsdefense.run import run
from gsdefense.training.checkpoint import Checkpointer
from gsdefense.training.dp import DPSGDConfig
from gsdefense.training.loop import train
from gsdefense.training.optim import SGDConfig
from tests.conftest import ROOT, TINY, compose_cfg, run_cli

SAME = ["clean_acc", "asr", "train_loss", "clean_train_loss", "epsilon", "rad", "run_id"]


def test_resume_skips_a_completed_run_and_resume_false_recomputes(tmp_path, monkeypatch):
    first = run(compose_cfg(*TINY), output_dir=tmp_path)
    calls = []
    real = run_module.fit
    spy = lambda *a, **k: calls.append(k["desc"]) or real(*a, **k)  # noqa: E731
    monkeypatch.setattr(run_module, "fit", spy)
    monkeypatch.setattr(references_module, "fit", spy)  # the clean references train there
    again = run(compose_cfg(*TINY), output_dir=tmp_path)
    assert calls == [] and again == first
    changed = run(compose_cfg(*TINY, "dp.clip=0.5"), output_dir=tmp_path)  # other run_id in the same dir
    assert calls == ["train", "reference-dp"] and changed["run_id"] != first["run_id"]
    calls.clear()
    run(compose_cfg(*TINY, "dp.clip=0.5", "resume=false"), output_dir=tmp_path)
    assert calls == ["train"]
    assert not (tmp_path / "checkpoint.pt").exists(), "a finished run removes its checkpoint"


def test_run_id_ignores_paths_and_execution_settings():
    base = run_module.run_id(compose_cfg())
    assert (
        run_module.run_id(compose_cfg("resume=false", "cache_dir=/elsewhere", "save_model=false", "threads=2")) == base
    )
    assert run_module.run_id(compose_cfg("dp.clip=2")) != base


def _loop(epochs: int, checkpointer: Checkpointer | None):
    data = load_dataset(OmegaConf.create({"name": "digits"}), seed=0)
    torch.manual_seed(0)
    model = build_model(OmegaConf.create({"name": "mlp"}), input_shape=data.input_shape, num_classes=10,
                        mean=data.mean, std=data.std)  # fmt: skip
    cfg = SGDConfig(epochs=epochs, batch_size=128)
    result = train(model, data.x_train, data.y_train, optimizer_cfg=cfg, dp=DPSGDConfig(noise=1.0), seed=0,
                   checkpointer=checkpointer)  # fmt: skip
    return result, model


def test_checkpoint_round_trip_gives_identical_training_and_accounting(tmp_path):
    whole, whole_model = _loop(4, None)
    ckpt = Checkpointer(tmp_path / "c.pt", every_n_epochs=1, tag="t")
    _loop(2, ckpt)  # "killed" after epoch 2
    assert torch.load(tmp_path / "c.pt", weights_only=True)["epoch"] == 2
    resumed, resumed_model = _loop(4, ckpt)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "elapsed_seconds"} for r in rows]  # noqa: E731
    assert strip(resumed.history) == strip(whole.history)
    assert resumed.epsilon == whole.epsilon
    for a, b in zip(resumed_model.parameters(), whole_model.parameters()):
        assert torch.equal(a, b)
    assert Checkpointer(tmp_path / "c.pt", every_n_epochs=1, tag="other").load() is None


@pytest.mark.slow
def test_sigkilled_run_relaunched_ends_like_an_uninterrupted_one(tmp_path):
    args = ["optimizer.epochs=10", "optimizer.batch_size=128", "checkpoint.min_seconds=0"]
    env = {**os.environ, "GSDEFENSE_CACHE_DIR": str(tmp_path / "cache")}
    victim = tmp_path / "victim"
    proc = subprocess.Popen([sys.executable, str(ROOT / "launch.py"), *args, f"hydra.run.dir={victim}"], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    killed_at = None
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        try:
            epoch = torch.load(victim / "checkpoint.pt", weights_only=True)["epoch"]
        except (OSError, RuntimeError, EOFError, KeyError):
            epoch = 0
        if epoch >= 2:
            proc.send_signal(signal.SIGKILL)
            killed_at = epoch
            break
        time.sleep(0.02)
    proc.wait()
    assert killed_at is not None and killed_at < 10, "the run must be killed mid-training"
    assert not (victim / "metrics.json").exists()

    resumed = run_cli(*args, f"hydra.run.dir={victim}", env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in (victim / "launch.log").read_text()
    whole = run_cli(*args, f"hydra.run.dir={tmp_path / 'whole'}", env=env)
    assert whole.returncode == 0, whole.stderr[-2000:]
    a = json.loads((victim / "metrics.json").read_text())
    b = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    assert [a[k] for k in SAME] == [b[k] for k in SAME]
    hist_a = (victim / "history.csv").read_text().splitlines()
    hist_b = (tmp_path / "whole" / "history.csv").read_text().splitlines()
    assert len(hist_a) == len(hist_b) == 11  # header + 10 epochs: none lost, none counted twice


@pytest.mark.slow
def test_bad_jobs_are_isolated_and_reported(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli("-m", "dp=none", "optimizer.lr=0.05,1e12", "optimizer.momentum=0.99", "attack.poison_ratio=0.1,1.5",
                   *TINY, f"hydra.sweep.dir={sweep}")  # fmt: skip
    assert proc.returncode == 1
    statuses = sorted(json.loads(p.read_text())["status"] for p in sweep.glob("*/metrics.json"))
    assert statuses == ["diverged", "failed", "failed", "ok"]
    failed_lines = [line for line in proc.stderr.splitlines() if line.strip().startswith("FAILED")]
    assert len(failed_lines) == 2 and all("attack.poison_ratio" in line for line in failed_lines)
    assert "1 diverged" in proc.stderr and "1 ok" in proc.stderr


@pytest.mark.slow
def test_eight_concurrent_jobs_share_one_reference(tmp_path):
    env = {**os.environ, "GSDEFENSE_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    attacks = ["badnets", "blend", "label_flip", "none"] * 2
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "launch.py"),
                f"attack={a}",
                f"attack.poison_ratio={0.05 * (i + 1)}" if a != "none" else "seed=0",
                *TINY,
                f"hydra.run.dir={tmp_path / str(i)}",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        for i, a in enumerate(attacks)
    ]
    assert [p.wait(timeout=600) for p in procs] == [0] * 8
    metrics = [json.loads((tmp_path / str(i) / "metrics.json").read_text()) for i in range(8)]
    assert all(m["status"] == "ok" for m in metrics)
    assert len({m["acc_ref"] for m in metrics}) == 1 and len({m["acc_ref_dp_matched"] for m in metrics}) == 1
    entries = sorted(Path(tmp_path / "cache" / "reference").glob("*.json"))
    assert len(entries) == 2  # one vanilla reference, one DP-matched, for all 8 jobs
    trained = sum((tmp_path / str(i) / "launch.log").read_text().count("(trained)") for i in range(8))
    assert trained == 2
