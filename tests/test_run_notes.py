"""What a run tells its reader beyond the numbers: the end-of-run line's ε, the Opacus accountant note (once per
process, not once per job), and the warning when a DP run's training loss keeps rising."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest

from gsdefense.run import run, summary_line
from gsdefense.scenario import ScratchConfig, privacy_report
from gsdefense.training import accounting
from gsdefense.training.dp import DPSGDConfig
from gsdefense.training.loss_trend import loss_warnings, rising_stretch
from gsdefense.training.optim import SGDConfig
from tests.conftest import compose_cfg, run_cli

# --- the end-of-run line -----------------------------------------------------------------------------------------


def _line(**metrics) -> str:
    return summary_line({"status": "ok", "clean_acc": 0.9, "asr": 0.5, "rad": 0.01, **metrics}, Path("out/run"))


def test_the_end_of_run_line_tells_no_dp_from_no_noise() -> None:
    scratch = ScratchConfig()
    vanilla = privacy_report(dp=None, scenario=scratch, epsilon_private=None)
    clipping_only = privacy_report(dp=DPSGDConfig(clip=1.0, noise=0.0), scenario=scratch, epsilon_private=None)
    private = privacy_report(dp=DPSGDConfig(clip=1.0, noise=1.0), scenario=scratch, epsilon_private=0.7121)
    assert _line(**vanilla).endswith("| ε — (no DP)")
    assert _line(**clipping_only).endswith("| ε ∞ (σ = 0)")
    assert _line(**private).endswith("| ε 0.712")
    assert _line(epsilon=float("inf")).endswith("| ε ∞ (σ = 0)")
    assert _line().endswith("| ε —")


# --- the Opacus note ---------------------------------------------------------------------------------------------


def test_rdp_epsilon_of_clipping_alone_is_infinite_without_asking_opacus(caplog) -> None:
    caplog.set_level(logging.WARNING)
    assert accounting.rdp_epsilon([(0.0, 0.05, 100)], delta=1e-5) == float("inf")
    assert not caplog.records


def test_the_extreme_order_note_is_logged_once_per_process(caplog, monkeypatch) -> None:
    monkeypatch.setattr(accounting, "_noted_extreme_order", False)
    caplog.set_level(logging.WARNING, logger="gsdefense.training.accounting")
    for steps in (10, 20, 30):  # σ = 50: the optimal RDP order is the largest α of Opacus' grid, every time
        assert 0 < accounting.rdp_epsilon([(50.0, 0.05, steps)], delta=1e-5) < 0.2
    notes = [r.getMessage() for r in caplog.records if "optimal RDP order" in r.getMessage()]
    assert len(notes) == 1 and "largest α of Opacus' grid (very large σ)" in notes[0] and "once per process" in notes[0]


@pytest.mark.slow
def test_a_multirun_in_one_process_says_it_once(tmp_path) -> None:
    """Before: Opacus' "Optimal order is the smallest alpha" once per job (50 times for hong_fig4_label_flip)."""
    proc = run_cli("-m", "hydra/launcher=basic", "optimizer.epochs=1", "dp.noise=30", "seed=0,1,2",
                   "telemetry.enabled=false", f"hydra.sweep.dir={tmp_path}/sweep")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout + proc.stderr
    assert out.count(": ok |") == 3  # three jobs, one process (the basic launcher)
    assert "Optimal order is the" not in out
    assert out.count("optimal RDP order is the largest α") == 1


# --- a DP run whose loss keeps rising ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("losses", "stretch"),
    [
        ([1.01, 1.49, 2.13], (0, 2)),  # the FashionMNIST MLP at C = 1, σ = 1
        ([1.0, 1.2], None),  # one rise is not a trend
        ([2.0, 1.5, 1.2, 1.0], None),
        ([1.0, 1.01, 1.02, 1.03], None),  # 3 % in total: DP noise, not divergence
        ([0.194, 0.197, 0.215], None),  # +11 % near convergence: `python launch.py`'s default run, DP jitter
        ([1.0, 1.2, 1.5, 1.4, 1.6, 1.9, 2.5], (3, 6)),  # the longest stretch
        ([1.0, None, 2.0, 3.0, 4.0], (2, 4)),
    ],
)
def test_rising_stretch(losses, stretch) -> None:
    assert rising_stretch(losses) == stretch


def _history(losses: list[float]) -> list[dict]:
    return [{"epoch": i + 1, "train_loss": v} for i, v in enumerate(losses)]


def test_the_warning_names_the_cause_and_the_papers_schedule() -> None:
    dp, sgd = DPSGDConfig(clip=1.0, noise=1.0), SGDConfig()
    (text,) = loss_warnings(_history([1.02, 1.50, 2.04, 2.60]), dp=dp, optimizer=sgd, dataset="fashion_mnist",
                            model="mlp")  # fmt: skip
    assert text.startswith("train loss rose for 3 epochs in a row (1.02 → 1.5 → 2.04 → 2.6, epochs 1–4) under dpsgd")
    assert "(sgd, lr 0.05, momentum 0.9, batch 64) is likely too large" in text
    assert "Fix: a smaller optimizer.lr, optimizer.momentum=0, or a larger optimizer.batch_size" in text
    assert text.endswith(
        "optimizer=sgd optimizer.lr=0.04 optimizer.momentum=0 optimizer.batch_size=100 optimizer.epochs=100"
    )
    (cnn,) = loss_warnings(_history([1, 2, 3]), dp=dp, optimizer=sgd, dataset="cifar10", model="cnn")
    assert "Hong et al.'s CNN: SGD, batch 100, 80 epochs, lr 0.01" in cnn
    (digits,) = loss_warnings(_history([1, 2, 3]), dp=dp, optimizer=sgd, dataset="digits", model="mlp")
    assert "papers' schedule" not in digits  # none for the embedded data: not promised
    assert loss_warnings(_history([1, 2, 3]), dp=None, optimizer=sgd, dataset="digits", model="mlp") == []
    adam = SimpleNamespace(name="adam", lr=0.001, batch_size=64)
    (text,) = loss_warnings(_history([1, 2, 3]), dp=dp, optimizer=adam, dataset="digits", model="mlp")
    assert "(adam, lr 0.001, batch 64)" in text and "momentum" not in text


def test_a_dp_run_whose_loss_rises_says_so_in_metrics_json_and_the_log(tmp_path, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="gsdefense.training.loss_trend")
    common = ("optimizer.epochs=4", "dp.clip=1", "dp.noise=2", "telemetry.enabled=false", "save_model=false")
    metrics = run(compose_cfg(*common, "optimizer.lr=0.5"), output_dir=tmp_path / "rising")
    (text,) = json.loads((tmp_path / "rising" / "metrics.json").read_text())["warnings"]
    assert metrics["warnings"] == [text]
    assert text.startswith("train loss rose for 3 epochs in a row (2.39 → 4.33 → 8.63")
    assert [r.getMessage() for r in caplog.records if r.name == "gsdefense.training.loss_trend"] == [text]
    calm = run(compose_cfg(*common, "optimizer.lr=0.01"), output_dir=tmp_path / "calm")
    assert calm["warnings"] == []
