"""Poison Frogs: forward-backward crafting, the RAD-aware success rule, bad input, and an end-to-end run."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from gsdefense.attacks import RunContext, build_attack
from gsdefense.attacks import frogs_craft as fc
from gsdefense.attacks.frogs_report import clean_label_stats
from gsdefense.attacks.poison_frogs import first_success, ranked
from gsdefense.data import load_dataset
from gsdefense.errors import ConfigError
from gsdefense.models import build_model
from gsdefense.run import run
from gsdefense.training.loop import TrainResult, train
from gsdefense.training.optim import SGDConfig
from tests.conftest import compose_cfg

# Digits 9 and 7 are close in pixel space, so a few poisons can flip a 9 (see the e2e test).
E2E = ["attack=poison_frogs", "scenario=retrain", "dp=none", "telemetry.enabled=false", "save_model=false",
       "attack.target_true_class=9", "attack.base_class=7", "attack.n_targets=3", "attack.max_iters=300"]  # fmt: skip


@pytest.fixture(scope="module")
def digits():
    return load_dataset(OmegaConf.create({"name": "digits"}), seed=0)


@pytest.fixture(scope="module")
def pretrained(digits):
    torch.manual_seed(0)
    node = OmegaConf.create({"name": "mlp", "hidden": 32})
    model = build_model(node, input_shape=digits.input_shape, num_classes=10, mean=digits.mean, std=digits.std)
    return train(model, digits.x_train, digits.y_train, optimizer_cfg=SGDConfig(epochs=5), dp=None, seed=0).model


def _attack(**keys):
    return build_attack(OmegaConf.create({"name": "poison_frogs", **keys}))


def _context(tmp_path: Path, scenario: str = "retrain") -> RunContext:
    return RunContext(seed=0, device=torch.device("cpu"), cache_dir=tmp_path / "cache", model_name="mlp",
                      scenario=scenario)  # fmt: skip


@dataclass
class FakeTrials:
    """The TrialRunner interface with scripted per-epoch rows: ``script(call_index) -> list of rows``."""

    model: torch.nn.Module
    script: object
    acc_ref: float | None = 0.9
    calls: list = field(default_factory=list)

    def pretrained_model(self) -> torch.nn.Module:
        return self.model

    def retrain(self, x_extra, y_extra, *, evaluate=None, desc="trial", until=None) -> TrainResult:
        self.calls.append((x_extra.clone(), y_extra.clone()))
        rows = [{"epoch": e + 1, **row} for e, row in enumerate(self.script(len(self.calls) - 1))]
        stop = next((i for i, row in enumerate(rows) if until is not None and until(row)), None)
        result = TrainResult(model=self.model, history=rows if stop is None else rows[: stop + 1])
        result.stopped_epoch = None if stop is None else rows[stop]["epoch"]
        return result

    def retrain_sequences(self, sequences, *, until=None) -> list[list[TrainResult]]:
        """One trial after another, each sequence up to its first trial that reached ``until``."""
        out = []
        for trials in sequences:
            out.append([])
            for t in trials:
                out[-1].append(self.retrain(t.x, t.y, evaluate=t.evaluate, desc=t.desc, until=until))
                if out[-1][-1].stopped_epoch is not None:
                    break
        return out


# --- crafting -----------------------------------------------------------------------------------------------


def test_proximal_step_is_the_closed_form_minimiser():
    gen = torch.Generator().manual_seed(0)
    x_hat, base = torch.randn(5, 8, generator=gen), torch.randn(5, 8, generator=gen)
    lam, beta = 0.3, 2.0
    p = fc.proximal_step(x_hat, base, step=lam, beta=beta)
    assert torch.allclose(p, (x_hat + lam * beta * base) / (1 + lam * beta))
    # p minimises (β/2)‖x − b‖² + ‖x − x̂‖²/(2λ): its gradient vanishes there and every perturbation costs more.
    x = p.clone().requires_grad_(True)
    cost = 0.5 * beta * (x - base).pow(2).sum() + (x - x_hat).pow(2).sum() / (2 * lam)
    (grad,) = torch.autograd.grad(cost, x)
    assert grad.abs().max() < 1e-5
    with torch.no_grad():
        for _ in range(10):
            y = p + 0.01 * torch.randn(p.shape, generator=gen)
            assert 0.5 * beta * (y - base).pow(2).sum() + (y - x_hat).pow(2).sum() / (2 * lam) > cost


def test_feature_extractor_drops_the_classifier_head_and_uses_logits_for_lr(digits, pretrained):
    f = fc.feature_extractor(pretrained)
    x = digits.x_test[:4]
    hidden = pretrained[1][:-1](pretrained[0](x))  # input map, then Flatten-Linear-ReLU
    assert fc.feature_space(pretrained) == "penultimate" and torch.allclose(f(x), hidden)
    assert pretrained(x).shape == (4, 10)  # the victim model itself is untouched
    # A linear model has no hidden layer: its features are its logits, as the original's LinearRegression.
    node = OmegaConf.create({"name": "lr"})
    lr = build_model(node, input_shape=digits.input_shape, num_classes=10, mean=digits.mean, std=digits.std)
    assert fc.feature_space(lr) == "logits"
    assert torch.equal(fc.feature_extractor(lr)(x), lr(x)) and fc.feature_extractor(lr)(x).shape == (4, 10)


def test_crafting_pulls_features_to_the_target_and_stays_in_the_box(digits, pretrained):
    f = fc.feature_extractor(pretrained)
    target = digits.x_test[digits.y_test == 9][0]
    bases = digits.x_test[digits.y_test == 7][:6]
    start = (fc.features(f, bases) - fc.features(f, target[None])).norm(dim=1)
    dists, objectives = [], []
    for iters in (1, 20, 200):
        out = fc.craft(f, target, bases, step_size=0.01, beta=0.1, max_iters=iters, box=(0.0, 1.0))
        assert out.poisons.min() >= 0.0 and out.poisons.max() <= 1.0
        assert out.poisons.shape == bases.shape
        dists.append(out.feature_distance)
        objectives.append(out.feature_distance**2 + 0.05 * out.perturbation**2)
        measured = (fc.features(f, out.poisons) - fc.features(f, target[None])).norm(dim=1)
        assert torch.allclose(measured, out.feature_distance, atol=1e-4)
    # The objective never rises (rejected steps), and the feature distance falls well below its start.
    assert (objectives[1] <= objectives[0] + 1e-5).all() and (objectives[2] <= objectives[1] + 1e-5).all()
    assert (dists[2] < 0.5 * start).all()


def _scaled_identity(gain: float, dim: int = 6) -> torch.nn.Module:
    """A 'linear model' f(x) = γ·x + c on (1, 1, dim) inputs: its logits are its features, gain γ²."""
    linear = torch.nn.Linear(dim, dim)
    with torch.no_grad():
        linear.weight.copy_(gain**0.5 * torch.eye(dim))
        linear.bias.fill_(0.3)
    return torch.nn.Sequential(torch.nn.Identity(), torch.nn.Sequential(torch.nn.Flatten(), linear))


@pytest.mark.parametrize("scale", [2.0, 8.0])
def test_default_beta_stops_a_linear_models_poison_two_over_two_plus_scale_of_the_way(scale):
    model = _scaled_identity(gain=9.0)
    f = fc.feature_extractor(model)
    assert fc.feature_space(model) == "logits"
    gen = torch.Generator().manual_seed(0)
    target = 0.3 + 0.4 * torch.rand(1, 1, 6, generator=gen)
    bases = 0.3 + 0.4 * torch.rand(4, 1, 1, 6, generator=gen)
    assert fc.feature_gain(f, target[0], bases[:, 0]) == pytest.approx(9.0, rel=1e-5)
    attack = _attack(beta_scale=scale)
    beta = attack.beta(f, target[0], bases[:, 0])
    assert beta == pytest.approx(scale * 9.0, rel=1e-5)
    out = fc.craft(f, target[0], bases[:, 0], step_size=0.01, beta=beta, max_iters=3000, box=(0.0, 1.0), rel_tol=1e-9)
    stats = clean_label_stats(model, out.poisons, bases[:, 0], target[0], base_class=0)
    torch.testing.assert_close(stats["base_distance"], torch.full((4,), 2 / (2 + scale)), atol=2e-3, rtol=0)
    assert _attack(beta=0.5).beta(f, target[0], bases[:, 0]) == 0.5  # an explicit β wins


def test_clean_label_stats_measure_relative_distance_and_the_pretrained_label():
    # Logits of the 2-class model: class 1 wins iff x0 > x1. Base (0.8, 0.2) is class 1, target (0.2, 0.8) class 0.
    model = torch.nn.Sequential(torch.nn.Identity(), torch.nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
    base, target = torch.tensor([0.8, 0.2]), torch.tensor([0.2, 0.8])
    s = torch.tensor([0.0, 0.25, 0.4, 0.75, 1.0])
    poisons = base + s[:, None] * (target - base)
    stats = clean_label_stats(model, poisons, base.expand(5, 2), target, base_class=1)
    torch.testing.assert_close(stats["base_distance"], s)
    assert stats["pred"].tolist() == [1, 1, 1, 0, 0] and stats["as_base"].tolist() == [True, True, True, False, False]


# --- evaluation with scripted trials ------------------------------------------------------------------------


def _flip(rad_ok: bool):
    """Epoch 1: target correct at full accuracy; epoch 2: target flipped to 7, accuracy 0.9 or 0.8."""
    acc = 0.9 * (1 - 0.01) if rad_ok else 0.9 * (1 - 0.2)  # RAD 0.01 or 0.2 against acc_ref 0.9
    return lambda call: [{"clean_acc": 0.9, "target_pred": 9}, {"clean_acc": acc, "target_pred": 7, "prob_base": 0.6}]


def test_first_success_requires_rad_below_the_threshold():
    rows = [{"epoch": 1, "clean_acc": 0.5, "target_pred": 7}, {"epoch": 2, "clean_acc": 0.89, "target_pred": 7}]
    assert first_success(rows, base_class=7, acc_ref=0.9, max_rad=0.05)["epoch"] == 2
    assert first_success(rows[:1], base_class=7, acc_ref=0.9, max_rad=0.05) is None
    assert first_success(rows, base_class=7, acc_ref=None, max_rad=0.05) is None  # RAD undefined never counts


@pytest.mark.parametrize("rad_ok", [False, True])
def test_a_flip_counts_only_at_an_epoch_with_small_rad(tmp_path, digits, pretrained, rad_ok):
    attack = _attack(target_true_class=9, base_class=7, n_targets=2, max_poisons=3, max_iters=50, beta=0.1,
                     max_feature_distance=None)  # fmt: skip
    trials = FakeTrials(pretrained, _flip(rad_ok))
    metrics = attack.evaluate(data=digits, context=_context(tmp_path), trials=trials, output_dir=tmp_path)
    rows = list(csv.DictReader((tmp_path / "targets.csv").open()))
    assert len(rows) == 2 and metrics["n_targets"] == 2
    poisons = list(csv.DictReader((tmp_path / "poisons.csv").open()))
    assert len(poisons) == sum(int(r["n_poisons"]) for r in rows) and 0 <= metrics["poison_base_agreement"] <= 1
    if rad_ok:
        assert metrics["asr"] == 1.0 and metrics["n_trials"] == 2  # stops at each target's first success
        assert all(r["success"] == "True" and r["success_epoch"] == "2" and r["poisons_used"] == "1" for r in rows)
        assert metrics["mean_poisons_needed"] == 1.0
    else:
        assert metrics["asr"] == 0.0 and metrics["n_trials"] == 6 and metrics["mean_poisons_needed"] is None
        assert all(r["success"] == "False" for r in rows)
    assert metrics["rad"] == pytest.approx(0.01 if rad_ok else 0.2)


def test_a_trials_object_with_retrain_only_runs_the_trials_one_after_another(tmp_path, digits, pretrained):
    """The attack needs only ``retrain`` (then every trial runs all its epochs); the verdicts are the same."""
    attack = _attack(target_true_class=9, base_class=7, n_targets=2, max_poisons=3, max_iters=50, beta=0.1,
                     max_feature_distance=None)  # fmt: skip

    def script(call):  # the first trial fails; every later one flips the target at epoch 2 of 3
        flip = 7 if call else 9
        return [{"clean_acc": 0.9, "target_pred": 9}, {"clean_acc": 0.9, "target_pred": flip}, {"clean_acc": 0.9}]

    full, retrain_only = FakeTrials(pretrained, script), FakeTrials(pretrained, script)

    class RetrainOnly:
        acc_ref = retrain_only.acc_ref
        pretrained_model = retrain_only.pretrained_model

        def retrain(self, x, y, *, evaluate=None, desc="trial"):
            return retrain_only.retrain(x, y, evaluate=evaluate, desc=desc)

    a = attack.evaluate(data=digits, context=_context(tmp_path), trials=full, output_dir=tmp_path / "a")
    b = attack.evaluate(data=digits, context=_context(tmp_path), trials=RetrainOnly(), output_dir=tmp_path / "b")
    for key in ("asr", "n_trials", "mean_poisons_needed", "mean_trials_needed"):
        assert a[key] == b[key], key
    assert (a["asr"], a["n_trials"], a["mean_trials_needed"]) == (1.0, 3, 1.5)
    assert (a["n_trial_epochs"], b["n_trial_epochs"]) == (3 + 2 + 2, 3 + 3 + 3)  # early stop vs every epoch


@pytest.mark.parametrize("mode", ["oneshot", "multipoison"])
def test_trials_use_clean_labels_and_sorted_poisons(tmp_path, digits, pretrained, mode):
    attack = _attack(mode=mode, target_true_class=9, base_class=7, n_targets=1, max_poisons=4, max_iters=50,
                     beta=0.1, max_feature_distance=None)  # fmt: skip
    trials = FakeTrials(pretrained, lambda call: [{"clean_acc": 0.9, "target_pred": 9}])
    attack.evaluate(data=digits, context=_context(tmp_path), trials=trials, output_dir=tmp_path)
    sizes = [len(y) for _, y in trials.calls]
    assert sizes == ([1, 1, 1, 1] if mode == "oneshot" else [1, 2, 3, 4])
    for x, y in trials.calls:
        assert (y == 7).all() and x.min() >= 0 and x.max() <= 1
    if mode == "multipoison":  # each trial extends the previous one's poisons
        assert all(torch.equal(a[0], b[0][: len(a[0])]) for a, b in zip(trials.calls, trials.calls[1:]))


def test_poisons_are_filtered_by_feature_distance_and_sorted_by_perturbation():
    crafted = {
        "feature_distance": torch.tensor([1.0, 5.0, 0.5, 3.5]),
        "perturbation": torch.tensor([3.0, 0.1, 2.0, 1.0]),
    }
    assert ranked(crafted, max_feature_distance=3.5).tolist() == [3, 2, 0]
    assert ranked(crafted, max_feature_distance=None).tolist() == [1, 3, 2, 0]


def test_crafted_poisons_are_cached_across_runs(tmp_path, digits, pretrained, monkeypatch):
    attack = _attack(target_true_class=9, base_class=7, n_targets=2, max_poisons=1, max_iters=20)
    trials = FakeTrials(pretrained, lambda call: [{"clean_acc": 0.9, "target_pred": 9}])
    attack.evaluate(data=digits, context=_context(tmp_path), trials=trials, output_dir=tmp_path)
    monkeypatch.setattr(fc, "craft", lambda *a, **k: pytest.fail("crafted again"))
    attack.evaluate(data=digits, context=_context(tmp_path), trials=trials, output_dir=tmp_path)


# --- bad input ----------------------------------------------------------------------------------------------


def test_needs_the_retrain_scenario(digits, tmp_path):
    with pytest.raises(ConfigError) as err:
        _attack().validate(digits, context=_context(tmp_path, scenario="scratch"))
    assert err.value.field == "scenario" and "scenario=retrain" in str(err.value)
    with pytest.raises(ConfigError, match="scenario=retrain"):
        run(compose_cfg("attack=poison_frogs"), output_dir=tmp_path / "out")


@pytest.mark.parametrize(
    ("keys", "field"),
    [
        ({"n_targets": 0}, "attack.n_targets"),
        ({"n_targets": -3}, "attack.n_targets"),
        ({"n_targets": 10_000}, "attack.n_targets"),
        ({"base_class": 0, "target_true_class": 0}, "attack.base_class"),
        ({"base_class": 10}, "attack.base_class"),
        ({"mode": "many"}, "attack.mode"),
        ({"max_iters": 0}, "attack.max_iters"),
        ({"step_size": 0.0}, "attack.step_size"),
        ({"max_feature_distance": -1.0}, "attack.max_feature_distance"),
    ],
)
def test_bad_settings_name_the_field(digits, tmp_path, keys, field):
    with pytest.raises(ConfigError) as err:
        _attack(**keys).validate(digits, context=_context(tmp_path))
    assert err.value.field == field


# --- end to end ---------------------------------------------------------------------------------------------


def test_end_to_end_default_poisons_are_clean_label_and_small_beta_trades_that_for_success(tmp_path):
    # Tiny models train several times faster on one thread than on two contended ones.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _end_to_end(tmp_path)
    finally:
        torch.set_num_threads(threads)


def _end_to_end(tmp_path):
    out = tmp_path / "clean"
    metrics = run(compose_cfg(*E2E, "attack.max_poisons=2", "attack.max_feature_distance=null"), output_dir=out)
    assert metrics["status"] == "ok" and metrics["n_targets"] == 3 and metrics["seconds_per_target"] > 0
    # Default β: all 45 poisons per target stay near their bases (1/5 of the way for a linear model), and the
    # pretrained model still labels most of them 7 (measured: 0.71 agreement, distance 0.23).
    assert metrics["poison_base_agreement"] > 0.6 and metrics["poison_base_distance"] < 0.3
    rows = list(csv.DictReader((out / "targets.csv").open()))
    assert len(rows) == 3
    assert {"target_index", "success", "poisons_used", "success_epoch", "feature_distance", "prob_true",
            "prob_base", "poison_base_distance", "poison_base_agreement"} <= set(rows[0])  # fmt: skip
    poisons = list(csv.DictReader((out / "poisons.csv").open()))
    assert len(poisons) == sum(int(r["n_poisons"]) for r in rows) > 0
    as_base = [p["as_base"] == "True" for p in poisons]
    assert metrics["poison_base_agreement"] == pytest.approx(sum(as_base) / len(as_base))
    assert all((p["pretrained_pred"] == "7") == a for p, a in zip(poisons, as_base))
    assert sum(p["tried"] == "True" for p in poisons) == sum(int(r["trials"]) for r in rows)
    # A small explicit β buys success with poisons the model already calls 9: mislabelled copies of the target.
    dirty = run(compose_cfg(*E2E, "attack.beta=0.1", "attack.mode=multipoison", "attack.max_poisons=8"),
                output_dir=tmp_path / "dirty")  # fmt: skip
    assert dirty["asr"] > 0 and dirty["mean_poisons_needed"] >= 1 and dirty["rad"] < 0.05
    assert dirty["poison_base_agreement"] < 0.1 and dirty["poison_base_distance"] > 0.8
