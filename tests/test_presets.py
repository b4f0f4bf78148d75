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

from gsdefense.run import run
from tests.conftest import CONF, compose_cfg, run_cli

PRESETS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
GRIDS = {
    "hong_fig4_label_flip": {
        "dp.clip": "8,4,2,1,0.1",
        "attack.poison_ratio": "0,0.01,0.02,0.03,0.04,0.05,0.1,0.2,0.3,0.4",
    },
    "hong_fig4_steinhardt": {
        "dp.clip": "8,4,2,1,0.1",
        "attack.poison_ratio": "0,0.01,0.02,0.03,0.04,0.05,0.1,0.2,0.3,0.4",
    },
    "hong_fig1_collision": {"attack.alpha": "0.1,0.2,0.4,0.6,0.8,1.0"},
    "limitations_table1_blend": {"model": "cnn,resnet18", "attack.poison_ratio": "0.01,0.1"},
    "limitations_table2_narcissus": {"attack.poison_ratio": "0.0005,0.01,0.02"},
    "limitations_blend_finetune": {"model": "cnn,resnet18", "attack.poison_ratio": "0.01,0.1"},
    "limitations_blend_direct": {"model": "cnn,resnet18", "attack.poison_ratio": "0.01,0.1"},
    "hong_fig5_oneshot": {"model": "lr,mlp", "dp.clip": "8,4,2,1,0.1"},
    "hong_fig6_multipoison": {"model": "lr,mlp", "dp.clip": "8,4,2,1,0.1"},
    "hong_table3_scenarios": {
        "model": "lr",
        "dp.clip": "4.0",
        "scenario.pretrain_private": "false,true",
        "scenario.retrain_private": "false,true",
        "attack.mode": "oneshot,multipoison",
    },
}


def small_overrides(name: str) -> list[str]:
    """The overrides of the ``# Embedded data`` command documented at the top of the preset."""
    lines = (CONF / "experiment" / f"{name}.yaml").read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("# Embedded data"))
    words = shlex.split(lines[at + 1].lstrip("# "))
    assert words[:3] == ["python", "launch.py", "-m"] and words[3] == f"+experiment={name}"
    return words[4:]


def test_every_preset_is_covered():
    assert sorted(GRIDS) == PRESETS


@pytest.mark.parametrize("name", PRESETS)
def test_preset_sweeps_the_paper_grid(name):
    assert (CONF / "experiment" / f"{name}.yaml").read_text().startswith("# @package _global_")
    # composed, so that presets extending another one are checked with what they inherit
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"+experiment={name}"], return_hydra_config=True)
    assert {k: str(v) for k, v in cfg.hydra.sweeper.params.items()} == GRIDS[name]


def test_presets_set_the_papers_hyper_parameters():
    fig4 = compose_cfg("+experiment=hong_fig4_label_flip")
    assert (fig4.dataset.classes, fig4.model.name, fig4.optimizer.name) == ([3, 4], "lr", "adam")
    assert (fig4.optimizer.batch_size, fig4.optimizer.lr, fig4.optimizer.epochs) == (300, 0.01, 40)
    assert fig4.attack.mode == "append" and fig4.dp.name == "dpsgd"
    assert compose_cfg("+experiment=hong_fig4_steinhardt").attack.name == "steinhardt"
    fig1 = compose_cfg("+experiment=hong_fig1_collision")
    assert (fig1.attack.name, fig1.attack.n_poisons, fig1.model.name, fig1.dp.name) == ("collision", 100, "lr", "none")
    table2 = compose_cfg("+experiment=limitations_table2_narcissus")
    assert (table2.dataset.name, table2.model.name, table2.attack.name) == ("cifar10", "resnet18", "narcissus")
    assert (table2.dp.clip, table2.dp.noise, table2.dp.delta) == (0.1, 4.0, 1e-5)
    table1 = compose_cfg("+experiment=limitations_table1_blend")
    assert (table1.attack.name, table1.dp.clip, table1.dp.noise) == ("blend", 0.1, 4.0)


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
    assert (metrics["asr"] is not None) == (cfg.attack.name in {"blend", "narcissus"})
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
