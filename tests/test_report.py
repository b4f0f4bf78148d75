"""``python -m gsdefense.report`` and the sweep summary on sweeps with odd folders, through the real CLI.

Run folders are written the way a run writes them (``.hydra/config.yaml`` composed from conf/, a metrics.json
carrying the config's run_id) without training, so a 150-run preset grid costs seconds.
"""

from __future__ import annotations

import json
import os
import re
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
    assert "| attack.poison_ratio | defense | n | clean_acc | rad | ε |" in summary  # seed is what is averaged
    cell = truth[(truth["ratio"] == 0.3) & (truth["clip"] == 2.0)]["rad"]
    acc, sd = f"{0.95 * (1 - cell).mean():.3g}", f"{0.95 * cell.std(ddof=1):.2g}"
    expected = f"| 0.3 | DP clip=2 noise=0 | 3 | {acc} ± {sd} | {cell.mean():.3g} ± {cell.std(ddof=1):.2g} | ∞ |"
    assert expected in summary  # 3 significant digits, sd 2; σ = 0: ε = ∞
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


def _nc_sweep(sweep: Path, *, seeds: int = 2) -> None:
    """Run folders of preset nc_vs_dp on digits (MLP): 3 attacks × C 0.1, 1, 4 × σ 0, 0.5, 2, and vanilla."""
    rng = np.random.default_rng(3)
    job = 0
    for attack in ("badnets", "blend", "narcissus"):
        common = ("+experiment=nc_vs_dp", "dataset=digits", "model=mlp", f"attack={attack}")
        vanilla = compose_cfg(*common, "dp=none", "~dp.clip", "~dp.noise")
        settings = [(vanilla, None, None)] + [(compose_cfg(*common), c, s) for c in (0.1, 1, 4) for s in (0, 0.5, 2)]
        for (cfg, clip, noise), seed in ((x, s) for x in settings for s in range(seeds)):
            cfg = cfg.copy()
            cfg.seed = seed
            if clip is not None:
                cfg.dp.clip, cfg.dp.noise = clip, noise
            index = float(rng.normal(2, 1))
            metrics = {
                "clean_acc": 0.9 + rng.normal(0, 0.01), "asr": 0.8 + rng.normal(0, 0.01), "rad": 1 / 3,
                "epsilon": None if not noise else 1.0 / noise, "nc_detected": index > 2,
                "nc_target_anomaly_index": index, "asr_after": 0.1, "clean_acc_after": 0.88, "train_loss": 0.5,
                "warnings": ["train loss rose for 2 epochs in a row (1 → 1.5 → 2.1)"] if job == 3 else [],
            }  # fmt: skip
            write_run(sweep / str(job), cfg, **metrics)
            job += 1


def test_summary_of_nc_vs_dp_leads_with_the_setup_and_the_detector_results(tmp_path: Path) -> None:
    sweep = tmp_path / "nc"
    _nc_sweep(sweep)
    out = tmp_path / "report"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-W", "error::DeprecationWarning", "-m", "gsdefense.report", str(sweep), "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = (out / "summary.md").read_text()
    headings = [line for line in summary.splitlines() if line.startswith("## ")]
    assert headings[:4] == ["## Setup", "## Results", "## Warnings", "## Runs by status"]
    setup = summary.split("## Setup")[1].split("## Results")[0]
    expected = (
        "- dataset: digits",
        "- model: mlp",
        "- schedule: sgd, lr 0.05, momentum 0.9, batch 64, epochs 20",
        "- attack: badnets (poison ratio 10%); blend (poison ratio 10%); narcissus (poison ratio 1%)",
        "- detector: neural_cleanse (mitigation unlearn",
        "- defense: vanilla (no DP); dpsgd at C 0.1, 1, 4 × σ 0, 0.5, 2",
    )
    for line in expected:
        assert line in setup, (line, setup)
    table = summary.split("## Results")[1].split("## Warnings")[0]
    header = (
        "| attack | defense | n | clean_acc | asr | rad | ε | detected | anomaly index | asr_after | clean_acc_after |"
    )
    assert header in table
    rows = [line for line in table.splitlines() if line.startswith("| ") and line != header]
    assert len(rows) == 3 * 10  # attacks × (vanilla + 9 DP settings); 18 columns of settings before
    assert rows[0].startswith("| badnets | vanilla | 2 |") and "| – |" in rows[0]  # vanilla first; ε – (no DP)
    assert rows[1].startswith("| badnets | DP clip=0.1 noise=0 | 2 |") and "| ∞ |" in rows[1]
    assert "| 0.333 |" in rows[0]  # RAD 1/3: 3 significant digits, no sd when the seeds agree
    cells = [c.strip() for row in rows for c in row.strip("|").split("|")]
    assert all(len(c.split(" ± ")[0]) <= 7 for c in cells if c[:1].isdigit() or c[:1] == "-")  # nothing unrounded
    assert not any(c.endswith(".0") for c in cells)  # integers as integers
    assert all(re.fullmatch(r"\d/2", row.split("|")[8].strip()) for row in rows)  # detected: flagged / runs
    assert "train loss rose for 2 epochs in a row" in summary.split("## Warnings")[1]
    assert "Pandas4Warning" not in proc.stderr and "DeprecationWarning" not in proc.stderr


def test_a_sweep_over_datasets_with_class_lists_and_nulls_reports_without_a_warning(tmp_path: Path) -> None:
    """dataset.classes holds [3, 4] (FashionMNIST-3/4) and null (digits): the report groups and tabulates it with
    DeprecationWarnings (pandas' Pandas4Warning among them) as errors, and each panel names its dataset."""
    sweep = tmp_path / "mixed"
    job = 0
    for dataset in ("fashion_mnist_3_4", "digits"):
        for clip, seed in ((c, s) for c in (1.0, 4.0) for s in (0, 1)):
            cfg = compose_cfg(f"dataset={dataset}", "attack=badnets", f"dp.clip={clip}", f"seed={seed}")
            write_run(sweep / str(job), cfg, clean_acc=0.9 - 0.01 * clip, asr=0.5, rad=0.01 * clip, epsilon=1.0)
            job += 1
    out = tmp_path / "report"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-W", "error::DeprecationWarning", "-m", "gsdefense.report", str(sweep), "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    summary = (out / "summary.md").read_text()
    assert "- dataset: digits, fashion_mnist" in summary  # FashionMNIST-3/4 is fashion_mnist with classes [3, 4]
    assert "| dataset | defense | n |" in summary  # classes follow from the dataset: no column of their own
    assert (out / "asr_rad_vs_dp.png").exists() and "skipped asr_rad_vs_dp" not in proc.stdout
    assert pd.read_csv(out / "runs.csv")["dataset.classes"].fillna("").tolist().count("(3, 4)") == 4
