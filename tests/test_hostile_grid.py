"""The whole grid is checked before any job (hydra/sweeper=gsdefense), cheaply, and ``dp=dpsgd,none`` adds the
vanilla arm to a clip × noise grid (issue 23 §4, issue 24 item 3)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.utils import create_config_search_path
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf

import hydra_plugins.gsdefense_sweeper.sweeper  # noqa: F401 - registers hydra/sweeper=gsdefense
from gsdefense.errors import ConfigError
from gsdefense.grid import collapse_vanilla, sweep_jobs
from tests.conftest import CONF, run_cli

QUICK = ["optimizer.epochs=1", "optimizer.batch_size=256", "telemetry.enabled=false"]


def grid(*overrides: str, sweep_dir: Path, count: list | None = None) -> tuple[int, list[list[str]]]:
    """The jobs ``python launch.py -m OVERRIDES`` would launch, as the sweeper computes them (in-process)."""
    loader = ConfigLoaderImpl(config_search_path=create_config_search_path(str(CONF)))
    master = loader.load_configuration("config", [*overrides, f"hydra.sweep.dir={sweep_dir}"], RunMode.MULTIRUN)
    HydraConfig.instance().set_config(master)
    if count is not None:
        real = loader.load_sweep_config
        loader.load_sweep_config = lambda *a, **k: count.append(a[1]) or real(*a, **k)
    params = [f"{k}={v}" for k, v in (master.hydra.sweeper.params or {}).items()]
    return sweep_jobs(loader=loader, master=master, arguments=params + list(master.hydra.overrides.task))


def test_vanilla_jobs_drop_dp_overrides_and_collapse(tmp_path):
    asked, jobs = grid("dp=dpsgd,none", "dp.clip=1,4", "dp.noise=0,1", sweep_dir=tmp_path / "s")
    assert asked == 8 and len(jobs) == 5
    assert jobs[:4] == [["dp=dpsgd", f"dp.clip={c}", f"dp.noise={s}"] for c in (1, 4) for s in (0, 1)]
    assert jobs[4] == ["dp=none"]
    assert collapse_vanilla([["seed=0", "dp=none", "dp.clip=1"], ["seed=0", "dp=none", "dp.clip=4"]]) == [
        ["seed=0", "dp=none"]
    ]


def test_a_preset_grid_gains_its_vanilla_arm(tmp_path):
    """nc_vs_dp sets dp.clip and dp.noise itself: its vanilla jobs delete them (as README's ~dp.clip did)."""
    asked, jobs = grid("+experiment=nc_vs_dp", "dp=dpsgd,none", sweep_dir=tmp_path / "s")
    vanilla = [job for job in jobs if "dp=none" in job]
    assert asked == 2 * 3 * 3 * 3 * 3 and len(jobs) == 3 * 3 * 3 * 3 + 3 * 3 and len(vanilla) == 9
    for job in vanilla:
        assert not [line for line in job if line.startswith("dp.")] and {"~dp.clip", "~dp.noise"} <= set(job)
    assert len({tuple(sorted(job)) for job in jobs}) == len(jobs)
    asked, jobs = grid("+experiment=nc_vs_dp", "dp=none", "~dp.noise", sweep_dir=tmp_path / "s")  # the README's way
    deletions = [sorted(line.split("=")[0] for line in job if line.startswith("~")) for job in jobs]
    assert len(jobs) == 9 and deletions == [["~dp.clip", "~dp.noise"]] * 9


def test_every_job_is_validated_at_the_cost_of_one_composition(tmp_path, capsys):
    """200 jobs of value overrides: one composition (~0.3 s), each job validated as its run would be, so a bad
    value is found before any job; the measured time is printed, not asserted."""
    clips, noises, seeds = "0.1,0.5,1,2,4", "0,0.25,0.5,1,2,4,8,16", "0,1,2,3,4"
    grid("dp.clip=1", sweep_dir=tmp_path / "s")  # imports (torch, every config group) are paid once per process
    count: list = []
    start = time.perf_counter()
    asked, jobs = grid(f"dp.clip={clips}", f"dp.noise={noises}", f"seed={seeds}", sweep_dir=tmp_path / "s",
                       count=count)  # fmt: skip
    seconds = time.perf_counter() - start
    assert asked == len(jobs) == 200 and len(count) == 1
    with capsys.disabled():
        print(f"\n200-job grid validated in {seconds:.2f} s ({len(count)} composition)")
    with pytest.raises(ConfigError, match=r"^dp.clip: must be > 0 \(got -4.0\) in job 160 "):
        grid(f"dp.clip={clips[:-1]}-4", f"dp.noise={noises}", f"seed={seeds}", sweep_dir=tmp_path / "s")
    assert not (tmp_path / "s").exists()


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_dp_dpsgd_none_runs_one_vanilla_job_per_setting(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli("-m", *QUICK, "dp=dpsgd,none", "dp.clip=1,4", f"hydra.sweep.dir={sweep}", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "3 ok" in proc.stderr
    overrides = [OmegaConf.load(sweep / str(i) / ".hydra" / "overrides.yaml") for i in range(3)]
    assert [o[-1] for o in overrides] == ["dp.clip=1", "dp.clip=4", "dp=none"]
    vanilla = json.loads((sweep / "2" / "metrics.json").read_text())
    assert vanilla["status"] == "ok" and vanilla["epsilon"] is None and not (sweep / "3").exists()
