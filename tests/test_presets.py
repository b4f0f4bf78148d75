"""Experiment presets (conf/experiment): the paper grids, and one point of each on embedded data.

Each preset documents its small-schedule command in a comment; these tests run exactly that command's
overrides, so the comment cannot rot.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import ListConfig, OmegaConf

from gsdefense.run import run
from tests.conftest import CONF, compose_cfg, run_cli

PRESETS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
RATIOS = "0,0.01,0.02,0.03,0.04,0.05,0.1,0.2,0.3,0.4"
CLIPS = "8,4,2,1,0.1"
FIG5_NOISES = "0.001,0.01,0.1,0.4,0.8,1,2,4"
GRIDS = {
    "hong_fig1_collision": {"attack.alpha": "0.1,0.2,0.4,0.6,0.8,1.0"},
    "hong_fig1_collision_retrain": {"attack.alpha": "0.1,0.2,0.4,0.6,0.8,1.0"},
    "hong_fig1_insertion": {"attack.patch_size": "1,4,7,10,14"},
    "hong_fig4_label_flip": {"dp.clip": CLIPS, "attack.poison_ratio": RATIOS},
    "hong_fig4_label_flip_noise": {"dp.noise_std": "0.1,0.001,0.00001,0.0000001", "attack.poison_ratio": RATIOS},
    "hong_fig4_steinhardt": {"dp.clip": CLIPS, "attack.poison_ratio": RATIOS},
    "hong_fig4_steinhardt_noise": {"dp.noise_std": "0.1,0.001,0.00001,0.0000001", "attack.poison_ratio": RATIOS},
    **{f"hong_fig{f}_{panel}": {"dp.clip": CLIPS}
       for f, panel in [(5, "lr_purchase100"), (5, "mlp_fashion_mnist"), (5, "cnn_cifar10"), (6, "lr_purchase100"),
                        (6, "mlp_purchase100")]},
    **{f"hong_fig{f}_{panel}_noise": {"dp.noise_std": FIG5_NOISES}
       for f, panel in [(5, "lr_purchase100"), (5, "mlp_fashion_mnist"), (5, "cnn_cifar10"), (6, "lr_purchase100"),
                        (6, "mlp_purchase100")]},
    "hong_table3_scenarios": {
        "scenario.pretrain_private": "false,true",
        "scenario.retrain_private": "false,true",
        "attack.mode": "oneshot,multipoison",
    },
    **{f"limitations_table1_{col}_{model}": {"attack.poison_ratio": "0.01,0.1"}
       for col in ("sgd", "direct", "finetune") for model in ("cnn", "resnet18")},
    "limitations_table2_narcissus": {"attack.poison_ratio": "0.0005,0.01,0.02"},
    "nc_vs_dp": {"attack": "badnets,blend,narcissus", "dp.clip": "0.1,1,4", "dp.noise": "0,0.5,2", "seed": "0,1,2"},
}  # fmt: skip

# The values each preset must compose to, from the papers (Hong et al. §3, §6.1–6.5 and the original code's
# settings; Jahagirdar §3); keys are dotted config paths.
PAPER = {
    "hong_fig1_collision": {"dataset.classes": [3, 4], "dataset.validation_fraction": 0.1, "model.name": "lr",
                            "optimizer.name": "adam", "optimizer.lr": 0.01, "optimizer.batch_size": 300,
                            "optimizer.epochs": 40, "attack.n_poisons": 100, "dp.name": "none",
                            "telemetry.mode": "batches"},
    "hong_fig1_collision_retrain": {"model.depth": 2, "optimizer.name": "sgd", "optimizer.lr": 0.04,
                                    "optimizer.batch_size": 100, "scenario.pretrain_epochs": 100,
                                    "scenario.retrain_epochs": 20, "attack.base_class": 3, "attack.other_class": 4},
    "hong_fig1_insertion": {"attack.poison_ratio": 0.01, "attack.target_class": 4, "attack.mode": "append",
                            "attack.source": "any", "scenario.retrain_lr": 0.01, "scenario.retrain_epochs": 20},
    "hong_fig4_label_flip": {"attack.mode": "append", "optimizer.name": "adam", "optimizer.lr": 0.01,
                             "optimizer.batch_size": 300, "optimizer.epochs": 40, "dp.noise": 0.0,
                             "rad_definition": "early_stop", "dataset.input_norm": "none", "telemetry.mode": "batches",
                             "reference.lr": None},
    "hong_fig4_label_flip_noise": {"dp.clip": 4.0, "dp.noise": None, "rad_definition": "early_stop"},
    "hong_fig4_steinhardt": {"attack.percentile": 65, "dp.noise": 0.0, "rad_definition": "early_stop"},
    "hong_fig4_steinhardt_noise": {"attack.percentile": 65, "dp.clip": 4.0, "dp.noise": None},
    "hong_fig5_lr_purchase100": {"dataset.n_train": 10000, "dataset.n_test": 10000, "dataset.n_features": 100,
                                 "optimizer.name": "adam", "optimizer.lr": 0.08, "optimizer.batch_size": 100,
                                 "scenario.pretrain_epochs": 100, "scenario.retrain_epochs": 50,
                                 "attack.mode": "oneshot", "attack.max_feature_distance": 3.5, "attack.n_targets": 100,
                                 "reference.lr": 0.04},
    "hong_fig5_lr_purchase100_noise": {"dp.clip": 4.0, "reference.lr": 0.04},
    "hong_fig5_mlp_fashion_mnist": {"model.depth": 2, "optimizer.name": "sgd", "optimizer.lr": 0.08,
                                    "reference.lr": 0.04},
    "hong_fig5_mlp_fashion_mnist_noise": {"dp.clip": 2.0, "reference.lr": 0.04},
    "hong_fig5_cnn_cifar10": {"model.name": "cnn", "optimizer.lr": 0.02, "dataset.input_norm": "none",
                              "reference.lr": 0.01},
    "hong_fig6_lr_purchase100": {"attack.mode": "multipoison", "optimizer.name": "adam", "optimizer.lr": 0.08,
                                 "reference.lr": 0.04},
    "hong_fig6_mlp_purchase100_noise": {"attack.mode": "multipoison", "model.depth": 2, "dp.clip": 4.0,
                                        "reference.lr": 0.04},
    "hong_table3_scenarios": {"optimizer.name": "adam", "optimizer.lr": 0.08, "dp.clip": 4.0, "dp.noise": None,
                              "dp.noise_std": 0.01, "scenario.pretrain_epochs": 100, "scenario.retrain_epochs": 50,
                              "reference.lr": 0.04},
    "limitations_table1_sgd_cnn": {"dp.name": "none", "optimizer.lr": 0.001, "optimizer.epochs": 20,
                                   "attack.mode": "replace", "attack.source": "non_target"},
    "limitations_table1_direct_resnet18": {"dp.clip": 0.1, "dp.noise": 4.0, "optimizer.lr": 0.1,
                                           "optimizer.epochs": 20, "scenario.name": "scratch"},
    "limitations_table1_finetune_cnn": {"scenario.pretrain_epochs": 40, "scenario.retrain_epochs": 20,
                                        "scenario.pretrain_private": True, "scenario.retrain_private": True},
    "limitations_table2_narcissus": {"model.name": "resnet18", "optimizer.lr": 0.1, "optimizer.epochs": 200,
                                     "dp.clip": 0.1, "dp.noise": 4.0, "dp.delta": 1e-5,
                                     "dataset.input_norm": "symmetric"},
}  # fmt: skip


def small_overrides(name: str) -> list[str]:
    """The overrides of the ``# Embedded data`` command documented at the top of the preset."""
    lines = (CONF / "experiment" / f"{name}.yaml").read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("# Embedded data"))
    words = shlex.split(lines[at + 1].lstrip("# "))
    assert words[:3] == ["python", "launch.py", "-m"] and words[3] == f"+experiment={name}"
    return [w for w in words[4:] if not w.startswith("hydra.sweeper.params")]  # grids only shape the sweep


def test_every_preset_is_covered():
    assert sorted(GRIDS) == PRESETS


@pytest.mark.parametrize("name", PRESETS)
def test_preset_sweeps_the_paper_grid(name):
    assert (CONF / "experiment" / f"{name}.yaml").read_text().startswith("# @package _global_")
    # composed, so that presets extending another one are checked with what they inherit
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"+experiment={name}"], return_hydra_config=True)
    assert {k: str(v) for k, v in cfg.hydra.sweeper.params.items()} == GRIDS[name]


@pytest.mark.parametrize("name", sorted(PAPER))
def test_presets_set_the_papers_hyper_parameters(name):
    cfg = compose_cfg(f"+experiment={name}")
    got = {key: OmegaConf.select(cfg, key) for key in PAPER[name]}
    assert {k: (list(v) if isinstance(v, ListConfig) else v) for k, v in got.items()} == PAPER[name]


@pytest.mark.parametrize("name", PRESETS)
def test_one_point_of_each_preset_runs_on_embedded_data(name, tmp_path):
    cfg = compose_cfg(f"+experiment={name}", *small_overrides(name))
    assert cfg.dataset.name in {"breast_cancer", "digits"}
    metrics = run(cfg, output_dir=tmp_path / "out")
    assert metrics["status"] == "ok", metrics["error"]
    if cfg.attack.name == "poison_frogs":  # targeted: many retraining trials instead of one poisoned training set
        assert metrics["n_targets"] == 2 and metrics["asr"] is not None and (tmp_path / "out" / "targets.csv").exists()
        return
    assert metrics["n_poison"] > 0 and 0 < metrics["clean_acc"] <= 1  # DP clip 0.1, noise 4 learns little in 2 epochs
    assert (metrics["asr"] is not None) == (cfg.attack.name in {"badnets", "blend", "narcissus"})
    if cfg.attack.name == "steinhardt":
        assert metrics["certified_upper_bound"] > 0


@pytest.mark.slow
def test_preset_multirun_through_the_real_cli(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(
        "-m",
        "+experiment=hong_fig4_steinhardt",
        *small_overrides("hong_fig4_steinhardt"),
        "dp.clip=1",
        "attack.poison_ratio=0.05,0.2",
        f"hydra.sweep.dir={sweep}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = sorted(Path(sweep).glob("*/metrics.json"))
    assert len(found) == 2, "CLI values replace the preset's 50-point grid"
    metrics = [json.loads(p.read_text()) for p in found]
    assert all(m["status"] == "ok" and m["certified_upper_bound"] > 0 for m in metrics)
    assert sorted(m["n_poison"] for m in metrics) == [21, 85]
    assert "2 ok" in proc.stderr
