"""``dp.noise_std``: the noise as its absolute std (the paper's σ as Hong et al.'s code used it), one run with
the multiplier it stands for."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from gsdefense.analysis import load_runs
from gsdefense.errors import ConfigError
from gsdefense.fuse import FUSABLE, group_jobs, run_group
from gsdefense.identity import Identity
from gsdefense.run import run
from gsdefense.training.accounting import rdp_epsilon
from gsdefense.training.dp import dp_config
from tests.conftest import TINY, compose_cfg


def test_noise_std_is_the_multiplier_times_the_clip_and_one_run_with_it():
    by_std = Identity.of(compose_cfg("dp.noise_std=1", "dp.clip=4"))
    by_multiplier = Identity.of(compose_cfg("dp.noise=0.25", "dp.clip=4"))
    assert by_std.run_id == by_multiplier.run_id and by_std.noise_seed == by_multiplier.noise_seed
    assert by_std.config["dp"]["noise"] == 0.25 and "noise_std" not in by_std.config["dp"]
    # a quotient that is not exact in binary (0.3 / 3 = 0.09999999999999999) is still the run of noise=0.1
    assert (
        Identity.of(compose_cfg("dp.noise_std=0.3", "dp.clip=3")).run_id
        == Identity.of(compose_cfg("dp.noise=0.1", "dp.clip=3")).run_id
    )
    assert Identity.of(compose_cfg("dp.noise_std=1", "dp.clip=2")).run_id != by_std.run_id


def test_neither_given_is_the_default_multiplier_and_the_earlier_ids_hold():
    # the YAML leaves noise null: the same run as an explicit 1.0 (and as configs written before noise_std)
    assert dp_config(compose_cfg().dp).noise == 1.0
    assert Identity.of(compose_cfg()).run_id == Identity.of(compose_cfg("dp.noise=1.0")).run_id
    # the default run's id: noise_std left it as it was (cache.CACHE_VERSION 4, the new sampler, moved it)
    assert Identity.of(compose_cfg()).run_id == "1a2d9d2c3819831a6fda"


@pytest.mark.parametrize("dp", ["dpsgd", "adaptive"])
def test_adaptive_takes_the_std_too(dp):
    cfg = dp_config(compose_cfg(f"dp={dp}", "dp.noise_std=0.5", "dp.clip=2").dp)
    assert cfg.name == dp and cfg.noise == 0.25 and cfg.noise_std is None


@pytest.mark.parametrize(
    ("overrides", "field"),
    [(("dp.noise=0.25", "dp.noise_std=1"), "dp.noise_std"), (("dp.noise_std=-1",), "dp.noise_std")],
)
def test_bad_noise_std_is_one_config_error(overrides, field):
    with pytest.raises(ConfigError) as err:
        dp_config(compose_cfg(*overrides).dp)
    assert err.value.field == field and "\n" not in str(err.value)


def test_both_given_fails_on_the_cli_with_one_line(cli, tmp_path):
    proc = cli("dp.noise=0.25", "dp.noise_std=1", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.splitlines() if "dp.noise_std" in line]
    assert len(lines) == 1 and "dp.noise=null" in lines[0]
    assert not (tmp_path / "history.csv").exists()


def test_epsilon_comes_from_the_effective_multiplier_and_metrics_record_both(tmp_path):
    by_std = run(compose_cfg(*TINY, "dp.noise_std=2", "dp.clip=4"), output_dir=tmp_path / "std")
    by_multiplier = run(compose_cfg(*TINY, "dp.noise=0.5", "dp.clip=4"), output_dir=tmp_path / "multiplier")
    assert by_std["run_id"] == by_multiplier["run_id"]
    for key in ("epsilon", "clean_acc", "train_loss", "rad"):
        assert by_std[key] == by_multiplier[key], key
    assert by_std["noise_multiplier"] == 0.5 and by_std["noise_std"] == 2.0
    # digits, batch 128: q = 1/⌈1482/128⌉ = 1/12, 2 epochs = 24 steps at σ = 0.5
    assert by_std["epsilon"] == pytest.approx(rdp_epsilon([(0.5, 1 / 12, 24)], delta=1e-5))
    vanilla = run(compose_cfg(*TINY, "dp=none"), output_dir=tmp_path / "vanilla")
    assert vanilla["noise_multiplier"] is None and vanilla["noise_std"] is None


def test_records_give_both_noise_columns_whichever_was_stated(tmp_path):
    for name, overrides in (("std", ("dp.noise_std=2", "dp.clip=4")), ("default", ())):
        cfg = compose_cfg(*TINY, *overrides)
        (tmp_path / name / ".hydra").mkdir(parents=True)
        OmegaConf.save(cfg, tmp_path / name / ".hydra" / "config.yaml")
        run(cfg, output_dir=tmp_path / name)
    runs = load_runs(tmp_path).set_index("run_dir")
    std, default = runs.loc[str(tmp_path / "std")], runs.loc[str(tmp_path / "default")]
    assert (std["dp.noise"], std["dp.noise_std"], std["dp.clip"]) == (0.5, 2.0, 4.0)
    assert (default["dp.noise"], default["dp.noise_std"]) == (1.0, 1.0)  # the YAML's noise: null is 1.0
    assert std["status"] == default["status"] == "ok"


def test_a_noise_std_grid_fuses_like_a_noise_grid():
    assert "dp.noise_std" in FUSABLE
    cfgs = [compose_cfg(*TINY, "dp.clip=4", f"dp.noise_std={s}") for s in (0.4, 2)]
    cfgs += [compose_cfg(*TINY, "dp.clip=4", "dp.noise=0.25")]  # the other spelling joins the same group
    assert [g for g, _ in group_jobs(cfgs, vary=FUSABLE, max_group_size=8)] == [[0, 1, 2]]


def test_a_fused_noise_std_grid_equals_its_separate_runs(tmp_path):
    grid = [(0.5, 0.2), (2.0, 0.2), (2.0, 1.0)]  # (clip, noise std): multipliers 0.4, 0.1, 0.5
    overrides = [("optimizer.epochs=2", f"dp.clip={c}", f"dp.noise_std={s}") for c, s in grid]
    fused = run_group([compose_cfg(*TINY, *o) for o in overrides], [tmp_path / "fused" / str(i) for i in range(3)])
    separate = [
        run(compose_cfg(*TINY, *o, f"cache_dir={tmp_path / 'cache2'}"), output_dir=tmp_path / "separate" / str(i))
        for i, o in enumerate(overrides)
    ]
    for (clip, std), a, b in zip(grid, fused, separate):
        assert a["fused_group_size"] == 3 and a["run_id"] == b["run_id"]
        assert a["noise_std"] == b["noise_std"] == pytest.approx(std)
        assert a["noise_multiplier"] == pytest.approx(std / clip)
        assert a["epsilon"] == b["epsilon"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)  # noise included: each its own stream
        assert a["clean_acc"] == pytest.approx(b["clean_acc"], abs=1 / 450 + 1e-6)
    on_disk = json.loads((tmp_path / "fused" / "0" / "metrics.json").read_text())
    assert on_disk["noise_std"] == pytest.approx(0.2) and on_disk["noise_multiplier"] == pytest.approx(0.4)
