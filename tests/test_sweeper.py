"""hydra/sweeper=gsdefense: a grid with an unknown option fails before any job (see also test_hostile_grid)."""

from __future__ import annotations

from tests.conftest import run_cli


def test_an_unknown_option_in_a_grid_fails_before_any_job(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli("-m", "optimizer.epochs=1", "dp.clip=0.5,1", "attack=blend,no_such_attack",
                   f"hydra.sweep.dir={sweep}", timeout=120)  # fmt: skip
    assert proc.returncode == 2 and "no_such_attack" in proc.stderr and "Traceback" not in proc.stderr
    assert not sweep.exists(), "validation happens before the sweep folder is even created"
