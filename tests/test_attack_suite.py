"""Collision, Steinhardt, Narcissus and the sphere/slab defenses: each one's defining property."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from scipy.optimize import minimize

import gsdefense.attacks.narcissus as narcissus_module
from gsdefense import metrics as M
from gsdefense.attacks import RunContext, build_attack
from gsdefense.attacks.base import PoisonedSet
from gsdefense.attacks.feasible import FeasibleSet, maximize_linear
from gsdefense.data import load_dataset, make_bundle
from gsdefense.defenses import build_defense
from gsdefense.errors import ConfigError
from gsdefense.models import build_model
from gsdefense.run import prepare, run
from gsdefense.training.loop import train
from gsdefense.training.optim import OPTIMIZERS
from tests.conftest import compose_cfg


@pytest.fixture(scope="module")
def digits():
    return load_dataset(OmegaConf.create({"name": "digits"}), seed=0)


@pytest.fixture(scope="module")
def cancer():
    return load_dataset(OmegaConf.create({"name": "breast_cancer"}), seed=0)


def _attack(data, **node):
    attack = build_attack(OmegaConf.create(node))
    attack.validate(data)
    return attack


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- collision ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("budget, count", [(dict(n_poisons=30), 30), (dict(n_poisons=None, poison_ratio=0.05), 67)])
def test_collision_poisons_follow_the_watermark_formula_and_keep_the_base_label(digits, budget, count):
    attack = _attack(digits, name="collision", alpha=0.3, base_class=4, other_class=7, **budget)
    out = attack.poison(digits, generator=_gen())
    n = len(digits.y_train)
    assert len(out.y) == n + count and out.n_poison == count and out.is_poison[n:].all()
    assert torch.equal(out.x[:n], digits.x_train) and torch.equal(out.y[:n], digits.y_train)
    assert (out.y[n:] == 4).all()
    base, other = attack.pairs
    assert (digits.y_train[base] == 4).all() and (digits.y_train[other] == 7).all()
    assert len(set(base.tolist())) == count and len(set(other.tolist())) == count
    expected = (0.7 * digits.x_train[base] + 0.3 * digits.x_train[other]).clamp(0, 1)
    torch.testing.assert_close(out.x[n:], expected)


def test_collision_alpha_one_is_the_other_image_labelled_base(digits):
    attack = _attack(digits, name="collision", alpha=1.0, n_poisons=10)
    out = attack.poison(digits, generator=_gen())
    torch.testing.assert_close(out.x[-10:], digits.x_train[attack.pairs[1]])
    assert (out.y[-10:] == 0).all()


# --- Steinhardt: the exact inner maximisation ----------------------------------------------------------------------


def test_maximize_linear_matches_a_general_solver_on_small_problems():
    rng = torch.Generator().manual_seed(0)
    gaps = []
    for _ in range(40):
        c, v = torch.randn(2, 1, 5, generator=rng, dtype=torch.float64)
        mu = torch.rand(1, 5, generator=rng, dtype=torch.float64)
        r = torch.rand(1, generator=rng, dtype=torch.float64) + 0.1
        s = torch.rand(1, generator=rng, dtype=torch.float64) * 0.5 + 0.01
        u = maximize_linear(c, radius=r, lower=-mu, upper=1 - mu, slab=(v, s))[0].numpy()
        cn, vn, rn, sn = c[0].numpy(), v[0].numpy(), float(r), float(s)
        assert u @ u <= rn**2 * (1 + 1e-9) and abs(u @ vn) <= sn * (1 + 1e-9)
        assert (u >= -mu[0].numpy() - 1e-12).all() and (u <= 1 - mu[0].numpy() + 1e-12).all()
        ref = minimize(
            lambda z, cn=cn: -(cn @ z),
            np.zeros(5),
            jac=lambda z, cn=cn: -cn,
            bounds=list(zip(-mu[0].numpy(), 1 - mu[0].numpy())),
            constraints=[
                {"type": "ineq", "fun": lambda z, rn=rn: rn**2 - z @ z},
                {"type": "ineq", "fun": lambda z, sn=sn, vn=vn: sn - z @ vn},
                {"type": "ineq", "fun": lambda z, sn=sn, vn=vn: sn + z @ vn},
            ],
            method="SLSQP",
            options={"ftol": 1e-12, "maxiter": 500},
        )
        gaps.append(-ref.fun - cn @ u)
    assert max(gaps) < 1e-6, "a general-purpose solver found a better feasible point"


def test_argmax_beats_many_random_feasible_points(cancer):
    feasible = FeasibleSet.fit(cancer.x_train, cancer.y_train, num_classes=2, percentile=70, box=cancer.box)
    rng = torch.Generator().manual_seed(1)
    for label in (0, 1):
        c = torch.randn(1, 30, generator=rng, dtype=torch.float64)
        best = feasible.argmax_linear(c, torch.tensor([label]))
        # random points: centroid + random direction × random radius, clipped to the box; keep the feasible ones
        direction = torch.randn(20000, 30, generator=rng, dtype=torch.float64)
        scale = feasible.radii[label] * torch.rand(20000, 1, generator=rng, dtype=torch.float64) ** (1 / 3)
        pts = (feasible.centroids[label] + direction / direction.norm(dim=1, keepdim=True) * scale).clamp(0, 1)
        pts = torch.cat([pts, cancer.x_train.double()])
        labels = torch.full((len(pts),), label)
        pts = pts[feasible.contains(pts, labels)]
        assert len(pts) > 1000
        assert feasible.contains(best, torch.tensor([label]), tol=1e-9).all()
        assert (pts @ c[0]).max() <= (best @ c[0]).item() + 1e-9


def test_steinhardt_online_poisons_lie_in_sphere_slab_and_box_and_the_bound_decreases(cancer):
    attack = _attack(cancer, name="steinhardt", method="online", percentile=70, poison_ratio=0.1, burn_in=100)
    out = attack.poison(cancer, generator=_gen())
    n, count = len(cancer.y_train), round(0.1 * len(cancer.y_train))
    assert out.n_poison == count and out.is_poison[n:].all() and torch.equal(out.x[:n], cancer.x_train)
    x_p, y_p = out.x[n:], out.y[n:]
    assert set(y_p.tolist()) <= {0, 1}
    assert ((x_p >= 0) & (x_p <= 1)).all()
    clean_set = FeasibleSet.fit(cancer.x_train, cancer.y_train, num_classes=2, percentile=70, box=cancer.box)
    assert clean_set.contains(x_p, y_p).all()
    # the oracle sphere+slab defense at the same percentile keeps every poison
    defense = build_defense(OmegaConf.create({"name": "sphere", "slab": True}))
    _, info = defense.apply(out, data=cancer)
    assert info["n_poison_removed"] == 0 and info["n_removed"] > 0
    bounds = np.array(attack.bounds)
    assert len(bounds) == 100 + count and np.isfinite(bounds).all()
    assert (np.diff(bounds) <= 0).all() and bounds[-1] < bounds[0] / 2
    assert attack.extra_metrics()["certified_upper_bound"] == pytest.approx(bounds[-1])


@pytest.mark.slow
def test_steinhardt_hurts_more_than_label_flip_at_20_percent(tmp_path):
    base = ["dataset=breast_cancer", "model=lr", "dp=none", "attack.poison_ratio=0.2", "seed=0"]
    # Algorithm 1 (oracle set), which crafts in seconds; the slab method needs its 200 iterations (≈ 45 s) here
    sota = run(compose_cfg(*base, "attack=steinhardt", "attack.method=online"), output_dir=tmp_path / "sota")
    flip = run(compose_cfg(*base, "attack=label_flip", "attack.mode=append"), output_dir=tmp_path / "flip")
    assert sota["n_poison"] == flip["n_poison"] == 85
    assert sota["certified_upper_bound"] > 0
    assert sota["rad"] > flip["rad"] + 0.02


# --- sphere / slab defenses ------------------------------------------------------------------------------------------


def _toy() -> tuple:
    """Two classes in 2-D with centroids μ0 = (0.3, 0.5), μ1 = (0.7, 0.5): each is μ + (±0.02, 0), (0, ±0.1).

    At percentile 100: r = 0.1 (the y-offsets) and s = |⟨(0.02, 0), μ0 − μ1⟩| = 0.008 (the x-offsets).
    """
    offsets = torch.tensor([[0.02, 0.0], [-0.02, 0.0], [0.0, 0.1], [0.0, -0.1]])
    x = torch.cat([torch.tensor([0.3, 0.5]) + offsets, torch.tensor([0.7, 0.5]) + offsets])
    y = torch.tensor([0] * 4 + [1] * 4)
    data = make_bundle(name="toy", x_train=x, y_train=y, x_test=x, y_test=y, class_names=["a", "b"])
    poisons = torch.tensor(
        [
            [0.31, 0.52],  # class 0, inside both: sphere 0.022, slab 0.004
            [0.3, 0.65],  # class 0, outside the sphere only: sphere 0.15, slab 0
            [0.35, 0.5],  # class 0, outside the slab only: sphere 0.05, slab 0.02
            [0.65, 0.4],  # class 1, outside both: sphere 0.112, slab 0.02
        ]
    )
    labels = torch.tensor([0, 0, 0, 1])
    poisoned = PoisonedSet(x=torch.cat([x, poisons]), y=torch.cat([y, labels]), is_poison=torch.arange(12) >= 8)
    return data, poisoned


@pytest.mark.parametrize(
    "name, extra, removed",
    [
        ("sphere", {}, [1, 3]),
        ("slab", {}, [2, 3]),
        ("sphere", {"slab": True}, [1, 2, 3]),
        ("slab", {"sphere": True}, [1, 2, 3]),
    ],
)
def test_sphere_and_slab_remove_exactly_the_points_outside(name, extra, removed):
    data, poisoned = _toy()
    defense = build_defense(OmegaConf.create({"name": name, "percentile": 100, **extra}))
    defense.validate(data)
    kept, info = defense.apply(poisoned, data=data)
    assert info == {"n_removed": len(removed), "n_poison_removed": len(removed)}
    survivors = [i for i in range(4) if i not in removed]
    torch.testing.assert_close(kept.x[8:], poisoned.x[8:][survivors])
    assert torch.equal(kept.x[:8], data.x_train) and kept.n_poison == len(survivors)
    torch.testing.assert_close(defense.feasible.radii, torch.tensor([0.1, 0.1], dtype=torch.float64))
    torch.testing.assert_close(defense.feasible.slab_radii, torch.tensor([0.008, 0.008], dtype=torch.float64))


def test_clean_points_outside_a_lower_percentile_count_as_removed_but_not_as_poison():
    data, poisoned = _toy()
    _, info = build_defense(OmegaConf.create({"name": "sphere", "percentile": 40})).apply(poisoned, data=data)
    # r = 40th percentile of (0.02, 0.02, 0.1, 0.1) = 0.02 + 0.2·0.08: the four y-offset clean points go
    assert info == {"n_removed": 4 + 3, "n_poison_removed": 3}


def test_data_dependent_defense_fits_the_poisoned_set():
    data, poisoned = _toy()
    dependent = build_defense(OmegaConf.create({"name": "sphere", "percentile": 100, "oracle": False}))
    _, info = dependent.apply(poisoned, data=data)
    class0 = poisoned.x[poisoned.y == 0].double()
    torch.testing.assert_close(dependent.feasible.centroids[0], class0.mean(0))
    assert info == {"n_removed": 0, "n_poison_removed": 0}  # the 100th percentile of its own data keeps all


# --- Narcissus ------------------------------------------------------------------------------------------------------


def _context(tmp_path: Path, model: str = "mlp", epochs: int = 10) -> RunContext:
    optimizer = OPTIMIZERS.config(OmegaConf.create({"name": "sgd", "epochs": epochs}))
    return RunContext(
        seed=0,
        device=torch.device("cpu"),
        cache_dir=tmp_path / "cache",
        model_name=model,
        model_node=OmegaConf.create({"name": model}),
        optimizer=optimizer,
    )


def test_narcissus_is_clean_label_bounded_and_beats_a_random_trigger(digits, tmp_path):
    ctx = _context(tmp_path)
    attack = _attack(digits, name="narcissus", poison_ratio=0.05, target_class=3, eps=32 / 255, trigger_steps=150)
    out = attack.poison(digits, generator=_gen(), context=ctx)
    assert attack.delta.abs().max() <= attack.cfg.eps + 1e-7 and attack.delta.abs().max() > 0
    assert torch.equal(out.y, digits.y_train), "labels never change"
    changed = (out.x != digits.x_train).flatten(1).any(1)
    assert (digits.y_train[changed] == 3).all() and torch.equal(changed, out.is_poison)
    assert out.n_poison == round(0.05 * len(digits.y_train))
    assert ((out.x[changed] - digits.x_train[changed]).abs() <= attack.cfg.eps + 1e-6).all()

    torch.manual_seed(0)
    model = build_model(ctx.model_node, input_shape=(1, 8, 8), num_classes=10, mean=digits.mean, std=digits.std)
    victim = train(model, out.x, out.y, optimizer_cfg=ctx.optimizer, dp=None, seed=0).model
    x_trig, y_trig = M.backdoor_test_set(attack, digits.x_test, digits.y_test)
    target = torch.full_like(y_trig, 3)
    asr = M.accuracy(M.predict(victim, x_trig), target)
    sign = torch.randint(0, 2, attack.delta.shape, generator=_gen(1)) * 2 - 1
    random = (digits.x_test[digits.y_test != 3] + 3 * attack.cfg.eps * sign).clamp(0, 1)
    asr_random = M.accuracy(M.predict(victim, random), target)
    assert asr > asr_random + 0.4, (asr, asr_random)


def test_narcissus_trigger_is_cached_across_runs_and_budgets(digits, tmp_path, monkeypatch):
    ctx = _context(tmp_path, epochs=1)
    first = _attack(digits, name="narcissus", trigger_steps=5)
    first.poison(digits, generator=_gen(), context=ctx)
    assert first.cache_hit is False and first.extra_metrics()["trigger_cached"] is False

    def fail(*args, **kwargs):
        raise AssertionError("the trigger was recomputed")

    monkeypatch.setattr(narcissus_module.Narcissus, "_optimise", fail)
    second = _attack(digits, name="narcissus", trigger_steps=5, poison_ratio=0.02, test_magnification=2.0)
    second.poison(digits, generator=_gen(5), context=ctx)
    assert second.cache_hit is True and torch.equal(first.delta, second.delta)
    other = _attack(digits, name="narcissus", trigger_steps=6)
    with pytest.raises(AssertionError, match="recomputed"):
        other.poison(digits, generator=_gen(), context=dataclasses.replace(ctx))


# --- bad input ------------------------------------------------------------------------------------------------------

BAD = [
    (["attack=steinhardt", "model=mlp", "dataset=breast_cancer"], "model.name"),
    (["attack=steinhardt", "model=lr", "dataset=digits"], "dataset.classes"),
    (["attack=steinhardt", "model=lr", "dataset=breast_cancer", "attack.percentile=0"], "attack.percentile"),
    (["attack=steinhardt", "model=lr", "dataset=breast_cancer", "attack.loss=square"], "attack.loss"),
    (["attack=steinhardt", "model=lr", "dataset=breast_cancer", "attack.eta=0"], "attack.eta"),
    (["attack=steinhardt", "model=lr", "dataset=breast_cancer", "attack.method=sdp"], "attack.method"),
    (["attack=steinhardt", "model=lr", "dataset=breast_cancer", "attack.loss=logistic"], "attack.loss"),
    (["attack=steinhardt", "model=lr", "dataset=breast_cancer", "attack.iterations=0"], "attack.iterations"),
    (["attack=steinhardt", "model=lr", "dataset=breast_cancer", "attack.retrain_epochs=0"], "attack.retrain_epochs"),
    (["attack=collision", "dataset=digits", "dataset.classes=[3,12]"], "dataset.classes"),
    (["attack=collision", "dataset=breast_cancer", "attack.base_class=5"], "attack.base_class"),
    (["attack=collision", "attack.other_class=0"], "attack.other_class"),
    (["attack=collision", "attack.alpha=1.5"], "attack.alpha"),
    (["attack=collision", "attack.alpha=-0.1"], "attack.alpha"),
    (["attack=collision", "attack.n_poisons=-1"], "attack.n_poisons"),
    (["attack=collision", "attack.n_poisons=1000"], "attack.n_poisons"),
    (["attack=collision", "attack.poison_ratio=0.1"], "attack.n_poisons"),  # both set
    (["attack=narcissus", "attack.eps=0"], "attack.eps"),
    (["attack=narcissus", "attack.eps=-0.1"], "attack.eps"),
    (["attack=narcissus", "attack.trigger_steps=0"], "attack.trigger_steps"),
    (["attack=narcissus", "attack.surrogate_model=vgg"], "attack.surrogate_model"),
    (["attack=narcissus", "attack.surrogate_fraction=0"], "attack.surrogate_fraction"),
    (["attack=narcissus", "attack.poison_ratio=0.5"], "attack.poison_ratio"),
    (["defense=slab"], "defense.slab"),
    (["defense=sphere", "defense.percentile=0"], "defense.percentile"),
    (["defense=sphere", "defense.sphere=false"], "defense.sphere"),
]


@pytest.mark.parametrize("overrides, field", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_input_names_the_field(overrides, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        prepare(compose_cfg(*overrides))
