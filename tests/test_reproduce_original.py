"""The original code's released results (committed under docs/reproduction-paper/original/) and gsdefense's table
beside them: the facts in the CSVs, the prediction-interval rule, the sweeps that reproduce each released cell."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from gsdefense.reproduce import original, runner
from gsdefense.reproduce.__main__ import main


def test_the_committed_label_flip_cells() -> None:
    cells = original.label_flips()
    assert len(cells) == 93 and cells.groupby("ratio").size().to_dict() == {
        0.01: 11, 0.02: 9, 0.03: 8, 0.04: 9, 0.05: 12, 0.1: 10, 0.2: 12, 0.3: 12, 0.4: 10}  # fmt: skip
    assert (cells["n_poisons"] == (cells["ratio"] * 10_800).round()).all()  # appended copies: ratio × 10,800
    assert (cells["baseline_acc"] == 0.954).all() and cells["last_epoch"].between(1, 40).all()
    assert cells["source"].str.fullmatch(
        r"results/ipoisoning/label-flips/fashion_mnist_3_4\.1\.0_random_[0-9.]+/"
        r"dp_lr_300_40_0\.01_1000\.0_1e-05_[0-9.]+_[0-9.e-]+/attack_results\.csv").all()  # fmt: skip
    # Fig. 4a's headline cell: 40 %, C = 4, no noise: best 0.9435, RAD 0.011 as the paper prints it.
    cell = cells[(cells["ratio"] == 0.4) & (cells["clip"] == 4.0) & (cells["multiplier"] == 0.0)].iloc[0]
    assert cell["best_acc"] == 0.9435 and cell["rad_early_stop"] == pytest.approx(0.011, abs=5e-4)
    # The folder's last number is TF-Privacy's multiplier: noise std = clip × multiplier (σ = 1, 0.1, 0.001 …).
    assert sorted(cells.loc[cells["clip"] == 4.0, "noise_std"].round(12).unique())[-3:] == [0.001, 0.1, 1.0]
    # Early stopping: a run that reached the baseline stopped there and never reports a negative RAD.
    assert (cells.loc[cells["last_epoch"] < 40, "best_acc"] >= 0.954).all() and (cells["rad_early_stop"] >= 0).all()
    assert cells.groupby("tier").size().to_dict() == {1: 10, 2: 27, 3: 56}


def test_the_committed_collision_analysis_shows_the_batch_mean_artifact() -> None:
    fig1 = original.collision()
    assert len(fig1) == 240 and sorted(fig1["alpha"].unique()) == [0.1, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert (fig1.groupby("alpha")["epoch"].apply(list) == [list(range(1, 41))] * 6).all()
    at1 = fig1[fig1["alpha"] == 1.0]
    ratio = float(np.exp(np.log(at1["poison_norm"] / at1["clean_norm"]).mean()))
    assert ratio == pytest.approx(10_800 / 100, rel=0.05)  # n_clean / n_poison: the ratio counts poisons
    assert at1["cosine"].iloc[1:].lt(-0.97).all() and at1["test_acc"].iloc[-1] == 0.953


def test_prediction_interval_rule() -> None:
    s = original.Inside.of([0.010, 0.014, 0.012], binomial_sd=0.005)
    seeds, total = 0.002**2 * (1 + 1 / 3), 0.002**2 * (1 + 1 / 3) + 0.005**2
    half = sps.t.ppf(0.975, 2 * total**2 / seeds**2) * math.sqrt(total)  # Welch–Satterthwaite: b has df ∞
    assert (s.mean, s.n) == (pytest.approx(0.012), 3) and s.half_width == pytest.approx(half)
    assert original.Inside.of([0.010, 0.014, 0.012]).half_width == pytest.approx(
        sps.t.ppf(0.975, 2) * 0.002 * 2 / 3**0.5
    )
    assert s.holds(0.012 + half * 0.99) and not s.holds(0.012 + half * 1.01)
    assert original.Inside.of([0.01]).holds(0.01) is None  # one seed: no interval


def test_tables_from_runs() -> None:
    runs = pd.DataFrame({"attack.poison_ratio": [0.4] * 6, "dp.clip": [4.0] * 6, "dp.noise": [0.0] * 3 + [2.5e-7] * 3,
                         "rad_early_stop": [0.010, 0.012, 0.011] * 2, "acc_ref_best": [0.955, 0.954, 0.956] * 2,
                         "seed": [0, 1, 2] * 2})  # fmt: skip
    table = original.label_flip_table(runs)
    assert len(table) == 93 and int((table["n"] > 0).sum()) == 2  # noise 0 and 2.5e-7 are separate cells
    assert table["n"].max() == 3
    row = table[(table["n"] == 3) & (table["multiplier"] == 0)].iloc[0]
    assert (row["ratio"], row["clip"], row["multiplier"], row["inside"]) == (0.4, 4.0, 0.0, True)
    assert row["difference"] == pytest.approx(0.011 - (0.954 - 0.9435) / 0.954)
    history = pd.DataFrame({"run_dir": ["a"] * 40 + ["b"] * 40, "epoch": list(range(1, 41)) * 2,
                            "mean_grad_norm_clean": [0.16] * 80, "mean_grad_norm_poison": [17.5] * 80,
                            "mean_grad_ratio": [109.0] * 80, "mean_grad_cosine": [-0.99] * 80,
                            "clean_acc": [0.95] * 80})  # fmt: skip
    coll = original.collision_table(history, pd.DataFrame({"run_dir": ["a", "b"], "attack.alpha": [1.0, 1.0]}))
    at1 = coll[coll["alpha"] == 1.0].set_index("metric")
    assert at1["n"].eq(2).all() and coll[coll["alpha"] == 0.1]["n"].eq(0).all()
    assert at1.loc["batch-mean ratio (geometric mean over epochs)", "original"] == pytest.approx(108, rel=0.05)


def test_sweeps_reproduce_each_released_cell(tmp_path, capsys: pytest.CaptureFixture) -> None:
    parts = original.parts(tiers=(1,))
    assert [p.name for p in parts] == ["lf_0.4_c0.1", "lf_0.4_c2", "lf_0.4_c4", "lf_0.4_c100", "collision"]
    sweeps = runner.plan_parts(original.CLAIM, parts, scale="paper", out=tmp_path, seeds=3)
    c4 = next(s for s in sweeps if s.part.name == "lf_0.4_c4").overrides
    assert "dp.noise=0,2.5e-07,0.00025,0.025,0.25" in c4 and "dp.clip=4" in c4 and c4[-1] == "seed=0,1,2"
    assert runner.compose_check(sweeps[2]) is None and runner.compose_check(sweeps[-1]) is None
    n_cells = sum(len(p.grid[-1].split("=")[1].split(",")) for p in original.parts(tiers=(1, 2, 3))[:-1])
    assert n_cells == 93
    # Tiers run at different times never share a sweep folder: 0.2 at C=4 has a noise-0 cell (tier 2) and noisy
    # cells (tier 3); one folder let tier 3's job 0 move tier 2's finished run aside (3 cells lost their runs).
    names = [p.name for p in original.parts(tiers=(1, 2, 3))]
    assert len(names) == len(set(names)) and {"lf_0.2_c4", "lf_0.2_c4_t3"} <= set(names)
    flips = [{p.name for p in original.parts(tiers=(t,)) if p.name != "collision"} for t in (2, 3)]
    assert not flips[0] & flips[1]
    assert main(["original", "--dry-run", "--tiers", "1", "--out", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip().endswith("5 sweeps")
    assert main(["original", "--report-only", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith(f"error: --report-only: no sweeps under {tmp_path}/sweeps/original")


def test_the_tables_never_overwrite_the_released_numbers(tmp_path) -> None:
    released = {p.name: p.read_bytes() for p in original.DATA.glob("released_*.csv")}
    assert set(released) == {"released_label_flips.csv", "released_collision.csv"}
    readme = original.write(tmp_path)  # no sweeps: every row "not run here" (n = 0)
    assert {p.name for p in readme.parent.iterdir()} == {"README.md", "label_flips.csv", "collision.csv"}
    assert "0 of 0 cells run here are inside (93 released" in readme.read_text()
    assert {p.name: p.read_bytes() for p in original.DATA.glob("released_*.csv")} == released
