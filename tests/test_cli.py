"""The real command line: the quick-start run, the design sweep, and every bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import TINY, run_cli
from tests.test_run import REQUIRED_KEYS


@pytest.mark.slow
def test_default_run_finishes_with_complete_metrics(tmp_path):
    proc = run_cli(f"hydra.run.dir={tmp_path}/run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics.keys() >= REQUIRED_KEYS
    assert metrics["status"] == "ok"
    assert metrics["seconds"] < 60
    assert (tmp_path / "run" / ".hydra" / "config.yaml").exists()


@pytest.mark.slow
def test_design_command_writes_six_complete_result_folders(tmp_path):
    proc = run_cli(
        "-m", "dp.clip=0.1,1,4", "dp.noise=0.4,4.0", "attack=blend", *TINY, f"hydra.sweep.dir={tmp_path}/sweep"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = sorted(Path(tmp_path / "sweep").glob("*/metrics.json"))
    assert len(found) == 6
    settings = set()
    for path in found:
        metrics = json.loads(path.read_text())
        assert metrics.keys() >= REQUIRED_KEYS and metrics["status"] == "ok", path
        assert metrics["asr"] is not None
        overrides = (path.parent / ".hydra" / "overrides.yaml").read_text()
        settings.add(tuple(line for line in overrides.splitlines() if "dp." in line))
    assert len(settings) == 6
    assert "6 ok" in proc.stderr


BAD_INPUTS = [
    (["attack=nonexistent"], "attack"),
    (["dp.not_a_key=1"], "not_a_key"),
    (["+dp.not_a_key=1"], "dp.not_a_key"),
    (["dp.clip=0"], "dp.clip"),
    (["dp.clip=-1"], "dp.clip"),
    (["dp.noise=-0.5"], "dp.noise"),
    (["attack.poison_ratio=1.0"], "attack.poison_ratio"),
    (["attack.poison_ratio=-0.1"], "attack.poison_ratio"),
    (["attack.target_class=10"], "attack.target_class"),
    (["optimizer.batch_size=0"], "optimizer.batch_size"),
    (["optimizer.epochs=0"], "optimizer.epochs"),
    (["optimizer.lr=abc"], "optimizer.lr"),
    (["threads=0"], "threads"),
    (["dataset=fashion_mnist", "dataset.download=false", "dataset.data_dir=/nonexistent/fm"], "/nonexistent/fm"),
    (["device=cuda:0"] if not __import__("torch").cuda.is_available() else ["device=tpu"], "device"),
]


@pytest.mark.parametrize("overrides, field", BAD_INPUTS, ids=[" ".join(o) for o, _ in BAD_INPUTS])
def test_bad_input_fails_fast_with_a_message_naming_the_field(tmp_path, overrides, field):
    run_dir = tmp_path / "run"
    proc = run_cli(*overrides, f"hydra.run.dir={run_dir}")
    assert proc.returncode != 0
    assert field in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (run_dir / "history.csv").exists(), "no training may start"
    metrics = run_dir / "metrics.json"
    assert not metrics.exists() or json.loads(metrics.read_text())["status"] == "failed"


def test_a_run_ends_with_one_summary_line_and_a_quiet_epoch_log(tmp_path):
    proc = run_cli("optimizer.epochs=2", "dp.noise=30", f"hydra.run.dir={tmp_path}/run")
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert lines[-1].endswith(f"{tmp_path}/run: ok | " + lines[-1].split(": ok | ")[1])
    assert all(part in lines[-1] for part in ("clean_acc", "ASR", "RAD", "ε 0.1"))
    epochs = [line for line in lines if "train epoch" in line]
    assert len(epochs) == 2 and all("loss" in e and "ε" in e and "mean_grad_ratio" not in e for e in epochs)
    assert proc.stderr.count("Optimal order is the") <= 1  # Opacus' repeated accountant warning: once at most
