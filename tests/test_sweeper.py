"""hydra/sweeper=gsdefense: the up-front check composes one job per distinct override, and still catches errors."""

from __future__ import annotations

import itertools

from hydra_plugins.gsdefense_sweeper.sweeper import covering_jobs
from tests.conftest import run_cli


def test_covering_jobs_use_every_override_with_few_compositions():
    clips, noises = [f"dp.clip={c}" for c in range(5)], [f"dp.noise={s}" for s in range(8)]
    batch = [list(job) for job in itertools.product(clips, noises)]
    chosen = covering_jobs(batch)
    assert chosen[0] == batch[0] and len(chosen) <= len(clips) + len(noises) - 1
    assert {o for job in chosen for o in job} == set(clips) | set(noises)
    assert covering_jobs([["a=1"], ["a=1"]]) == [["a=1"]]


def test_an_unknown_option_in_a_grid_fails_before_any_job(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli("-m", "optimizer.epochs=1", "dp.clip=0.5,1", "attack=blend,no_such_attack",
                   f"hydra.sweep.dir={sweep}", timeout=120)  # fmt: skip
    assert proc.returncode != 0 and "no_such_attack" in proc.stderr
    assert not list(sweep.glob("*/metrics.json")), "validation happens before the first job"
