"""Steinhardt et al.'s data-dependent sphere + slab attack (``method: slab``): each piece's defining property."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import gsdefense.attacks.steinhardt as steinhardt_module
from gsdefense.attacks import RunContext, build_attack, slab_inner
from gsdefense.attacks.feasible import FeasibleSet
from gsdefense.attacks.slab_attack import allot, check_schedule, retrain
from gsdefense.data import load_dataset
from gsdefense.run import run
from tests.conftest import compose_cfg, run_cli

FAST = ["attack.iterations=12", "attack.random_splits=3", "attack.retrain_epochs=1"]  # the attack, shortened


@pytest.fixture(scope="module")
def cancer():
    return load_dataset(OmegaConf.create({"name": "breast_cancer"}), seed=0)


def _slab(data, **node):
    attack = build_attack(OmegaConf.create({"name": "steinhardt", "method": "slab", **node}))
    attack.validate(data)
    return attack


# --- the inner problem ----------------------------------------------------------------------------------------------


def _instance(seed: int, k: int = 5) -> dict:
    rng = np.random.default_rng(seed)
    cent = rng.normal(size=(2, k))
    return dict(
        centroids=cent,
        theta=rng.normal(size=k) * 0.3,
        bias=float(rng.normal() * 0.1),
        priors=np.array([0.5, 0.5]),
        masses=0.4 * rng.dirichlet([0.5, 0.5, 0.5, 0.5]),
        radii=rng.uniform(0.5, 1.5, size=2),
        half_widths=rng.uniform(0.1, 0.6, size=2),
    )


@pytest.mark.parametrize("seed", range(6))
def test_inner_solution_is_feasible_and_beats_random_feasible_configurations(seed):
    inst = _instance(seed)
    value, points = slab_inner.solve(**inst)
    assert np.isfinite(value)
    check = {k: v for k, v in inst.items() if k not in ("theta", "bias")}
    assert slab_inner.slab_violation(points, **check).max() <= 1e-6
    rng = np.random.default_rng(100 + seed)
    q, t, b = inst["masses"], inst["theta"], inst["bias"]
    best_random, feasible = -np.inf, 0
    for _ in range(20000):  # random configurations around the clean centroids; keep the feasible ones
        cand = inst["centroids"][slab_inner.CLASS] + rng.normal(size=points.shape) * rng.uniform(0.05, 1.5)
        margins_ok = cand[0] @ t + b <= 1 and cand[2] @ t + b >= -1
        if margins_ok and slab_inner.slab_violation(cand, **check).max() <= 0:
            feasible += 1
            best_random = max(best_random, q[0] * (1 - cand[0] @ t - b) + q[2] * (1 + cand[2] @ t + b))
    assert feasible > 50
    assert value >= best_random - 1e-9


def test_inner_value_is_the_hinge_loss_of_the_support_points():
    inst = _instance(7)
    value, p = slab_inner.solve(**inst)
    q, t, b = inst["masses"], inst["theta"], inst["bias"]
    assert value == pytest.approx(q[0] * (1 - p[0] @ t - b) + q[2] * (1 + p[2] @ t + b), rel=1e-9)


def test_poisoned_centroids_let_the_poisons_go_further_than_the_clean_radius():
    """One point per class with mass q: the sphere around the moved centroid reaches r·(p + q)/p from μ."""
    inst = _instance(3, k=4) | {"masses": np.array([0.2, 0.0, 0.2, 0.0]), "half_widths": np.array([50.0, 50.0])}
    _, p = slab_inner.solve(**inst)
    reach = np.linalg.norm(p[[0, 2]] - inst["centroids"], axis=1)
    np.testing.assert_allclose(reach, inst["radii"] * (0.5 + 0.2) / 0.5, rtol=1e-5)


# --- the attack loop ------------------------------------------------------------------------------------------------


def test_schedule_and_allotment_follow_the_released_code():
    assert sorted(check_schedule(200)) == [*range(3, 49, 3), *range(50, 201, 10)]
    assert sorted(check_schedule(7)) == [3, 6, 7]
    np.testing.assert_array_equal(allot(np.array([0.2, 0.0, 0.7, 0.1]) * 0.4, 4320), [864, 0, 3024, 432])
    np.testing.assert_array_equal(allot(np.array([1.0, 1.0, 1.0, 0.0]), 10), [4, 3, 3, 0])


def test_retrain_fits_each_candidate_within_the_norm_ball():
    """Separable data: 30 correctly labelled copies keep it separable; 30 flipped copies break the fit."""
    x = np.array([[0.0, 1.0], [0.0, 2.0], [1.0, 0.0], [2.0, 0.0]])
    sign = np.array([1.0, 1.0, -1.0, -1.0])
    points = np.array([[[2.0, 0.0]] * 4, [[2.0, 0.0]] * 4])  # labelled +, +, −, −: as a "+" it is flipped
    counts = np.array([[0, 0, 30, 0], [30, 0, 0, 0]])
    loss, acc = retrain(x, sign, points, sign, counts, eta=0.1, rho=10.0, epochs=30, rng=np.random.default_rng(0))
    assert acc[0] == 1.0 and loss[0] < 0.05
    assert acc[1] < 1.0 and loss[1] > 0.5


def test_retrain_keeps_the_parameters_in_the_rho_ball():
    rng = np.random.default_rng(1)
    x, sign = rng.normal(size=(50, 3)), np.where(rng.random(50) < 0.5, 1.0, -1.0)  # noise: never separable
    points, counts = np.zeros((1, 4, 3)), np.zeros((1, 4), dtype=np.int64)
    for rho in (0.1, 1.0):
        loss, _ = retrain(x, sign, points, sign[:4], counts, eta=10.0, rho=rho, epochs=5, rng=rng)
        # ‖θ‖ ≤ ρ and |x| ≲ 3: every margin is small, so the hinge loss stays near 1
        assert abs(loss[0] - 1) < 3.5 * rho


def test_slab_poisons_are_few_points_inside_the_data_dependent_set(cancer):
    attack = _slab(cancer, poison_ratio=0.2, iterations=12, random_splits=3, retrain_epochs=1)
    out = attack.poison(cancer, generator=torch.Generator().manual_seed(0))
    n, count = len(cancer.y_train), round(0.2 * len(cancer.y_train))
    assert out.n_poison == count == 85 and out.is_poison[n:].all() and torch.equal(out.x[:n], cancer.x_train)
    x_p, y_p = out.x[n:], out.y[n:]
    assert set(y_p.tolist()) <= {0, 1} and ((x_p >= 0) & (x_p <= 1)).all()
    assert len(torch.unique(x_p, dim=0)) <= 4  # copies of the four points x_a⁺, x_b⁺, x_a⁻, x_b⁻
    entry = attack.craft(cancer.x_train, cancer.y_train, count=count, seed=0)
    used = entry["counts"] > 0
    points, labels, counts = entry["points"][used], entry["labels"][used], entry["counts"][used]
    dependent = attack.feasible.with_poisons(points, labels, counts)
    assert dependent.contains(points, labels, tol=1e-5).all()
    # ... and far outside the clean (oracle) sphere: the defense's centroid moves with the poisons
    assert (attack.feasible.sphere_distance(points, labels) > attack.feasible.radii[labels] * 1.05).any()
    torch.testing.assert_close(final := attack.bounds, [float(v) for v in entry["bounds"]])
    assert final[0] > 0 and np.isfinite(final[1])


def test_slab_poisons_are_deterministic_per_seed(cancer, monkeypatch):
    attack = _slab(cancer, iterations=6, random_splits=3, retrain_epochs=1)
    attack.feasible = FeasibleSet.fit(cancer.x_train, cancer.y_train, num_classes=2, percentile=65, box=cancer.box)
    first, again = (attack.craft(cancer.x_train, cancer.y_train, count=40, seed=0) for _ in range(2))
    for key in first:
        torch.testing.assert_close(first[key], again[key], rtol=0, atol=0)
    # the seed drives the random mass splits tried (here the heuristic split wins every time)
    tried: dict[int, list] = {0: [], 1: []}
    solve = slab_inner.solve
    for seed in tried:
        monkeypatch.setattr(
            slab_inner, "solve", lambda seed=seed, **kw: tried[seed].append(kw["masses"]) or solve(**kw)
        )
        attack.craft(cancer.x_train, cancer.y_train, count=40, seed=seed)
    eps, p_plus = 40 / len(cancer.y_train), float(cancer.y_train.double().mean())
    assert len(tried[0]) == len(tried[1]) == 6 * 4 + 2  # 1 heuristic + 3 random per iteration, 2 checks re-solved
    np.testing.assert_allclose(tried[0][0], eps * np.array([p_plus, 0, 1 - p_plus, 0]))  # the heuristic split
    np.testing.assert_allclose(tried[1][0], tried[0][0])
    assert not np.allclose(tried[0][1], tried[1][1])  # the first Dirichlet draw
    np.testing.assert_allclose([sum(q) for q in tried[0][1:4]], eps)  # every split has mass ε


def test_without_a_feasible_split_the_poisons_fall_back_to_the_clean_centroids(cancer, monkeypatch, tmp_path):
    """As the released code (X_eps = mus): every copy sits on its class centroid, in proportion to the priors."""
    monkeypatch.setattr(slab_inner, "solve", lambda **kw: (-np.inf, kw["centroids"][slab_inner.CLASS]))
    attack = _slab(cancer, poison_ratio=0.1, iterations=6, random_splits=1, retrain_epochs=1)
    ctx = RunContext(seed=0, device=torch.device("cpu"), cache_dir=tmp_path, model_name="lr")
    out = attack.poison(cancer, generator=torch.Generator().manual_seed(0), context=ctx)
    n = len(cancer.y_train)
    x_p, y_p = out.x[n:].double(), out.y[n:]
    assert len(y_p) == 43 and int((y_p == 1).sum()) == round(43 * float(cancer.y_train.double().mean()))
    torch.testing.assert_close(x_p, attack.feasible.centroids[y_p], atol=1e-6, rtol=0)
    attack.poison(cancer, generator=torch.Generator().manual_seed(0), context=ctx)
    assert attack.cache_hit is True  # the fallback entry passes its own checks


def test_with_poisons_is_the_centroid_of_the_poisoned_data(cancer):
    clean = FeasibleSet.fit(cancer.x_train, cancer.y_train, num_classes=2, percentile=65, box=cancer.box)
    pts, labels, counts = cancer.x_train[:3].double() * 0.5, torch.tensor([0, 1, 1]), torch.tensor([4, 0, 9])
    moved = clean.with_poisons(pts, labels, counts)
    x_all = torch.cat([cancer.x_train.double(), pts.repeat_interleave(counts, 0)])
    y_all = torch.cat([cancer.y_train, labels.repeat_interleave(counts)])
    refit = FeasibleSet.fit(x_all, y_all, num_classes=2, percentile=65, box=cancer.box)
    torch.testing.assert_close(moved.centroids, refit.centroids)
    torch.testing.assert_close(moved.radii, clean.radii)
    # the slab keeps its width as a distance along the new centroid direction
    torch.testing.assert_close(
        moved.slab_radii / moved.slab_dirs.norm(dim=1), clean.slab_radii / clean.slab_dirs.norm(dim=1)
    )


# --- cache ----------------------------------------------------------------------------------------------------------


def _cfg(*extra: str):
    return compose_cfg("dataset=breast_cancer", "model=lr", "attack=steinhardt", "attack.poison_ratio=0.2",
                       "optimizer.epochs=2", "seed=0", *FAST, *extra)  # fmt: skip


@pytest.mark.slow
def test_a_dp_sweep_crafts_the_poisons_once_and_a_corrupt_entry_is_recrafted(tmp_path, caplog, _isolated_cache):
    crafts = steinhardt_module.CRAFTS
    before = crafts["count"]
    first = run(_cfg("dp=none"), output_dir=tmp_path / "a")
    assert crafts["count"] == before + 1 and first["poisons_cached"] is False
    second = run(_cfg("dp=dpsgd", "dp.clip=1", "dp.noise=0.5"), output_dir=tmp_path / "b")
    assert crafts["count"] == before + 1, "the DP run recrafted the poisons"
    assert second["poisons_cached"] is True and second["n_poison"] == first["n_poison"] == 85
    assert second["certified_upper_bound"] == first["certified_upper_bound"]
    # another seed draws other mass splits: its own entry
    run(_cfg("dp=none", "seed=1"), output_dir=tmp_path / "c")
    assert crafts["count"] == before + 2
    # corrupt the seed-0 entry: its points move far outside the set they were crafted for
    entries = sorted((_isolated_cache / "steinhardt_poisons").glob("*.pt"))
    assert len(entries) == 2
    for path in entries:
        data = torch.load(path, weights_only=True)
        data["tensors"]["points"] = data["tensors"]["points"] * 3
        torch.save(data, path)
    third = run(_cfg("dp=none", "resume=false"), output_dir=tmp_path / "d")
    assert crafts["count"] == before + 3 and third["poisons_cached"] is False
    assert "cannot be used" in caplog.text and "leave the sphere" in caplog.text
    assert third["certified_upper_bound"] == first["certified_upper_bound"]  # recrafted: the same poisons


def test_a_ratio_and_the_same_count_share_one_entry(cancer, tmp_path, monkeypatch):
    """poison_ratio 0.2 and n_poisons 85 are the same 85 poisons: the key holds the count, not its spelling."""
    ctx = RunContext(seed=0, device=torch.device("cpu"), cache_dir=tmp_path, model_name="lr")
    first = _slab(cancer, poison_ratio=0.2, iterations=6, random_splits=2, retrain_epochs=1)
    first.poison(cancer, generator=torch.Generator().manual_seed(0), context=ctx)
    monkeypatch.setattr(steinhardt_module.Steinhardt, "craft", lambda *a, **k: pytest.fail("recrafted"))
    same = _slab(cancer, poison_ratio=None, n_poisons=85, iterations=6, random_splits=2, retrain_epochs=1)
    same.poison(cancer, generator=torch.Generator().manual_seed(0), context=ctx)
    assert first.cache_hit is False and same.cache_hit is True
    other = _slab(cancer, poison_ratio=None, n_poisons=84, iterations=6, random_splits=2, retrain_epochs=1)
    with pytest.raises(pytest.fail.Exception, match="recrafted"):
        other.poison(cancer, generator=torch.Generator().manual_seed(0), context=ctx)


@pytest.mark.parametrize(
    "node, corrupt, reason",
    [
        (dict(method="slab", iterations=6, random_splits=2, retrain_epochs=1), lambda t: t["points"].mul_(3), "sphere"),
        (dict(method="slab", iterations=6, random_splits=2, retrain_epochs=1), lambda t: t["counts"].add_(1), "counts"),
        (dict(method="online", burn_in=20), lambda t: t["points"].add_(0.3), "box"),
        (dict(method="online", burn_in=20), lambda t: t["labels"].fill_(2), "labels"),
    ],
    ids=["slab-moved", "slab-count", "online-box", "online-labels"],
)
def test_a_corrupt_entry_is_recrafted_with_a_warning(cancer, tmp_path, caplog, node, corrupt, reason):
    ctx = RunContext(seed=0, device=torch.device("cpu"), cache_dir=tmp_path, model_name="lr")
    attack = _slab(cancer, poison_ratio=0.1, **node)
    first = attack.poison(cancer, generator=torch.Generator().manual_seed(0), context=ctx)
    (path,) = (tmp_path / "steinhardt_poisons").glob("*.pt")
    data = torch.load(path, weights_only=True)
    corrupt(data["tensors"])
    torch.save(data, path)
    before = steinhardt_module.CRAFTS["count"]
    again = attack.poison(cancer, generator=torch.Generator().manual_seed(0), context=ctx)
    assert steinhardt_module.CRAFTS["count"] == before + 1 and attack.cache_hit is False
    assert "cannot be used" in caplog.text and reason in caplog.text
    torch.testing.assert_close(again.x, first.x, rtol=0, atol=0)
    caplog.clear()
    attack.poison(cancer, generator=torch.Generator().manual_seed(0), context=ctx)  # the rewritten entry is good
    assert attack.cache_hit is True and "cannot be used" not in caplog.text


# --- end to end through the CLI -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_slab_attack_on_embedded_data_then_a_dp_run_reuses_its_poisons(tmp_path, _isolated_cache):
    common = ["dataset=breast_cancer", "model=lr", "attack=steinhardt", "attack.poison_ratio=0.2", *FAST,
              "optimizer.epochs=20", "seed=0"]  # fmt: skip
    proc = run_cli(*common, "dp=none", f"hydra.run.dir={tmp_path / 'vanilla'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    vanilla = json.loads((tmp_path / "vanilla" / "metrics.json").read_text())
    assert vanilla["status"] == "ok" and vanilla["n_poison"] == 85 and vanilla["poisons_cached"] is False
    assert vanilla["n_train"] == 426 + 85 and vanilla["certified_upper_bound"] > 0 and vanilla["slab_lower_bound"] > 0
    proc = run_cli(*common, "dp=dpsgd", "dp.clip=4", "dp.noise=0", f"hydra.run.dir={tmp_path / 'dp'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    dp = json.loads((tmp_path / "dp" / "metrics.json").read_text())
    assert dp["poisons_cached"] is True and dp["certified_upper_bound"] == vanilla["certified_upper_bound"]
    assert len(list((_isolated_cache / "steinhardt_poisons").glob("*.pt"))) == 1
