"""The benchmark scripts run (their figures are for the notes, not asserted: no timed tests)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.parametrize(
    "script, args, row_start",
    [
        ("dp_overhead.py", ["--repeats", "1", "--models", "mlp"], ["mlp"]),
        ("speed.py", ["--repeats", "1", "--epochs", "1", "--models", "mlp", "--arms", "vanilla", "bk", "opacus_loop",
                      "--memory"], ["mlp"]),
        ("fused_grid.py", ["--models", "mlp", "--epochs", "1", "--clips", "0.5", "1", "--noises", "0", "1", "--runs",
                           "--memory"], ["mlp", "train"]),
        ("telemetry_overhead.py", ["--repeats", "1", "--epochs", "1", "--models", "mlp", "--datasets", "digits"],
         ["digits", "mlp"]),
    ],
)  # fmt: skip
def test_benchmark_script_runs_and_prints_its_table(script, args, row_start):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True, text=True,
                          timeout=600, cwd=ROOT)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line.split() for line in proc.stdout.splitlines() if line.split()[: len(row_start)] == row_start]
    assert rows, proc.stdout
    assert all(float(value.rstrip("%")) == float(value.rstrip("%")) for value in rows[0][-2:])  # numbers, not NaN
