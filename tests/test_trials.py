"""Batched retraining trials: a member computes what its trial computes alone, and alone is ``loop.train``."""

from __future__ import annotations

import copy
import csv

import pytest
import torch
from omegaconf import OmegaConf

import gsdefense.phases as phases
from gsdefense.attacks.base import PoisonedSet
from gsdefense.data import load_dataset
from gsdefense.errors import ConfigError
from gsdefense.models import build_model
from gsdefense.phases import TrialRunner, kept_rows, pretrained
from gsdefense.plan import prepare
from gsdefense.references import reference_accuracy
from gsdefense.training import fast_dp, loop
from gsdefense.training.adaptive import AdaptiveDPConfig
from gsdefense.training.dp import DPSGDConfig
from gsdefense.training.engine import poisson_rate
from gsdefense.training.optim import AdamConfig, SGDConfig
from gsdefense.training.trials import Trial, TrialSpec, check_stackable, train_trials
from tests.conftest import compose_cfg

OPT = SGDConfig(lr=0.05, momentum=0.9, batch_size=64, epochs=3)
DPS = {"vanilla": None, "dp": DPSGDConfig(clip=1.0, noise=0.3), "adaptive": AdaptiveDPConfig(clip=1.0, noise=0.3)}


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models train several times faster on one thread than on two contended ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits():
    return load_dataset(OmegaConf.create({"name": "digits"}), seed=0)


@pytest.fixture(scope="module")
def model(digits):
    torch.manual_seed(0)
    node = OmegaConf.create({"name": "mlp", "hidden": 32})
    return build_model(node, input_shape=digits.input_shape, num_classes=10, mean=digits.mean, std=digits.std)


def _flat(m: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in m.parameters()])


def _spec(digits, k: int, *, drop: float = 0.0, seed: int = 0, **kw) -> TrialSpec:
    """Trial ``seed``: the first k test rows as extras (labelled 7); without a fraction ``drop`` of the clean rows."""
    gen = torch.Generator().manual_seed(seed)
    keep = torch.rand(len(digits.y_train), generator=gen) >= drop if drop else None
    return TrialSpec(digits.x_test[:k], torch.full((k,), 7), noise_seed=100 + seed, batch_seed=200 + seed,
                     clean_keep=keep, desc=f"t{seed}", **kw)  # fmt: skip


def _run(model, digits, specs, dp, opt=OPT):
    return train_trials(model, digits.x_train, digits.y_train, specs, optimizer_cfg=opt, dp=dp, seed=3,
                        keep_models=True)  # fmt: skip


# --- a trial alone is loop.train on its training set, with the trial's batches --------------------------------


@pytest.mark.parametrize("name", list(DPS))
def test_a_trial_without_extra_rows_is_loop_train(digits, model, name):
    """No extras, no defense: the same batches, noise, steps and ε as ``loop.train`` on the clean set."""
    dp = DPS[name]
    ref = loop.train(copy.deepcopy(model), digits.x_train, digits.y_train, optimizer_cfg=OPT, dp=dp, seed=3,
                     noise_seed=100)  # fmt: skip
    [got] = _run(model, digits, [_spec(digits, 0)], dp)
    assert (_flat(ref.model) - _flat(model)).norm() > 0.1
    torch.testing.assert_close(_flat(got.model), _flat(ref.model), atol=1e-5, rtol=1e-4)
    assert got.epsilon == ref.epsilon and (got.epsilon is None) == (name != "dp")
    for a, b in zip(got.history, ref.history, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        # Vanilla rows carry no noise_std (None); pytest >= 9.2 refuses approx(None, rel=...), and None is exact.
        assert (a.get("noise_std") is None) == (b.get("noise_std") is None) == (name == "vanilla")
        if name != "vanilla":
            assert a["noise_std"] == pytest.approx(b["noise_std"], rel=1e-6)


@pytest.mark.parametrize("name", ["vanilla", "dp"])
def test_a_trial_with_extras_and_a_defense_is_loop_train_on_its_own_batches(digits, model, name, monkeypatch):
    """The trial's batch definition, fed to ``loop.train`` on the trial's own set (kept clean rows + extras).

    DP: the clean rows' Poisson masks of the shared sampler, each extra row in with probability q from the
    trial's batch generator, q and steps of the clean set, division by ⌊q·n_trial⌋. Vanilla: the clean rows'
    shuffled batches, each extra row in the batch of a uniformly random clean position.
    """
    dp, spec = DPS[name], _spec(digits, 5, drop=0.2)
    n, keep, k = len(digits.y_train), spec.clean_keep, 5
    x = torch.cat([digits.x_train[keep], spec.x_extra])
    y = torch.cat([digits.y_train[keep], spec.y_extra])
    position = keep.long().cumsum(0) - 1  # clean row → its row in x
    q, _ = poisson_rate(n, OPT.batch_size)
    steps = round(1 / q) if dp else -(-n // OPT.batch_size)
    extra_gen = torch.Generator().manual_seed(spec.batch_seed)
    original = {"poisson": loop.poisson_batches, "vanilla": loop.vanilla_batches}

    def batches(clean):
        if dp:
            chosen = torch.rand(steps, k, generator=extra_gen) < q
        else:
            step = torch.randint(n, (k,), generator=extra_gen) // OPT.batch_size
            chosen = torch.arange(steps)[:, None] == step[None]
        for s, idx in enumerate(clean):
            yield torch.cat([position[idx[keep[idx]]], int(keep.sum()) + chosen[s].nonzero().squeeze(1)])

    monkeypatch.setattr(loop, "poisson_batches", lambda n_, rate, **kw: batches(original["poisson"](n, rate, **kw)))
    monkeypatch.setattr(loop, "poisson_plan", loop.poisson_batches, raising=False)  # the padded twin, if any
    monkeypatch.setattr(loop, "vanilla_batches", lambda n_, b, **kw: list(batches(original["vanilla"](n, b, **kw))))
    monkeypatch.setattr(fast_dp, "poisson_rate", lambda n_train, batch_size: (q, int(n_train * q)))
    ref = loop.train(copy.deepcopy(model), x, y, optimizer_cfg=OPT, dp=dp, seed=3, noise_seed=spec.noise_seed)
    [got] = _run(model, digits, [spec], dp)
    torch.testing.assert_close(_flat(got.model), _flat(ref.model), atol=1e-5, rtol=1e-4)
    assert got.epsilon == ref.epsilon
    assert [r["train_loss"] for r in got.history] == pytest.approx([r["train_loss"] for r in ref.history], rel=1e-5)


# --- batched members ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(DPS))
def test_members_equal_their_trials_alone(digits, model, name):
    """Different extras, different defended clean rows, own seeds: each member is its run alone."""
    dp = DPS[name]
    specs = [_spec(digits, k, drop=0.1 * (k % 3), seed=k) for k in (0, 1, 4, 9)]
    batched = _run(model, digits, specs, dp)
    for spec, got in zip(specs, batched, strict=True):
        [alone] = _run(model, digits, [spec], dp)
        torch.testing.assert_close(_flat(got.model), _flat(alone.model), atol=1e-5, rtol=1e-4)
        assert got.epsilon == alone.epsilon and len(got.history) == OPT.epochs
        assert [r["train_loss"] for r in got.history] == pytest.approx([r["train_loss"] for r in alone.history])
    assert len({round(float(_flat(r.model).sum()), 4) for r in batched}) == len(specs)  # they did differ


def test_each_member_draws_its_own_noise_at_its_own_scale(digits, model):
    """Noise-dominated updates (σ = 100, no momentum): a member's noise is its seed's stream — equal seeds give
    equal updates, distinct seeds uncorrelated ones — with std lr·σC/⌊q·n_m⌋·√steps for its own n_m."""
    dp = DPSGDConfig(clip=1.0, noise=100.0)
    opt = SGDConfig(lr=1e-3, momentum=0.0, batch_size=64, epochs=2)
    a, b, twin, half = _spec(digits, 0, seed=1), _spec(digits, 0, seed=2), _spec(digits, 0, seed=1), _spec(
        digits, 0, drop=0.5, seed=3)  # fmt: skip
    results = _run(model, digits, [a, b, twin, half], dp, opt=opt)
    deltas = [_flat(r.model) - _flat(model) for r in results]
    torch.testing.assert_close(deltas[0], deltas[2], rtol=0, atol=1e-6)
    assert abs(float(torch.corrcoef(torch.stack(deltas[:2]))[0, 1])) < 0.05
    n = len(digits.y_train)
    q, _ = poisson_rate(n, opt.batch_size)
    steps = opt.epochs * round(1 / q)
    for delta, rows in ((deltas[0], n), (deltas[3], int(half.clean_keep.sum()))):
        expected = opt.lr * dp.noise * dp.clip / int(rows * q) * steps**0.5
        assert float(delta.std()) == pytest.approx(expected, rel=0.05)


@pytest.mark.parametrize("opt", [OPT, AdamConfig(lr=0.01, batch_size=64, epochs=3)], ids=["sgd", "adam"])
def test_decided_members_leave_and_the_rest_go_on_unchanged(digits, model, opt):
    """A member stops after the epoch where ``until`` holds; later trials of its sequence are cancelled; the
    survivors (restacked with their optimizer state) still equal their runs alone."""
    dp = DPS["dp"]

    def after(epoch):
        return lambda row: row["epoch"] >= epoch

    specs = [_spec(digits, 1, seed=0, until=after(1), sequence=0), _spec(digits, 2, seed=1, sequence=0),
             _spec(digits, 3, seed=2, until=after(2), sequence=1), _spec(digits, 4, seed=3, sequence=2),
             _spec(digits, 5, seed=4, sequence=1)]  # fmt: skip
    results = _run(model, digits, specs, dp, opt=opt)
    assert [len(r.history) for r in results] == [1, 1, 2, 3, 2]
    assert [r.stopped_epoch for r in results] == [1, None, 2, None, None]
    assert [r.cancelled for r in results] == [False, True, False, False, True]
    [alone] = _run(model, digits, [_spec(digits, 4, seed=3)], dp, opt=opt)
    torch.testing.assert_close(_flat(results[3].model), _flat(alone.model), atol=1e-5, rtol=1e-4)
    assert results[3].epsilon == alone.epsilon > results[0].epsilon


def test_a_model_without_stacked_twins_is_refused_in_one_line(digits):
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 8), torch.nn.LayerNorm(8))
    with pytest.raises(ConfigError) as err:
        check_stackable(model)
    assert err.value.field == "model" and "LayerNorm" in str(err.value)


def test_a_trial_whose_defense_kept_fewer_rows_than_batches_is_refused_in_one_line(digits, model):
    """q·rows < 1 leaves no expected batch to average over (it divided by zero before)."""
    keep = torch.zeros(len(digits.y_train), dtype=torch.bool)
    keep[:3] = True
    spec = TrialSpec(digits.x_test[:2], torch.full((2,), 7), noise_seed=1, batch_seed=2, clean_keep=keep)
    with pytest.raises(ConfigError) as err:
        _run(model, digits, [spec], DPSGDConfig(clip=1.0, noise=1.0))
    assert err.value.field == "defense" and "5 training rows" in str(err.value)


# --- TrialRunner: the defense per member, and Poison Frogs batched vs one after another ------------------------


class OneByOne(TrialRunner):
    """Each sequence's trials through ``retrain``, one after another, up to the first that reached ``until``."""

    def retrain_sequences(self, sequences, *, until=None):
        out = []
        for trials in sequences:
            out.append([])
            for t in trials:
                out[-1].append(self.retrain(t.x, t.y, evaluate=t.evaluate, desc=t.desc, until=until))
                if out[-1][-1].stopped_epoch is not None:
                    break
        return out


FROGS = ["attack=poison_frogs", "scenario=retrain", "scenario.pretrain_epochs=5", "scenario.retrain_epochs=4",
         "telemetry.enabled=false", "attack.target_true_class=9", "attack.base_class=7", "attack.n_targets=4",
         "attack.max_iters=100", "attack.beta=0.1", "attack.max_feature_distance=null", "attack.max_poisons=6",
         "optimizer.batch_size=128", "optimizer.lr=0.2"]  # fmt: skip
SMALL_NOISE = ["dp.clip=4", "dp.noise=0.05"]


def _runner(cls, plan, **kw) -> TrialRunner:
    dp = plan.dp if plan.scenario.retrain_private else None
    pre = pretrained(plan, dp=plan.dp if plan.scenario.pretrain_private else None)
    return cls(plan=plan, pre=pre, dp=dp, acc_ref=reference_accuracy(plan, dp=None).clean_acc, noise_seed=5, **kw)


def test_the_defense_runs_per_trial_and_each_member_keeps_its_own_rows(tmp_path):
    """sphere with oracle=false fits on clean + poisons: each trial's poisons move the sphere, so the members drop
    different clean rows. A member trains on exactly the rows the defense kept for it, as the trial alone does."""
    plan = prepare(compose_cfg(*FROGS, *SMALL_NOISE, "defense=sphere", "defense.oracle=false", "defense.percentile=80"))
    runner = _runner(TrialRunner, plan)
    far = torch.ones(6, *plan.data.input_shape)  # all-white 7s pull the class-7 centroid
    trials = [(far[:k], torch.full((k,), 7)) for k in (1, 6)]
    specs = []
    for x, y in trials:
        spec, info = runner._spec(Trial(x, y, desc=f"d{len(y)}"), until=None, sequence=None)
        poisoned = PoisonedSet(torch.cat([plan.data.x_train, x]), torch.cat([plan.data.y_train, y]),
                               torch.arange(len(plan.data.y_train) + len(y)) >= len(plan.data.y_train))  # fmt: skip
        kept, _ = plan.defense.apply(poisoned, data=plan.data)
        mask = kept_rows(poisoned, kept)
        assert torch.equal(torch.cat([plan.data.x_train[spec.clean_keep], spec.x_extra]), kept.x)
        assert info["n_removed"] == int((~mask).sum()) > 0
        specs.append(spec)
    assert not torch.equal(specs[0].clean_keep, specs[1].clean_keep)  # the defense removed different clean rows
    batched = runner._train(specs, keep_models=True)
    alone = OneByOne(**{f: getattr(runner, f) for f in ("plan", "pre", "dp", "acc_ref", "noise_seed")})
    for (x, y), got in zip(trials, batched):
        ref = alone.retrain(x, y, desc=f"d{len(y)}")
        torch.testing.assert_close(_flat(got.model), _flat(ref.model), atol=1e-5, rtol=1e-4)
    # Through retrain_sequences, the defense's counters add up over the trials as one after another.
    sequences = [[Trial(x, y, desc=f"s{i}-{len(y)}") for x, y in trials] for i in range(2)]
    fresh = {f: getattr(runner, f) for f in ("plan", "pre", "dp", "acc_ref", "noise_seed")}
    one, many = OneByOne(**fresh), TrialRunner(**fresh)
    losses = [[[r["train_loss"] for r in res.history] for res in seq] for seq in one.retrain_sequences(sequences)]
    assert [[[r["train_loss"] for r in res.history] for res in seq] for seq in many.retrain_sequences(sequences)] == [
        [pytest.approx(loss, rel=1e-5) for loss in seq] for seq in losses]  # fmt: skip
    assert many.defense_metrics() == one.defense_metrics() and one.defense_metrics()["n_removed"] > 0
    assert one.defense_metrics()["n_poisons_offered"] == 2 * (1 + 6)
    reordered = PoisonedSet(kept.x.flip(0), kept.y.flip(0), kept.is_poison.flip(0))
    with pytest.raises(RuntimeError, match="ordered subset"):
        kept_rows(poisoned, reordered)


@pytest.mark.parametrize("mode", ["oneshot", "multipoison"])
@pytest.mark.parametrize("dp", ["none", "dpsgd"])
def test_poison_frogs_batched_equals_one_after_another(tmp_path, mode, dp, monkeypatch):
    """Verdicts, success epochs, poisons used, trials, epochs and ε of the batched run equal the sequential run's,
    with rounds of at most 5 members mixing targets."""
    # seed 2: a DP multipoison target succeeds after failed trials with these Poisson batches (measured)
    seed = ["seed=2"] if (mode, dp) == ("multipoison", "dpsgd") else []
    plan = prepare(compose_cfg(*FROGS, f"attack.mode={mode}", f"dp={dp}", *(SMALL_NOISE if dp == "dpsgd" else []),
                               *seed))  # fmt: skip
    sizes: dict[str, list[int]] = {}
    metrics = {}
    for name, cls, kw in (("batched", TrialRunner, {"max_members": 5}), ("sequential", OneByOne, {})):
        sizes[name] = []

        def recording(model, x, y, specs, _sizes=sizes[name], **kw):
            _sizes.append(len(specs))
            return train_trials(model, x, y, specs, **kw)

        monkeypatch.setattr(phases, "train_trials", recording)
        out = tmp_path / name
        out.mkdir()
        metrics[name] = plan.attack.evaluate(data=plan.data, context=plan.context, trials=_runner(cls, plan, **kw),
                                             output_dir=out)  # fmt: skip
        metrics[name]["rows"] = list(csv.DictReader((out / "targets.csv").open()))
    batched, sequential = metrics["batched"], metrics["sequential"]
    keys = ("success", "success_epoch", "poisons_used", "trials", "target_index")
    assert [[r[k] for k in keys] for r in batched["rows"]] == [[r[k] for k in keys] for r in sequential["rows"]]
    for key in ("asr", "n_trials", "n_trial_epochs", "epsilon", "mean_poisons_needed", "n_diverged_trials"):
        assert batched[key] == sequential[key], key
    assert batched["rad"] == pytest.approx(sequential["rad"], abs=1e-6)
    assert max(sizes["batched"]) == 5 and len(sizes["batched"]) >= 2 and set(sizes["sequential"]) == {1}
    assert (dp == "dpsgd") == (batched["epsilon"] is not None)
    if mode == "multipoison":  # successes after failed trials; vanilla's stop before the last epoch (measured)
        assert batched["asr"] > 0 and any(r["success"] == "True" and r["trials"] != "1" for r in batched["rows"])
        assert (batched["n_trial_epochs"] < batched["n_trials"] * 4) == (dp == "none")


def test_kept_rows_reads_the_defense_mask_even_where_rows_cannot_be_told_apart():
    """``defenses.keep`` hands its mask on: of two identical rows, keeping only the second is recovered exactly
    (row matching cannot tell them apart, and a projection's rounding depends on the matrix's shape)."""
    from gsdefense.defenses import keep

    x = torch.tensor([[1.0, 2.0], [1.0, 2.0], [3.0, 4.0]])
    poisoned = PoisonedSet(x, torch.tensor([0, 0, 1]), torch.tensor([False, False, True]))
    mask = torch.tensor([False, True, True])
    kept, info = keep(poisoned, mask)
    assert torch.equal(kept_rows(poisoned, kept), mask) and info == {"n_removed": 1, "n_poison_removed": 0}
    without = PoisonedSet(kept.x, kept.y, kept.is_poison)  # a defense that builds its own set: matched by value
    with pytest.raises(RuntimeError, match="ordered subset"):
        kept_rows(poisoned, without)
