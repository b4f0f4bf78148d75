"""The retrain scenario (pretrain cache, phases, accounting) and adaptive-noise DP."""

from __future__ import annotations

import csv

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import gsdefense.phases as phases_module
from gsdefense.run import run
from gsdefense.training.adaptive import AdaptiveDPConfig
from gsdefense.training.dp import make_private
from tests.conftest import compose_cfg

RETRAIN = ["scenario=retrain", "scenario.pretrain_epochs=2", "scenario.retrain_epochs=2", "optimizer.batch_size=128"]


def _count_pretraining(monkeypatch) -> list[str]:
    calls: list[str] = []
    real = phases_module.train
    monkeypatch.setattr(phases_module, "train", lambda *a, **k: calls.append(k["desc"]) or real(*a, **k))
    return calls


def test_pretrained_model_is_trained_once_for_a_grid(tmp_path, monkeypatch):
    calls = _count_pretraining(monkeypatch)
    for clip in ("0.5", "2.0"):
        metrics = run(compose_cfg(*RETRAIN, f"dp.clip={clip}"), output_dir=tmp_path / clip)
        assert metrics["status"] == "ok"
    assert calls.count("pretrain") == 1
    assert len(list((tmp_path / "cache" / "pretrained").glob("*.pt"))) == 1


def test_history_marks_phases(tmp_path):
    run(compose_cfg(*RETRAIN), output_dir=tmp_path)
    rows = list(csv.DictReader((tmp_path / "history.csv").open()))
    assert [(int(r["epoch"]), r["phase"]) for r in rows] == [(1, "pretrain"), (2, "pretrain"), (3, "retrain"),
                                                             (4, "retrain")]  # fmt: skip
    assert rows[-1]["asr"] != "" and rows[0]["asr"] == ""  # the attack only acts in the retrain phase


def _eps(tmp_path, name, *overrides):
    return run(compose_cfg("optimizer.batch_size=128", "attack=none", *overrides), output_dir=tmp_path / name)


def test_accounting_covers_only_private_phases(tmp_path):
    two = _eps(tmp_path, "two", "optimizer.epochs=2")["epsilon"]
    four = _eps(tmp_path, "four", "optimizer.epochs=4")["epsilon"]
    cells = {
        (pre, re): _eps(
            tmp_path, f"{pre}{re}", *RETRAIN, f"scenario.pretrain_private={pre}", f"scenario.retrain_private={re}"
        )  # fmt: skip
        for pre in (False, True)
        for re in (False, True)
    }
    # ε bounds the final model only when every phase that saw the training set was private (issue 12.1)
    assert cells[(True, True)]["epsilon"] == pytest.approx(four)  # RDP composes both phases' steps
    assert cells[(True, True)]["epsilon_private_phases"] == pytest.approx(four)
    assert cells[(True, True)]["epsilon_note"] is None
    for (pre, re), public in {(False, True): "pretrain", (True, False): "retrain"}.items():
        cell = cells[(pre, re)]
        assert cell["epsilon"] is None
        assert cell["epsilon_private_phases"] == pytest.approx(two)
        assert f"the {public} phase trained on the training data without DP" in cell["epsilon_note"]
    assert cells[(False, False)]["epsilon"] is None and cells[(False, False)]["epsilon_private_phases"] is None
    assert "no private phase" in cells[(False, False)]["epsilon_note"]


def test_noise_zero_says_there_is_no_privacy(tmp_path):
    metrics = _eps(tmp_path, "zero", "optimizer.epochs=1", "dp.noise=0")
    assert metrics["status"] == "ok" and metrics["epsilon"] is None
    assert "no privacy (epsilon = infinity)" in metrics["epsilon_note"]


def test_adaptive_noise_follows_previous_epoch_mean_clipped_norm():
    torch.manual_seed(0)
    model = nn.Linear(6, 3)
    x, y = torch.randn(40, 6) * 2, torch.randint(0, 3, (40,))
    cfg = AdaptiveDPConfig(clip=0.5, noise=2.0, grad_sample_mode="hooks")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    private = make_private(model, opt, cfg=cfg, n_train=40, batch_size=20, noise_generator=torch.Generator())
    opt = private.optimizer
    assert opt.noise_std == pytest.approx(2.0 * 0.5)  # epoch 1 uses clip as the norm
    clipped_norms = []
    for batch in (slice(0, 20), slice(20, 40)):
        w, b = (p.detach().clone().requires_grad_() for p in model.parameters())
        for xi, yi in zip(x[batch], y[batch]):
            g = torch.autograd.grad(F.cross_entropy((xi @ w.T + b)[None], yi[None]), [w, b])
            clipped_norms.append(min(torch.cat([t.flatten() for t in g]).norm().item(), 0.5))
        opt.zero_grad()
        F.cross_entropy(private.module(x[batch]), y[batch]).backward()
        opt.step()
    opt.end_epoch()
    assert opt.noise_std == pytest.approx(2.0 * sum(clipped_norms) / len(clipped_norms), rel=1e-4)
    assert private.epsilon() is None


def test_adaptive_run_logs_noise_std_and_reports_no_epsilon(tmp_path):
    metrics = run(compose_cfg("dp=adaptive", "dp.clip=5.0", "dp.noise=1.0", "optimizer.epochs=3",
                              "optimizer.batch_size=128"), output_dir=tmp_path)  # fmt: skip
    assert metrics["status"] == "ok"
    assert metrics["epsilon"] is None and "no formal" in metrics["epsilon_note"]
    stds = [float(r["noise_std"]) for r in csv.DictReader((tmp_path / "history.csv").open())]
    assert stds[0] == pytest.approx(5.0)
    assert all(0 < s < 5.0 for s in stds[1:])  # mean clipped norms are below clip
    assert len(set(stds)) == 3


BAD = [
    (["scenario=retrain", "scenario.retrain_epochs=0"], "scenario.retrain_epochs"),
    (["dp=adaptive", "dp.clip=-1"], "dp.clip"),
]


@pytest.mark.parametrize("overrides, field", BAD)
def test_bad_scenario_settings(overrides, field):
    from gsdefense.errors import ConfigError
    from gsdefense.plan import prepare

    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        prepare(compose_cfg(*overrides))


def test_privacy_report_says_why_epsilon_is_missing():
    from gsdefense.scenario import RetrainConfig, privacy_report
    from gsdefense.training.dp import DPSGDConfig

    both = RetrainConfig(pretrain_private=True, retrain_private=True)
    assert "no private training step" in privacy_report(dp=DPSGDConfig(), scenario=both, epsilon_private=None)[
        "epsilon_note"]  # fmt: skip
    zero = privacy_report(dp=DPSGDConfig(noise=0.0), scenario=both, epsilon_private=float("inf"))
    assert zero["epsilon"] is None and "epsilon = infinity" in zero["epsilon_note"]
    assert privacy_report(dp=DPSGDConfig(), scenario=both, epsilon_private=2.5)["epsilon"] == 2.5
