"""``rad`` compares with the clean vanilla model at the vanilla schedule (``reference.*``); ``rad_dp_matched`` with
the run's own schedule and DP settings; ``rad_early_stop`` is Hong's never-negative RAD."""

from __future__ import annotations

import json

import pytest
from omegaconf import open_dict

from gsdefense.errors import ConfigError
from gsdefense.fuse import run_group
from gsdefense.identity import Identity
from gsdefense.plan import prepare
from gsdefense.references import Reference, rad_metrics, reference_runs, reference_spec, vanilla_schedule
from gsdefense.run import run
from tests.conftest import compose_cfg

QUICK = ["optimizer.epochs=2", "optimizer.batch_size=128", "telemetry.enabled=false", "save_model=false"]


def _run(tmp_path, name: str, *overrides: str) -> dict:
    return run(compose_cfg(*QUICK, *overrides), output_dir=tmp_path / name)


def test_rad_reference_is_the_vanilla_model_at_the_vanilla_schedule(tmp_path):
    """A DP run at lr 0.5 whose vanilla schedule is lr 0.05: its acc_ref is the clean vanilla lr-0.05 model's.

    Noise 0, so that the DP-matched reference (its own noise stream) can be compared with a clean DP run."""
    dp_run = _run(tmp_path, "dp", "optimizer.lr=0.5", "dp.noise=0", "reference.lr=0.05")
    vanilla = _run(tmp_path, "vanilla", "optimizer.lr=0.05", "dp=none", "attack=none")
    clean_dp = _run(tmp_path, "clean-dp", "optimizer.lr=0.5", "dp.noise=0", "attack=none")
    own = _run(tmp_path, "own", "optimizer.lr=0.5", "dp.noise=0")  # no reference node: the run's own lr
    assert (dp_run["acc_ref"], dp_run["acc_ref_best"]) == (vanilla["clean_acc"], vanilla["best_clean_acc"])
    assert dp_run["acc_ref_dp_matched"] == clean_dp["clean_acc"]  # the run's own schedule and DP settings
    assert own["acc_ref_dp_matched"] == dp_run["acc_ref_dp_matched"] and own["clean_acc"] == dp_run["clean_acc"]
    assert own["acc_ref"] != dp_run["acc_ref"]
    # digits MLP, seed 0, 2 epochs: 0.8178 at lr 0.05, 0.8622 at lr 0.5
    assert dp_run["acc_ref"] == pytest.approx(0.8178, abs=5e-4) and own["acc_ref"] == pytest.approx(0.8622, abs=5e-4)
    assert dp_run["rad"] == pytest.approx((dp_run["acc_ref"] - dp_run["clean_acc"]) / dp_run["acc_ref"])
    assert dp_run["rad_early_stop"] == max(0.0, dp_run["rad_best"])


def test_rad_early_stop_is_rad_best_floored_at_zero():
    ref = Reference(clean_acc=0.9, best_clean_acc=0.95)
    worse = rad_metrics(ref, ref, acc=0.8, best_acc=0.855)
    better = rad_metrics(ref, ref, acc=0.97, best_acc=0.98)
    assert worse["rad_best"] == pytest.approx(0.1) and worse["rad_early_stop"] == worse["rad_best"]
    assert better["rad_best"] == pytest.approx(-0.03 / 0.95) and better["rad_early_stop"] == 0.0
    assert better["rad"] == pytest.approx(-0.07 / 0.9)
    assert rad_metrics(ref, ref, acc=None, best_acc=None)["rad_early_stop"] is None


def test_the_reference_cache_key_holds_the_references_own_schedule(tmp_path):
    plan = prepare(compose_cfg(*QUICK, "optimizer.lr=0.5", "reference.lr=0.05", "reference.batch_size=64"))
    vanilla = vanilla_schedule(plan)
    assert (vanilla.optimizer.lr, vanilla.optimizer.batch_size) == (0.05, 64) and plan.optimizer.lr == 0.5
    assert reference_spec(vanilla, dp=None)["optimizer"]["lr"] == 0.05
    assert reference_spec(vanilla, dp=None) != reference_spec(plan, dp=None)
    assert [(p.optimizer.lr, dp is plan.dp) for p, dp in reference_runs(plan)] == [(0.05, False), (0.5, True)]
    own = prepare(compose_cfg(*QUICK, "optimizer.lr=0.5"))
    assert vanilla_schedule(own) is own
    vanilla_own = prepare(compose_cfg(*QUICK, "dp=none"))
    assert len(reference_runs(vanilla_own)) == 1  # a vanilla run at its own schedule is its DP-matched reference
    _run(tmp_path, "a", "optimizer.lr=0.5", "reference.lr=0.05")
    _run(tmp_path, "b", "optimizer.lr=0.5", "reference.lr=0.1")
    entries = [json.loads(p.read_text()) for p in (tmp_path / "cache" / "reference").glob("*.json")]
    vanilla_lrs = sorted(e["spec"]["optimizer"]["lr"] for e in entries if e["spec"]["dp"] is None)
    assert vanilla_lrs == [0.05, 0.1] and len(entries) == 3  # + one DP-matched reference, shared


def test_a_reference_that_is_the_runs_own_schedule_leaves_the_run_id_as_before():
    cfg = compose_cfg("optimizer.lr=0.5")
    before = compose_cfg("optimizer.lr=0.5")
    with open_dict(before):
        del before["reference"]  # a config written before the reference node existed
    assert Identity.of(cfg).run_id == Identity.of(before).run_id
    assert Identity.of(compose_cfg("optimizer.lr=0.5", "reference.lr=0.05")).run_id != Identity.of(cfg).run_id
    assert Identity.of(compose_cfg("optimizer.lr=0.5", "reference.lr=0.05")).config["reference"] == {"lr": 0.05}


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (("reference.lr=0",), "reference.lr"),
        (("reference.batch_size=-1",), "reference.batch_size"),
        (("scenario=retrain", "reference.epochs=5"), "reference.epochs"),
        (("+reference.momentum=0.5",), "reference.momentum"),
        (("rad_definition=median",), "rad_definition"),
    ],
)
def test_bad_reference_settings_are_one_config_error(overrides, field):
    with pytest.raises(ConfigError) as err:
        prepare(compose_cfg(*QUICK, *overrides))
    assert err.value.field == field and "\n" not in str(err.value)


def test_every_rad_definition_is_accepted():
    for definition in ("final", "best", "early_stop"):
        prepare(compose_cfg(*QUICK, f"rad_definition={definition}"))


def test_a_bad_reference_fails_on_the_cli_before_training(cli, tmp_path):
    proc = cli("scenario=retrain", "reference.epochs=5", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr + proc.stdout
    (line,) = [line for line in proc.stderr.splitlines() if "reference.epochs" in line]
    assert "scenario.pretrain_epochs" in line
    assert not (tmp_path / "history.csv").exists()


def test_retrain_presets_reference_pretrains_and_retrains_at_the_vanilla_lr():
    small = [
        "dataset=digits",
        "~dataset.n_train",
        "~dataset.n_test",
        "attack.n_targets=2",
        "attack.target_true_class=9",
    ]
    cfg = compose_cfg("+experiment=hong_fig5_lr_purchase100", *small, "attack.base_class=7")
    plan = prepare(cfg)
    vanilla = vanilla_schedule(plan)
    assert plan.optimizer.lr == 0.08 and vanilla.optimizer.lr == 0.04 and vanilla.scenario == plan.scenario
    assert reference_spec(vanilla, dp=None)["optimizer"]["lr"] == 0.04


def test_fused_members_compare_with_the_same_references_as_their_separate_runs(tmp_path):
    overrides = [(*QUICK, "optimizer.lr=0.3", "reference.lr=0.05", f"dp.clip={c}") for c in (0.5, 2.0)]
    fused = run_group([compose_cfg(*o) for o in overrides], [tmp_path / "fused" / str(i) for i in range(2)])
    separate = [
        run(compose_cfg(*o, f"cache_dir={tmp_path / 'cache2'}"), output_dir=tmp_path / "separate" / str(i))
        for i, o in enumerate(overrides)
    ]
    for a, b in zip(fused, separate):
        assert a["fused_group_size"] == 2 and a["acc_ref"] == b["acc_ref"] and a["acc_ref_best"] == b["acc_ref_best"]
        assert a["acc_ref_dp_matched"] == pytest.approx(b["acc_ref_dp_matched"], abs=1 / 450 + 1e-6)
    entries = [json.loads(p.read_text()) for p in (tmp_path / "cache" / "reference").glob("*.json")]
    assert sorted(e["spec"]["optimizer"]["lr"] for e in entries) == [0.05, 0.3, 0.3]  # vanilla; DP at clip 0.5, 2
