"""End to end in process: compose the config, call run(cfg), read what it wrote."""

from __future__ import annotations

import csv
import json

import pytest
import torch

import gsdefense.metrics as M
import gsdefense.references as references_module
import gsdefense.run as run_module
from gsdefense.plan import prepare
from gsdefense.run import run
from tests.conftest import TINY, compose_cfg

REQUIRED_KEYS = {
    "status", "error", "clean_acc", "best_clean_acc", "target_class_acc", "asr", "rad", "rad_dp_matched",
    "rad_best", "rad_early_stop", "acc_ref_best", "epsilon_private_phases",
    "train_loss", "clean_train_loss", "poison_train_loss", "test_loss", "epsilon", "delta", "n_train", "n_poison",
    "noise_multiplier", "noise_std", "poison_fraction_of_train", "seconds", "device",
}  # fmt: skip


def _run(tmp_path, *overrides):
    out = tmp_path / "out"
    metrics = run(compose_cfg(*TINY, *overrides), output_dir=out)
    _assert_same_metrics(json.loads((out / "metrics.json").read_text()), metrics)
    return metrics, out


def _assert_same_metrics(written: dict, returned: dict) -> None:
    """metrics.json holds what run() returned: floats up to JSON's rounding, everything else exactly.

    (pytest.approx refuses nested values such as the `warnings` list from pytest 9.2 on.)"""
    assert written.keys() == returned.keys()
    for key, value in returned.items():
        if isinstance(value, float):
            assert written[key] == pytest.approx(value, nan_ok=True), key
        else:
            assert written[key] == value, key


def test_default_experiment_is_a_dp_backdoor_run_with_all_metrics(tmp_path):
    metrics, out = _run(tmp_path)
    assert metrics.keys() >= REQUIRED_KEYS
    assert metrics["status"] == "ok" and metrics["error"] is None
    assert (metrics["n_train"], metrics["n_poison"]) == (1347 + 135, 135)  # badnets appends (Hong §3.1)
    assert metrics["poison_fraction_of_train"] == pytest.approx(135 / 1482) and "poison_ratio" not in metrics
    assert 0 < metrics["epsilon"] < 10 and metrics["delta"] == 1e-5
    assert metrics["epsilon_private_phases"] == metrics["epsilon"] and metrics["epsilon_note"] is None
    assert 0 <= metrics["clean_acc"] <= 1 and 0 <= metrics["asr"] <= 1
    assert metrics["rad"] == pytest.approx((metrics["acc_ref"] - metrics["clean_acc"]) / metrics["acc_ref"])
    assert metrics["rad_dp_matched"] == pytest.approx(
        (metrics["acc_ref_dp_matched"] - metrics["clean_acc"]) / metrics["acc_ref_dp_matched"]
    )
    rows = list(csv.DictReader((out / "history.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert {"epoch", "train_loss", "elapsed_seconds", "clean_acc", "asr", "epsilon"} <= rows[0].keys()
    assert "seconds" not in rows[0] and float(rows[0]["elapsed_seconds"]) < float(rows[1]["elapsed_seconds"])
    assert float(rows[-1]["epsilon"]) == pytest.approx(metrics["epsilon"])


def test_fixed_seed_gives_identical_numbers(tmp_path):
    a, _ = _run(tmp_path / "a", "seed=3")
    b, _ = _run(tmp_path / "b", "seed=3")
    c, _ = _run(tmp_path / "c", "seed=4")
    keys = ["clean_acc", "asr", "train_loss", "epsilon", "rad"]
    assert [a[k] for k in keys] == [b[k] for k in keys]
    assert [a[k] for k in keys] != [c[k] for k in keys]


def test_clean_vanilla_run_is_its_own_reference(tmp_path):
    metrics, _ = _run(tmp_path, "attack=none", "dp=none")
    assert metrics["rad"] == 0.0 and metrics["rad_dp_matched"] == 0.0 and metrics["rad_best"] == 0.0
    assert metrics["asr"] is None and metrics["n_poison"] == 0 and metrics["poison_train_loss"] is None
    assert metrics["epsilon"] is None and "vanilla" in metrics["epsilon_note"] and metrics["delta"] is None


def test_label_flip_hurts_accuracy_and_has_no_asr(tmp_path):
    overrides = ("attack=label_flip", "attack.poison_ratio=0.4", "dp=none", "optimizer.epochs=5")
    metrics, out = _run(tmp_path, *overrides)
    assert metrics["asr"] is None
    assert metrics["rad"] > 0.02
    assert metrics["poison_train_loss"] > metrics["clean_train_loss"]
    # test_loss is the saved model's mean cross-entropy on the test set (what Steinhardt's bound is about)
    plan = prepare(compose_cfg(*TINY, *overrides))
    model = plan.build_model()
    model.load_state_dict(torch.load(out / "model.pt", weights_only=True))
    assert metrics["test_loss"] == pytest.approx(M.mean_loss(model.eval(), plan.data.x_test, plan.data.y_test))
    assert metrics["test_loss"] > metrics["clean_train_loss"] > 0
    # rad_best (Hong's do_ipoisoning.py): the run's best epoch against its reference's best epoch
    history = [float(r["clean_acc"]) for r in csv.DictReader((out / "history.csv").open())]
    (entry,) = [json.loads(p.read_text())["result"] for p in (tmp_path / "cache" / "reference").glob("*.json")]
    assert metrics["best_clean_acc"] == max(history) and metrics["acc_ref_best"] == entry["best_clean_acc"]
    assert entry["best_clean_acc"] >= entry["clean_acc"] == metrics["acc_ref"]
    assert metrics["rad_best"] == pytest.approx((entry["best_clean_acc"] - max(history)) / entry["best_clean_acc"])


def test_second_run_reuses_cached_references(tmp_path, monkeypatch):
    calls = []
    real = run_module.fit
    spy = lambda *a, **k: calls.append(k["desc"]) or real(*a, **k)  # noqa: E731
    monkeypatch.setattr(run_module, "fit", spy)
    monkeypatch.setattr(references_module, "fit", spy)  # the clean references train there
    _run(tmp_path / "a")
    assert calls == ["train", "reference", "reference-dp"]
    calls.clear()
    _run(tmp_path / "b", "attack=blend")  # same dataset/model/optimizer/dp: same references
    assert calls == ["train"]


def test_divergence_is_recorded_not_raised(tmp_path):
    metrics, out = _run(tmp_path, "dp=none", "optimizer.lr=1e12", "optimizer.momentum=0.99", "optimizer.epochs=3")
    assert metrics["status"] == "diverged"
    assert metrics["diverged_epoch"] >= 1 and "non-finite" in metrics["error"]
    assert metrics["clean_acc"] is None and metrics["rad"] is None
    assert (out / "history.csv").exists()


@pytest.mark.parametrize("model", ["lr", "cnn"])
def test_every_model_trains_with_dp(tmp_path, model):
    metrics, _ = _run(tmp_path, f"model={model}", "optimizer.epochs=1", "attack.poison_ratio=0.05")
    assert metrics["status"] == "ok" and metrics["epsilon"] > 0


def test_resnet18_takes_a_dp_step_with_groupnorm():
    """Full ResNet-18 training is too slow for CI on 2 cores; one exact DP step on real shapes is not."""
    import torch
    from omegaconf import OmegaConf
    from torch.nn import functional as F

    from gsdefense.models import build_model
    from gsdefense.training.dp import DPSGDConfig, make_private

    torch.manual_seed(0)
    model = build_model(OmegaConf.create({"name": "resnet18"}), input_shape=(3, 32, 32), num_classes=10,
                        mean=torch.zeros(3), std=torch.ones(3))  # fmt: skip
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    cfg = DPSGDConfig(clip=0.1, noise=0.0, grad_sample_mode="hooks")
    gen = torch.Generator().manual_seed(0)
    private = make_private(model, opt, cfg=cfg, n_train=40, batch_size=4, noise_generator=gen)
    x, y = torch.rand(3, 3, 32, 32), torch.tensor([1, 2, 3])
    F.cross_entropy(private.module(x), y).backward()
    per_sample_norms = torch.cat([p.grad_sample.flatten(1) for p in model.parameters()], 1).norm(dim=1)
    assert per_sample_norms.shape == (3,) and (per_sample_norms > 0.1).all()
    private.optimizer.step()
    update = torch.cat([(b - p.detach()).flatten() for b, p in zip(before, model.parameters())])
    # three samples clipped to 0.1 each, summed, divided by the expected batch size 4
    assert 0 < update.norm().item() <= 3 * 0.1 / 4 + 1e-5


def test_dp_adam(tmp_path):
    metrics, _ = _run(tmp_path, "optimizer=adam", "optimizer.lr=0.01", "optimizer.epochs=3", "dp.noise=0.5")
    assert metrics["status"] == "ok" and metrics["clean_acc"] > 0.5
