"""``python -m gsdefense.report`` and the sweep summary on sweeps with odd folders, through the real CLI.

Run folders are written the way a run writes them (``.hydra/config.yaml`` composed from conf/, a metrics.json
carrying the config's run_id) without training, so a 150-run preset grid costs seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import DictConfig, OmegaConf

from gsdefense.analysis import config_run_id
from gsdefense.callbacks import SweepSummary
from tests.conftest import ROOT, compose_cfg

RATIOS = (0.0, 0.01, 0.02, 0.03, 0.04, 0.05, 0.1, 0.2, 0.3, 0.4)
CLIPS = (8.0, 4.0, 2.0, 1.0, 0.1)


def write_run(run_dir: Path, cfg: DictConfig, **metrics) -> Path:
    """A finished run's folder: its config, and a metrics.json with its run_id (overridable)."""
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    record = {"run_id": config_run_id(cfg), "status": "ok", "error": None, **metrics}
    (run_dir / "metrics.json").write_text(json.dumps(record))
    return run_dir


def report(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "gsdefense.report", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def hong4(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    """Hong Fig. 4a's grid (preset hong_fig4_label_flip): 10 poison ratios × 5 clip norms × 3 seeds."""
    sweep = tmp_path_factory.mktemp("hong4") / "sweep"
    base = compose_cfg("+experiment=hong_fig4_label_flip", "dataset=breast_cancer")
    rng = np.random.default_rng(0)
    rows = []
    for job, (ratio, clip, seed) in enumerate((r, c, s) for r in RATIOS for c in CLIPS for s in range(3)):
        cfg = base.copy()
        cfg.attack.poison_ratio, cfg.dp.clip, cfg.seed = ratio, clip, seed
        rad = float(ratio * clip / 8 + rng.normal(0, 0.02))
        metrics = {"clean_acc": 0.95 * (1 - rad), "rad": rad, "asr": None, "epsilon": None, "device": "cpu"}
        write_run(sweep / str(job), cfg, **metrics)
        rows.append({"ratio": ratio, "clip": clip, "seed": seed, "rad": rad})
    return sweep, pd.DataFrame(rows)


def test_summary_has_one_row_per_setting_with_n_and_sd_over_seeds(hong4, tmp_path: Path) -> None:
    sweep, truth = hong4
    out = tmp_path / "report"
    proc = report(str(sweep), "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = (out / "summary.md").read_text()
    assert "mean ± sd over its n = 3 seeds" in summary
    table = [line for line in summary.splitlines() if line.startswith("| ") and "clean_acc" not in line]
    rows = [line.split(" | ") for line in table if line.count("|") >= 5]
    assert len(rows) == 50  # 10 ratios × 5 clips, seeds averaged
    assert "| defense | attack.poison_ratio | n | clean_acc | rad |" in summary  # seed is what is averaged
    cell = truth[(truth["ratio"] == 0.3) & (truth["clip"] == 2.0)]["rad"]
    expected = f"| DP clip=2 noise=0 | 0.3 | 3 | {0.95 * (1 - cell).mean():.3f} ± {0.95 * cell.std(ddof=1):.3f} | "
    assert expected + f"{cell.mean():.3f} ± {cell.std(ddof=1):.3f} |" in summary
    assert (out / "rad_vs_poison_ratio.png").stat().st_size > 10_000
    # privacy_tradeoff names the cause: σ = 0 runs have no finite ε.
    assert "privacy_tradeoff: no run has a finite ε (150 DP runs have σ = 0" in summary
    csv = (out / "runs.csv").read_text()
    assert "${" not in csv and "oc.env" not in csv and "config.cache_dir" not in csv.splitlines()[0]


def test_odd_run_folders_are_listed_and_the_report_is_still_written(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    moons = compose_cfg("dataset=moons", "model=mlp", "attack=label_flip")
    vanilla, dp = moons.copy(), moons.copy()
    OmegaConf.update(vanilla, "dp", {"name": "none"}, merge=False)
    good = write_run(sweep / "0", dp, clean_acc=0.9, rad=0.05, asr=None, epsilon=3.0)
    from gsdefense.plan import prepare

    torch.save(prepare(dp).build_model().state_dict(), good / "model.pt")
    broken = write_run(sweep / "1", vanilla, clean_acc=0.95, rad=0.0, asr=None, epsilon=None)
    (broken / "model.pt").write_bytes(b"not a torch file")
    write_run(sweep / "2", dp, clean_acc="0.9")  # wrong type
    write_run(sweep / "3", dp, run_id="0123456789abcdef0123", clean_acc=0.5)  # another config's metrics
    corrupt = write_run(sweep / "4", dp, clean_acc=0.9)
    (corrupt / ".hydra" / "config.yaml").write_text("dataset: {name: [moons\n")
    out = tmp_path / "out"
    proc = report(str(sweep), "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    summary = (out / "summary.md").read_text()
    assert "| ok | 2 |" in summary and "| stale | 1 |" in summary and "| invalid | 2 |" in summary
    assert f"`{sweep.resolve() / '2'}` invalid: metrics.json: clean_acc is '0.9' (str), not a number" in summary
    assert f"`{sweep.resolve() / '3'}` stale: metrics.json (ok) belongs to another config" in summary
    assert f"`{sweep.resolve() / '4'}` invalid: unreadable .hydra/config.yaml" in summary
    # The vanilla model does not load: said, and the figure is drawn from the DP model alone.
    assert "## Problems found while drawing" in summary and f"{broken.resolve()}: model.pt does not load" in summary
    assert (out / "decision_boundaries.png").exists()
    assert len(pd.read_csv(out / "runs.csv")) == 5


def test_out_pointing_at_a_file_is_one_line_error(hong4, tmp_path: Path) -> None:
    sweep, _ = hong4
    target = tmp_path / "report.md"
    target.write_text("mine")
    proc = report(str(sweep), "--out", str(target))
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: --out {target} is a file; give a folder (it is created if missing)"
    assert target.read_text() == "mine"


def test_help_is_plain_text() -> None:
    proc = report("-h")
    assert proc.returncode == 0
    assert "``" not in proc.stdout and ":func:" not in proc.stdout
    assert "multirun/latest" in proc.stdout and "--out" in proc.stdout


def test_latest_is_the_newest_sweep(hong4, tmp_path: Path) -> None:
    sweep, _ = hong4
    older = tmp_path / "multirun" / "2026-01-01" / "10-00-00"
    newer = tmp_path / "multirun" / "2026-01-02" / "09-00-00"
    for i, folder in enumerate((older, newer)):
        folder.mkdir(parents=True)
        for job in ("0", "1"):
            shutil.copytree(sweep / job, folder / job)
        (folder / "multirun.yaml").write_text("{}")
        os.utime(folder / "multirun.yaml", (1_000_000 + i, 1_000_000 + i))
    proc = report("multirun/latest", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (newer / "report" / "summary.md").exists() and not (older / "report").exists()
    proc = report("nowhere/latest", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "no sweep" in proc.stderr


def _summary(sweep: Path, capsys: pytest.CaptureFixture) -> tuple[int, str]:
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}})
    try:
        SweepSummary().on_multirun_end(config)
        code = 0
    except SystemExit as exit_:
        code = int(exit_.code)
    return code, capsys.readouterr().err


def test_sweep_summary_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = compose_cfg("dataset=moons")
    sweep = tmp_path / "sweep"
    write_run(sweep / "0", cfg, clean_acc=0.9)
    write_run(sweep / "1", cfg, status="diverged", error=None, diverged_epoch=3)
    code, err = _summary(sweep, capsys)
    assert code == 0  # a diverged run is a recorded outcome: listed, not a failure
    assert f"sweep {sweep}: 1 diverged, 1 ok" in err and "diverged " in err and "FAILED" not in err
    write_run(sweep / "2", cfg, run_id="0123456789abcdef0123", clean_acc=0.5)
    code, err = _summary(sweep, capsys)
    assert code == 1 and "1 stale" in err and f"STALE {sweep.resolve() / '2'}" in err


def test_sweep_summary_never_crashes(tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch) -> None:
    cfg = compose_cfg("dataset=moons")
    sweep = tmp_path / "sweep"
    write_run(sweep / "0", cfg, clean_acc=0.9)
    odd = write_run(sweep / "1", cfg, clean_acc=0.9)
    (odd / "metrics.json").write_bytes(b"\xff\xfe garbage")
    code, err = _summary(sweep, capsys)
    assert code == 1 and "1 invalid, 1 ok" in err and "unreadable metrics.json" in err

    def explode(run_dir):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr("gsdefense.callbacks.read_run", explode)
    code, err = _summary(sweep, capsys)
    assert code == 1 and "2 failed" in err and "disk on fire" in err and "Traceback" not in err
    code, err = _summary(tmp_path / "no-such-sweep", capsys)
    assert code == 1 and "no runs" in err
