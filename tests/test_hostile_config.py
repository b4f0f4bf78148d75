"""Hostile inputs, one line each (issue 23 §2–§4): every case runs the CLI's code (``tests.cli_batch``: one process
for the whole batch) and must exit 2 with one ``error: <field>: …`` line, no traceback, and nothing trained.

Typed booleans, interpolations that cannot resolve, paths too long or looping, accountants that cannot compute ε,
degenerate runs, a model too big for memory, a malformed ``--config-dir``, several presets at once, and grids that
cannot run (refused before any job: no sweep folder at all).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gsdefense.errors import ConfigError
from gsdefense.identity import Identity
from gsdefense.sanity import check_poison_count
from gsdefense.training.accounting import check_epsilon
from gsdefense.training.dp import DPSGDConfig
from tests.cli_batch import run_batch
from tests.conftest import compose_cfg, run_cli

QUICK = ["optimizer.epochs=1", "optimizer.batch_size=256", "telemetry.enabled=false"]
LONG = "x" * 300  # one name longer than any filesystem's 255-byte limit


def _paths(tmp: Path) -> dict[str, str]:
    (tmp / "loop_a").symlink_to(tmp / "loop_b")
    (tmp / "loop_b").symlink_to(tmp / "loop_a")
    broken = tmp / "confdir" / "attack"
    broken.mkdir(parents=True)
    (broken / "broken.yaml").write_text("name: blend\n  alpha: [0.1,\n")
    return {"loop": str(tmp / "loop_a"), "long": str(tmp / LONG), "confdir": str(tmp / "confdir")}


# (case id, overrides, field): a run (not a sweep) that must stop with one line naming the field.
def run_cases(p: dict[str, str]) -> list[tuple[str, list[str], str]]:
    return [
        ("resume=no", ["resume=no"], "resume"),
        ("resume=perhaps", ["resume=perhaps"], "resume"),
        ("save_model=maybe", ["save_model=maybe"], "save_model"),
        ("telemetry.enabled=no", ["telemetry.enabled=no"], "telemetry.enabled"),
        ("download=maybe", ["dataset=fashion_mnist", "dataset.download=maybe"], "dataset.download"),
        ("pretrain_private=yes", ["scenario=retrain", "scenario.pretrain_private=yes"], "scenario.pretrain_private"),
        ("early_stop=1", ["detector=neural_cleanse", "detector.early_stop=1"], "detector.early_stop"),
        ("fixed_shape=maybe", ["dp.fixed_shape=maybe"], "dp.fixed_shape"),
        ("env interpolation", ["dp.clip=${oc.env:GSDEFENSE_NOT_SET_ANYWHERE}"], "dp.clip"),
        ("self interpolation", ["dp.clip=${dp.clip}"], "dp.clip"),
        ("missing interpolation", ["seed=${nowhere}"], "seed"),
        ("long cache_dir", [f"cache_dir={p['long']}"], "cache_dir"),
        ("looping cache_dir", [f"cache_dir={p['loop']}"], "cache_dir"),
        ("long trigger", ["attack=blend", f"attack.trigger_path={p['long']}.png"], "attack.trigger_path"),
        ("looping trigger", ["attack=blend", f"attack.trigger_path={p['loop']}"], "attack.trigger_path"),
        ("long dataset.path", ["dataset=purchase100", f"dataset.path={p['long']}.npz"], "dataset.path"),
        ("looping dataset.path", ["dataset=purchase100", f"dataset.path={p['loop']}"], "dataset.path"),
        ("prv tiny noise", ["dp.accountant=prv", "dp.noise=1e-7"], "dp.accountant"),
        ("gdp tiny noise", ["dp.accountant=gdp", "dp.noise=1e-7"], "dp.accountant"),
        ("prv tiny delta", ["dp.accountant=prv", "dp.delta=1e-300"], "dp.accountant"),
        ("0 poisons", ["attack.poison_ratio=0.0001"], "attack.poison_ratio"),
        ("1 training sample", ["detector=neural_cleanse", "detector.defender_fraction=0.999"],
         "detector.defender_fraction"),
        ("huge model", ["model.hidden=100000000"], "model.hidden"),
        ("two presets", ["+experiment=[nc_vs_dp,hong_fig4_label_flip]"], "experiment"),
    ]  # fmt: skip


# Refused before Hydra writes anything into the run folder (by the callback that checks it, or launch.py).
BEFORE_HYDRA = {"two presets"}


@pytest.mark.timeout(300)
def test_hostile_runs_stop_with_one_line_naming_the_field(tmp_path):
    paths = _paths(tmp_path)
    cases = run_cases(paths)
    batch = [{"args": [*QUICK, *args, f"hydra.run.dir={tmp_path}/runs/{i}"]} for i, (_, args, _) in enumerate(cases)]
    where = {  # run folders that cannot even be created: refused by the callback, before Hydra writes
        "long run dir": ([*QUICK, f"hydra.run.dir={paths['long']}/run"], "hydra.run.dir"),
        "looping run dir": ([*QUICK, f"hydra.run.dir={paths['loop']}/run"], "hydra.run.dir"),
        "env run dir": ([*QUICK, "hydra.run.dir=${oc.env:GSDEFENSE_NOT_SET_ANYWHERE}"], "hydra.run.dir"),
        "broken YAML": (["--config-dir", paths["confdir"], *QUICK, "attack=broken",
                         f"hydra.run.dir={tmp_path}/runs/yaml"], "--config-dir"),
    }  # fmt: skip
    batch += [{"args": args} for args, _ in where.values()]
    results = run_batch(batch)
    expected = [(name, field) for name, _, field in cases] + [(name, field) for name, (_, field) in where.items()]
    wrong = []
    for (name, field), result in zip(expected, results):
        lines = result["stderr"].strip().splitlines()
        if result["code"] != 2 or len(lines) != 1 or not lines[0].startswith(f"error: {field}: "):
            wrong.append(f"{name}: exit {result['code']}, stderr {result['stderr'][-600:]!r}")
    assert not wrong, "\n".join(wrong)
    for i, (name, _, _) in enumerate(cases):
        run_dir = tmp_path / "runs" / str(i)
        assert not (run_dir / "history.csv").exists() and not (run_dir / "model.pt").exists(), name
        if name in BEFORE_HYDRA:
            assert not (run_dir / ".hydra").exists(), name
        else:  # a failed run's record, never a finished-looking one
            assert json.loads((run_dir / "metrics.json").read_text())["status"] == "failed", name
    assert not (tmp_path / "runs" / "yaml").exists()  # the malformed YAML stops launch.py before Hydra


@pytest.mark.timeout(300)
def test_grids_that_cannot_run_touch_nothing(tmp_path):
    """Refused before any job, naming the field and the job: no sweep folder, no failed job, no training."""
    sweeps = tmp_path / "sweeps"
    grids = {
        "wrong type in job 1": (["optimizer.epochs=2", "dp.clip=1,abc"], "dp.clip", "job 1"),
        "boolean in job 0": (["resume=no,true"], "resume", "job 0"),
        "unknown option": (["attack=blend,no_such_attack"], "attack", "job 1"),
        "interpolation": (["dp.clip=${oc.env:GSDEFENSE_NOT_SET_ANYWHERE}", "dp.noise=1,2"], "dp.clip", "job 0"),
        "same folder": (["dp.clip=1,2", "hydra.sweep.subdir=same"], "hydra.sweep.subdir", "jobs 0 and 1"),
        "outside": (["dp.clip=1,2", "hydra.sweep.subdir=../x-${hydra.job.num}"], "hydra.sweep.subdir", "job 0"),
        "two presets": (["+experiment=[nc_vs_dp,hong_fig4_label_flip]"], "experiment", "2 presets"),
        "sweep dir interpolation": (["hydra.sweep.dir=${oc.env:GSDEFENSE_NOT_SET_ANYWHERE}"], "hydra.sweep.dir", ""),
        "sweep dir too long": ([f"hydra.sweep.dir={sweeps}/{LONG}"], "hydra.sweep.dir", "longer than"),
    }
    # a case's own hydra.sweep.dir comes after the default one, and wins
    batch = [{"args": ["-m", *QUICK, f"hydra.sweep.dir={sweeps}/{i}", *args]} for i, (args, _, _) in
             enumerate(grids.values())]  # fmt: skip
    results = run_batch(batch)
    for (name, (_, field, job)), result in zip(grids.items(), results):
        lines = result["stderr"].strip().splitlines()
        assert result["code"] == 2, (name, result["stderr"][-1500:])
        assert len(lines) == 1 and lines[0].startswith(f"error: {field}: ") and job in lines[0], (name, lines)
    assert not sweeps.exists() and not (tmp_path / "x-0").exists()


def test_booleans_are_true_or_false_everywhere():
    """OmegaConf reads no/off/0/"yes" into a typed bool; every boolean key here refuses anything but a bool."""
    for value, shown in [("no", "'no'"), ("yes", "'yes'"), ("off", "'off'"), ("1", "1"), ("0", "0"),
                         ("maybe", "'maybe'"), ("'true'", "'true'")]:  # fmt: skip
        with pytest.raises(ConfigError) as err:
            Identity.of(compose_cfg(f"resume={value}"))
        assert str(err.value).startswith(f"resume: must be true or false (got {shown})"), str(err.value)
    scenario, detector = ["scenario=retrain"], ["detector=neural_cleanse"]
    keys = [([], "save_model"), ([], "telemetry.enabled"), ([], "dp.fixed_shape"),
            (scenario, "scenario.pretrain_private"), (scenario, "scenario.retrain_private"),
            (detector, "detector.early_stop"), (["dataset=fashion_mnist"], "dataset.download"),
            (["defense=sphere"], "defense.oracle")]  # fmt: skip
    for base, key in keys:
        with pytest.raises(ConfigError, match=f"^{key}: must be true"):
            Identity.of(compose_cfg(*base, f"{key}=no"))
    Identity.of(compose_cfg("resume=false", "save_model=true", "dp.fixed_shape=null"))


def test_resume_no_is_refused_by_the_real_cli(tmp_path):
    """``resume=no`` was read as true: it skipped the rerun the user asked for."""
    proc = run_cli(*QUICK, "resume=no", f"hydra.run.dir={tmp_path}/run", timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: resume: must be true or false (got 'no'). Fix: resume=true or resume=false."
    ]
    assert not (tmp_path / "run" / "history.csv").exists()


def test_legitimate_edges_are_not_refused():
    """poison_ratio=0 is a sweep's no-poison arm; σ = 0 gives ε = ∞ with any accountant; rdp takes any σ, δ."""
    check_poison_count(type("A", (), {"poison_ratio": 0.0, "n_poisons": None})(), n_train=1000)
    check_poison_count(type("A", (), {"poison_ratio": 0.001, "n_poisons": None})(), n_train=1000)  # 1 poison
    for accountant in ("rdp", "prv", "gdp"):
        check_epsilon(DPSGDConfig(noise=0.0, accountant=accountant), n_train=1347, batch_size=256, epochs=3)
    check_epsilon(DPSGDConfig(noise=1e-7, accountant="rdp"), n_train=1347, batch_size=256, epochs=3)
    check_epsilon(DPSGDConfig(noise=1.0, delta=1e-300, accountant="rdp"), n_train=1347, batch_size=256, epochs=3)
    with pytest.raises(Exception, match="^attack.poison_ratio: 0.0004 of 1000 training samples is 0 poisons"):
        check_poison_count(type("A", (), {"poison_ratio": 0.0004, "n_poisons": None})(), n_train=1000)


def test_retrain_lr_is_a_key_of_the_retrain_scenario():
    """Documented as ``scenario.retrain_lr``; only ``+scenario.retrain_lr`` used to compose."""
    cfg = compose_cfg("scenario=retrain", "scenario.retrain_lr=0.01")
    assert Identity.of(cfg).config["scenario"]["retrain_lr"] == 0.01
    assert Identity.of(compose_cfg("scenario=retrain")).config["scenario"]["retrain_lr"] is None
