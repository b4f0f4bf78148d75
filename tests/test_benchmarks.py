"""The benchmark scripts run (their figures are for the notes, not asserted: no timed tests)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

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
        ("neural_cleanse.py", ["--repeats", "1", "--models", "mlp", "--max-epochs", "5"], ["mlp"]),
        ("frogs_trials.py", ["--targets", "2", "--max-poisons", "2", "--pretrain-epochs", "2", "--retrain-epochs", "2",
                             "--max-iters", "50", "--mode", "oneshot", "--dp", "dpsgd"],
         ["oneshot", "dpsgd", "batched"]),
    ],
)  # fmt: skip
def test_benchmark_script_runs_and_prints_its_table(script, args, row_start):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True, text=True,
                          timeout=600, cwd=ROOT)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line.split() for line in proc.stdout.splitlines() if line.split()[: len(row_start)] == row_start]
    assert rows, proc.stdout
    assert all(float(value.rstrip("%")) == float(value.rstrip("%")) for value in rows[0][-2:])  # numbers, not NaN


def _script(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_gpu_check_quick_on_cpu_writes_a_consistent_table(tmp_path):
    """The GPU check's benchmark runs on CPU (CI smoke test) and writes JSON + markdown with consistent ratios."""
    proc = _script(str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--quick", "--models", "mlp",
                   "--out", str(tmp_path))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["environment"]["torch"] == torch.__version__ and report["environment"]["device"] == "cpu"
    [row] = report["epoch"]
    assert (row["model"], row["batch"], row["n"]) == ("mlp", 32, 128)
    assert all(row[f"{arm}_s"] > 0 for arm in ("vanilla", "dp", "opacus"))
    assert row["dp_vs_vanilla"] == pytest.approx(row["dp_s"] / row["vanilla_s"])
    assert row["opacus_vs_dp"] == pytest.approx(row["opacus_s"] / row["dp_s"])
    [grid] = report["grid"]
    assert grid["configs"] == 4 and grid["speedup"] == pytest.approx(grid["sequential_s"] / grid["fused_s"])
    md = (tmp_path / "gpu_check.md").read_text()
    assert "| mlp | 32 |" in md and f"{row['dp_vs_vanilla']:.2f}" in md and md.strip() in proc.stdout


def test_gpu_check_rejects_an_unknown_dp_variant_field_in_one_line(tmp_path):
    proc = _script(str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--quick", "--dp-variant",
                   "fixed:no_such_field=true", "--out", str(tmp_path))  # fmt: skip
    assert proc.returncode != 0 and "no_such_field" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "gpu_check.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the exit status without a CUDA device")
def test_gpu_check_script_without_cuda_exits_2_with_one_line(tmp_path):
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu-check.sh"), str(tmp_path)], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "no CUDA device" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_sweep_overhead_books_a_sweep_to_its_phases(tmp_path):
    """The 6-run design sweep (1 epoch) under the phase timers: every hook found, phases add up to the wall time."""
    proc = _script(str(ROOT / "benchmarks" / "sweep_overhead.py"), "--sweeps", "basic6", "--epochs", "1", "--payoff",
                   "--out", str(tmp_path))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    [sweep] = json.loads((tmp_path / "sweep_overhead.json").read_text())["breakdown"]
    assert sweep["runs"] == 6 and not sweep["missing_hooks"]
    seconds, calls = sweep["seconds"], sweep["calls"]
    assert sum(seconds.values()) == pytest.approx(sweep["wall_s"], rel=1e-3)
    assert calls["Hydra job setup"] == 6 and calls["validation"] == 6
    # the primary config (twice), each job once, and the sweeper's up-front check of one job per distinct override
    # (4 here): fewer than the basic sweeper's check of every job (1 + 2 * 6 and more)
    assert 1 + 6 + 1 <= calls["Hydra compose"] <= 2 + 6 + 4
    assert calls["training"] == 6 + 1 + 6  # the runs, the vanilla reference, one DP reference per (clip, noise)
    assert all(seconds[p] > 0 for p in ("imports", "Hydra compose", "training", "references", "outputs"))
    assert "| training |" in (tmp_path / "sweep_overhead.md").read_text()


def test_fmnist_floor_prints_the_ratio_table(tmp_path):
    """benchmarks/fmnist_floor.py on random data of FashionMNIST's shape (no IDX files in --data-dir)."""
    proc = _script(str(ROOT / "benchmarks" / "fmnist_floor.py"), "--workloads", "lr", "--repeats", "1", "--epochs", "1",
                   "--data-dir", str(tmp_path), "--json", str(tmp_path / "floor.json"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "random data of FashionMNIST's shape" in proc.stdout
    [row] = [line for line in proc.stdout.splitlines() if line.startswith("| lr |")]
    ratios = [float(v) for v in row.strip("|").split("|")[-3:]]  # vanilla ÷ floor, DP ÷ floor, DP ÷ vanilla
    assert all(r > 0 for r in ratios)
    report = json.loads((tmp_path / "floor.json").read_text())["lr"]
    assert report["n"] == 10_800 and report["steps"] == 36 and report["cpu_s"]["dp"] > 0
