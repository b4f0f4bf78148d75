"""``python -m gsdefense.reproduce`` as a command: the sweep plan (launchers, seeds, folders, both scales), the data
check before any sweep, published verdicts never overwritten (``--report-only`` in a fresh clone, missing data,
``--claims`` subsets), the report's tally/setup/sections, ``--help``'s measured time, the real CLI in smoke mode,
and the committed reports."""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from gsdefense.errors import ConfigError
from gsdefense.reproduce import datacheck, report, run, runner, spec
from gsdefense.reproduce.__main__ import main
from gsdefense.reproduce.claims import BY_ID, CLAIMS, select
from gsdefense.reproduce.evaluate import evaluate
from gsdefense.reproduce.evidence import common, telemetry_row
from gsdefense.reproduce.findings import batch_mean_artifact
from gsdefense.reproduce.setup import part_setup
from gsdefense.reproduce.spec import merge
from gsdefense.reproduce.tables import CLAIM_COLUMNS, merged
from gsdefense.reproduce.verdicts import VERDICTS
from tests.conftest import ROOT

COMMITTED = {"embedded": ROOT / "docs" / "reproduction", "paper": ROOT / "docs" / "reproduction-paper"}


def _cli(*args: str, env: dict | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "gsdefense.reproduce", *args], cwd=ROOT, env=full,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


# --- the sweep plan ---------------------------------------------------------------------------------------------------
def test_merge_keeps_the_first_position_and_the_last_value() -> None:
    assert merge(["a=1", "b=2", "dp.noise=0"], ["c=3", "a=9"], ["~dp.noise"]) == ["a=9", "b=2", "~dp.noise", "c=3"]


def test_claims_are_complete() -> None:
    assert list(BY_ID) == ["H1", "H2", "H3", "H4", "H5", "H6", "H7", "L1", "L2", "S1", "N1"]
    for claim in CLAIMS:
        assert claim.ours in [a.label for a in claim.checks[0].arms], claim.id
        assert claim.seeds >= 3 and claim.paper_seeds >= 3 and claim.parts and claim.checks
        assert {a.part for c in claim.checks for a in c.arms} <= {p.name for p in claim.parts}, claim.id
        assert "issue" not in claim.source.lower() + claim.text.lower(), claim.id  # no internal issue numbers
    assert [c.id for c in select(["h2", "S1"])] == ["H2", "S1"]
    with pytest.raises(ConfigError, match="--claims: unknown claim id.s. X9"):
        select(["X9"])


def test_plan_launchers_seeds_and_folders(tmp_path: Path) -> None:
    sweeps = {s.key: s for s in runner.plan([BY_ID["H2"]], scale="embedded", out=tmp_path, seeds=None)}
    dp, vanilla = sweeps["H2/dp"], sweeps["H2/vanilla"]
    assert dp.hydra == ("hydra/launcher=fused", f"hydra.sweep.dir={tmp_path}/sweeps/H2/dp")
    assert vanilla.hydra == (f"hydra.sweep.dir={tmp_path}/sweeps/H2/vanilla",)  # the configured default launcher
    assert dp.overrides[-1] == "seed=" + ",".join(map(str, range(10))) and "dataset=breast_cancer" in dp.overrides
    paper = runner.plan([BY_ID["H2"]], scale="paper", out=tmp_path, seeds=None, launcher="slurm")
    assert [s.hydra[0] for s in paper] == ["hydra/launcher=fused_slurm", "hydra/launcher=slurm"]
    ten = "seed=" + ",".join(map(str, range(10)))  # H2 runs 10 seeds at both scales (its effect is a few test images)
    assert all("dataset=breast_cancer" not in s.overrides and s.overrides[-1] == ten for s in paper)
    smoke = runner.plan([BY_ID["H2"]], scale="embedded", out=tmp_path, seeds=None, smoke=True)
    assert all(s.overrides[-1] == "seed=0" and "optimizer.epochs=2" in s.overrides for s in smoke)
    with pytest.raises(ConfigError, match="--launcher"):
        runner.plan([BY_ID["H2"]], scale="paper", out=tmp_path, seeds=3, launcher="pbs")
    with pytest.raises(ConfigError, match="--seeds: must be at least 1"):
        runner.plan([BY_ID["H2"]], scale="paper", out=tmp_path, seeds=0)


def test_longest_sweeps_start_first(tmp_path: Path) -> None:
    sweeps = runner.plan([BY_ID["H1"], BY_ID["H3"], BY_ID["N1"]], scale="paper", out=tmp_path, seeds=None)
    order = [s.key for s in runner.longest_first(sweeps)]
    assert order[:3] == ["H3/dp", "N1/dp", "H3/vanilla"] and order[-1] == "H1/vanilla"
    measured = [s.key for s in runner.longest_first(sweeps, {"H1/vanilla": 9999.0})]
    assert measured[0] == "H1/vanilla"  # a sweep's last measured time wins over its hint


def test_h1_insertion_and_l1_use_the_settings_their_sources_give(tmp_path: Path) -> None:
    h1 = {s.part.name: s for s in runner.plan([BY_ID["H1"]], scale="embedded", out=tmp_path, seeds=None)}
    ins = h1["insertion"].overrides
    assert {"attack.poison_ratio=0.05", "scenario.retrain_lr=0.04", "dataset=digits"} <= set(ins)  # the preset's own
    assert "dp.noise=0.025" in h1["dp"].overrides  # σ = 0.1 as a std at C = 4
    l1 = runner.plan([BY_ID["L1"]], scale="embedded", out=tmp_path, seeds=None)
    schedules = [{o for o in s.overrides if o.startswith("optimizer.")} for s in l1]
    assert schedules[0] == schedules[1]  # both arms on one schedule


@pytest.mark.parametrize("scale", ["embedded", "paper"])
def test_dry_run_composes_every_sweep(scale: str, capsys: pytest.CaptureFixture) -> None:
    assert main(["--dry-run", "--scale", scale, "--out", "/nonexistent/out"]) == 0
    text = capsys.readouterr().out
    n = sum(len(c.parts) for c in CLAIMS)
    assert text.count(": composes") == n and f"{n} sweeps, 0 that do not compose" in text


def test_bad_arguments_are_one_line(capsys: pytest.CaptureFixture) -> None:
    assert main(["--claims", "H2", "Q1", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: --claims: unknown claim id(s) Q1.")
    assert main(["--jobs", "0", "--dry-run"]) == 2
    capsys.readouterr()
    assert main(["--smoke", "--claims", "H2"]) == 2  # never over the committed report
    assert capsys.readouterr().err.startswith("error: --smoke: would write its 1-seed plumbing runs over the committed")


# --- the data check, and published verdicts are never overwritten -----------------------------------------------------
def test_report_only_in_a_fresh_clone_refuses_and_keeps_the_report(tmp_path: Path) -> None:
    for scale, flag in (("embedded", []), ("paper", ["--scale", "paper"])):
        out = tmp_path / scale
        shutil.copytree(COMMITTED[scale], out, ignore=shutil.ignore_patterns("sweeps"))
        before = _digest(out)
        proc = _cli("--report-only", *flag, "--out", str(out))
        assert proc.returncode == 2, proc.stdout + proc.stderr
        err = proc.stderr.strip()
        assert err.count("\n") == 0 and "Traceback" not in proc.stderr + proc.stdout, proc.stderr
        assert err.startswith(f"error: --report-only: no sweeps under {out / 'sweeps'} for H1, H2")
        assert "the report there is kept as it is. Fix: run python -m gsdefense.reproduce" in err
        assert _digest(out) == before  # not one file touched


def test_paper_scale_without_the_data_names_what_is_missing(tmp_path: Path) -> None:
    out, empty = tmp_path / "paper", tmp_path / "no-data"
    empty.mkdir()
    proc = _cli("--scale", "paper", "--claims", "L1", "L2", "--out", str(out), env={"GSDEFENSE_DATA_DIR": str(empty)})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr + proc.stdout
    assert [line.split(":", 2)[:2] for line in lines[:2]] == [["L1", " needs CIFAR-10"], ["L2", " needs CIFAR-10"]]
    assert all("dataset.data_dir" in line for line in lines[:2])  # the loader's own line: what and where
    assert lines[2] == "error: no selected claim can run here (L1, L2: see above); nothing was run or written."
    assert not out.exists()


def test_missing_data_keeps_a_published_verdict_and_lists_the_rest(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "paper"
    out.mkdir()
    pd.DataFrame({"id": ["L1"], "verdict": ["reproduced"]}).to_csv(out / "claims.csv", index=False)
    (out / "sections").mkdir()
    (out / "sections" / "L1.md").write_text("## L1 at paper scale: reproduced\n")
    gap = datacheck.Missing("CIFAR-10", "dataset.data_dir: cifar10 files … are not in … Fix: …")
    monkeypatch.setattr(datacheck, "missing", lambda sweeps: {"L1": gap, "L2": gap})
    monkeypatch.setattr(runner, "run_all", lambda sweeps, jobs: [])
    args = argparse.Namespace(out=out, scale="paper", seeds=None, claims=["H2", "H4", "L1", "L2"], smoke=False, jobs=1,
                              launcher="basic", report_only=False)  # fmt: skip
    claims = select(args.claims)
    assert run.reproduce(args, claims, runner.plan(claims, scale="paper", out=out, seeds=None), command="x") == 0
    table = pd.read_csv(out / "claims.csv").set_index("id")["verdict"]
    assert table.to_dict() == {"H2": "inconclusive", "H4": "not run here", "L1": "reproduced", "L2": "needs CIFAR-10"}
    assert (out / "sections" / "L1.md").read_text() == "## L1 at paper scale: reproduced\n"
    l2 = (out / "sections" / "L2.md").read_text()
    assert "**Needs CIFAR-10.** dataset.data_dir:" in l2 and "python launch.py -m +experiment=limitations" in l2
    readme = (out / "README.md").read_text()
    assert "**At paper scale: 1 reproduced · 1 inconclusive · 1 needs CIFAR-10 · 1 not run here** (4 claims)" in readme
    assert "**Not run here.** Fig. 5's FashionMNIST panel" in (out / "sections" / "H4.md").read_text()


def test_help_prints_the_measured_time(tmp_path: Path, monkeypatch, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "docs" / "reproduction").mkdir(parents=True)
    pd.DataFrame({"sweep": ["H1/vanilla", "all (wall clock)"], "seconds": [30.0, 600.0], "returncode": [0, None],
                  "cpus": [2, 2]}).to_csv(tmp_path / "docs" / "reproduction" / "timing.csv", index=False)  # fmt: skip
    monkeypatch.setattr(spec, "ROOT", tmp_path)
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "embedded: 10 min on 2 CPU cores" in text and "paper:    not measured yet" in text
    assert "~1 h" not in text


# --- the report -------------------------------------------------------------------------------------------------------
def test_tally_line() -> None:
    line = report.tally(["reproduced", "opposite direction", "needs Purchase-100", "reproduced"], scale="paper")
    assert line == "**At paper scale: 2 reproduced · 1 opposite direction · 1 needs Purchase-100** (4 claims)"


def test_the_project_readme_shows_each_committed_tally(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("- claims: <!-- tally:paper -->old<!-- /tally --> and <!-- tally:embedded -->x<!-- /tally -->.\n")
    assert report.update_tally(readme, scale="paper", line="At paper scale: 2 reproduced")
    assert readme.read_text() == (
        "- claims: <!-- tally:paper -->At paper scale: 2 reproduced<!-- /tally --> and "
        "<!-- tally:embedded -->x<!-- /tally -->.\n"
    )
    assert not report.update_tally(tmp_path / "missing.md", scale="paper", line="y")
    project = (ROOT / "README.md").read_text()
    assert "<!-- tally:paper -->" in project and "<!-- tally:embedded -->" in project


def test_setup_is_generated_from_the_runs() -> None:
    rows = pd.DataFrame({"dataset.name": ["fashion_mnist"] * 3, "dataset.classes": [(3, 4)] * 3, "seed": [0, 1, 2],
                         "n_clean": [10800] * 3, "n_test": [2000] * 3, "model.name": ["lr"] * 3,
                         "attack.name": ["label_flip"] * 3, "attack.poison_ratio": [0.4] * 3,
                         "optimizer.name": ["adam"] * 3, "optimizer.lr": [0.01] * 3, "optimizer.batch_size": [300] * 3,
                         "optimizer.epochs": [40] * 3, "dp.name": ["dpsgd"] * 3, "dp.clip": [8.0, 4.0, 2.0],
                         "dp.noise": [0.0] * 3})  # fmt: skip
    assert part_setup("dp", rows) == (
        "`dp` (3 runs): FashionMNIST-3/4 (10,800 clean training; 2,000 test images: one image is 0.0005 of accuracy); "
        "lr; label_flip (poison_ratio 0.4); adam (lr 0.01, batch_size 300, epochs 40); dpsgd (clip 2/4/8, noise 0); "
        "seeds 0–2."
    )
    assert part_setup("dp", rows.iloc[:1]).startswith("`dp` (1 run): FashionMNIST-3/4")


def test_evidence_per_sample_telemetry_and_the_batch_mean_artifact() -> None:
    epochs = pd.DataFrame({"epoch": [1, 2, 3, 4], "sample_norm_ratio": [2.0**2, 2.0, 2.0, 1.0],
                           "clipped_sample_norm_ratio": [2.0, 2.0, 1.0, 1.0],
                           "poison_sample_cosine": [-0.8, -0.5, -0.3, -0.1],
                           "mean_grad_ratio": [108.0] * 4})  # fmt: skip
    row = telemetry_row(epochs.iloc[::-1])  # the order of rows does not matter, epochs do
    ln2 = 0.6931471805599453
    assert row["log_sample_ratio"] == pytest.approx(ln2) and row["sample_ratio_gmean"] == pytest.approx(2.0)
    assert row["log_update_ratio"] == pytest.approx(ln2 / 2) and row["neg_poison_cosine"] == pytest.approx(0.425)
    assert row["ratio_fall"] == pytest.approx(2 * ln2) and row["cos_fall"] == pytest.approx(0.7)
    assert row["mean_grad_ratio_gmean"] == pytest.approx(108.0)
    runs = common(pd.DataFrame({"n_train": [10900] * 3, "n_poison": [100] * 3, "rad_best": [-0.01, 0.0, 0.02],
                                "n_test": [2000] * 3}))  # fmt: skip
    assert runs["n_clean"].tolist() == [10800] * 3 and runs["rad_early_stop"].tolist() == [0.0, 0.0, 0.02]
    van = runs.assign(mean_grad_ratio_gmean=[107.0, 108.0, 109.0], sample_ratio_gmean=[12.0, 12.5, 13.0])
    text = batch_mean_artifact({"vanilla": van})
    assert "108 ± 1 (n=3) in the vanilla runs, against n_clean / n_poison = 10,800 / 100 = 108" in text
    assert "mean poison ‖g_i‖ ÷ mean clean ‖g_i‖ = 12.5 ± 0.5 (n=3)" in text


def test_a_claims_subset_keeps_the_other_claims(tmp_path: Path) -> None:
    def write(ids: list[str]) -> str:
        claims = select(ids)
        results = [evaluate(c, out=tmp_path) for c in claims]  # no sweeps: inconclusive, "no runs"
        sweeps = runner.plan(claims, scale="embedded", out=tmp_path, seeds=None)
        report.write(tmp_path, results, runs=[], wall=None, sweeps=sweeps, paper_sweeps=[], command="c",
                     scale="embedded")  # fmt: skip
        return (tmp_path / "README.md").read_text()

    write(["H2", "S1"])
    text = write(["H3"])
    assert list(pd.read_csv(tmp_path / "claims.csv")["id"]) == ["H2", "H3", "S1"]
    assert [line for line in text.splitlines() if line.startswith("## ")][-3:] == [
        "## H2 at embedded scale: inconclusive", "## H3 at embedded scale: inconclusive",
        "## S1 at embedded scale: inconclusive"]  # fmt: skip
    assert text.splitlines()[2] == "**At embedded scale: 3 inconclusive** (3 claims)"


# --- the real CLI -----------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_smoke_through_the_cli(tmp_path: Path) -> None:
    out = tmp_path / "repro"
    proc = _cli("--smoke", "--claims", "H2", "S1", "--out", str(out), timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for sweep in ("H2/dp", "H2/vanilla", "S1/attack"):
        assert (out / "sweeps" / sweep / "multirun.yaml").exists(), sweep
    assert len(list((out / "sweeps").glob("*/*/*/metrics.json"))) == 3 + 1 + 4
    claims = pd.read_csv(out / "claims.csv")
    assert tuple(claims.columns) == CLAIM_COLUMNS and list(claims["id"]) == ["H2", "S1"]
    assert set(claims["verdict"]) <= set(VERDICTS) and (claims["n_seeds"] == 1).all()
    s1 = pd.read_csv(out / "data" / "S1.csv")
    assert len(s1) == 4 and s1["test_loss"].gt(0).all()  # derived from each run's model.pt
    readme = (out / "README.md").read_text()
    assert readme.startswith("# Which claims hold at embedded scale\n\n**At embedded scale:")
    assert "![H2](figures/H2.png)" in readme and "hydra.sweep.dir=" in readme and "**Setup** (from the runs'" in readme
    assert (out / "figures" / "S1.png").stat().st_size > 10_000
    assert (out / ".gitignore").read_text().splitlines()[-1] == "sweeps/"


# --- the committed reports --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scale", ["embedded", "paper"])
def test_committed_report_has_every_claim(scale: str) -> None:
    path = COMMITTED[scale] / "claims.csv"
    if not path.exists():
        pytest.skip(f"{path.relative_to(ROOT)} is not generated yet: run python -m gsdefense.reproduce")
    table = pd.read_csv(path)
    if "scale" not in table:
        pytest.skip(f"{path.relative_to(ROOT)} predates the current report format: regenerate it")
    assert tuple(table.columns) == CLAIM_COLUMNS and (table["scale"] == scale).all()
    assert sorted(table["id"]) == sorted(BY_ID)
    tested = table[~table["verdict"].str.startswith(run.NOT_RESULTS)]
    assert tested["verdict"].isin(VERDICTS).all()
    assert (tested["n_seeds"] >= 3).all(), tested.loc[tested["n_seeds"] < 3, ["id", "n_seeds"]]
    assert (COMMITTED[scale] / "README.md").read_text().startswith(f"# Which claims hold at {scale} scale")


def test_a_merged_table_keeps_the_current_columns_in_their_order(tmp_path: Path) -> None:
    # A claims.csv written by an older version (another column order, a column since dropped) was merged with the
    # new rows in the old order: the committed report then failed its format check.
    path = tmp_path / "claims.csv"
    pd.DataFrame({"verdict": ["inconclusive"], "id": ["H1"], "gone": [1]}).to_csv(path, index=False)
    new = pd.DataFrame({"id": ["H2"], "verdict": ["reproduced"], "scale": ["paper"]})
    table = merged(path, new, order=["H1", "H2"])
    assert list(table.columns) == ["id", "verdict", "scale"] and list(table["id"]) == ["H1", "H2"]
    assert table.loc[0, "verdict"] == "inconclusive"
