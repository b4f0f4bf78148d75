"""Sweep analysis on a real CLI sweep: loading, summarising, every figure, the report CLI and the notebook."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import nbformat  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from nbclient import NotebookClient  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from gsdefense import plots  # noqa: E402
from gsdefense.analysis import add_defense, defense_label, load_history, load_runs, summarise  # noqa: E402
from gsdefense.data import load_dataset  # noqa: E402
from gsdefense.models import build_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
METRIC_KEYS = {"clean_acc", "asr", "rad", "rad_dp_matched", "epsilon", "n_poison", "poison_ratio", "seconds"}


def _launch(*args: str, cache: Path) -> subprocess.CompletedProcess:
    # One thread: tiny models gain nothing from more, and spinning OpenMP threads on a shared 2-core box
    # made the sweep ~4x slower when other tests ran alongside.
    env = {**os.environ, "GSDEFENSE_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    cmd = [sys.executable, "launch.py", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real CLI sweep: 2 clip norms × 2 poison ratios, of which ratio 1.5 is invalid."""
    tmp = tmp_path_factory.mktemp("analysis")
    args = ["dp.clip=0.5,1", "attack.poison_ratio=0.1,1.5", "optimizer.epochs=2"]
    proc = _launch("-m", f"hydra.sweep.dir={tmp / 'sweep'}", *args, cache=tmp / "cache")
    assert proc.returncode == 1, proc.stderr[-3000:]  # failed jobs make the sweep exit 1
    assert "2 failed, 2 ok" in proc.stderr, proc.stderr[-3000:]
    return tmp / "sweep"


@pytest.fixture(scope="module")
def moons(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Vanilla and DP runs on two moons, each with a model.pt (saved here if the run did not save one)."""
    tmp = tmp_path_factory.mktemp("moons")
    args = ["dataset=moons", "model=mlp", "attack=label_flip", "optimizer.epochs=2", "optimizer.batch_size=256"]
    proc = _launch("-m", f"hydra.sweep.dir={tmp / 'sweep'}", *args, "dp=none,dpsgd", cache=tmp / "cache")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for run_dir in (tmp / "sweep").glob("[0-9]*"):
        if not (run_dir / "model.pt").exists():
            cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
            data = load_dataset(cfg.dataset, seed=cfg.seed)
            model = build_model(
                cfg.model, input_shape=data.input_shape, num_classes=data.num_classes, mean=data.mean, std=data.std
            )
            torch.save(model.state_dict(), run_dir / "model.pt")
    return tmp / "sweep"


@pytest.fixture(scope="module")
def runs(sweep: Path) -> pd.DataFrame:
    return load_runs(sweep)


def synthetic_runs(seeds: int = 2) -> pd.DataFrame:
    """A full design grid the quick CLI sweep cannot afford: attacks × ratios × clip × noise (σ = 0 included)."""
    rng = np.random.default_rng(0)
    rows = []
    for attack in ("badnets", "blend"):
        for ratio in (0.05, 0.1, 0.2):
            for seed in range(seeds):
                base = {"attack.name": attack, "attack.poison_ratio": ratio, "seed": seed, "status": "ok"}
                rows.append({**base, "dp.name": "none", "clean_acc": 0.95, "asr": 0.99, "rad": ratio, "epsilon": None})
                for clip in (0.1, 1.0, 4.0):
                    for noise in (0.0, 0.4, 4.0):
                        eps = np.inf if noise == 0 else 8 / noise
                        rad = ratio * clip / 4 + rng.normal(0, 0.01)
                        acc = 0.9 - 0.05 * noise + rng.normal(0, 0.01)
                        dp = {"dp.name": "dpsgd", "dp.clip": clip, "dp.noise": noise}
                        rows.append({**base, **dp, "clean_acc": acc, "asr": 0.5 + rad, "rad": rad, "epsilon": eps})
    return add_defense(pd.DataFrame(rows))


def synthetic_history(epochs: int = 5) -> pd.DataFrame:
    """Per-epoch gradient telemetry as the lead's history.csv columns will hold it."""
    rows = []
    for defense in ({"dp.name": "none"}, {"dp.name": "dpsgd", "dp.clip": 1.0, "dp.noise": 1.0}):
        for seed in range(2):
            for epoch in range(1, epochs + 1):
                dp = defense["dp.name"] == "dpsgd"
                ratio = 5.0 / epoch + seed
                rows.append(
                    {
                        **defense,
                        "attack.name": "badnets",
                        "seed": seed,
                        "run_dir": f"{defense['dp.name']}/{seed}",
                        "status": "ok",
                        "epoch": epoch,
                        "train_loss": 1 / epoch,
                        "clean_acc": 0.5 + 0.08 * epoch,
                        "asr": 0.2 * epoch,
                        "grad_norm_clean": 1.0,
                        "grad_norm_poison": ratio,
                        "grad_ratio": ratio,
                        "grad_cosine": -0.5 + 0.1 * epoch,
                        "shaped_grad_ratio": 1.0 if dp else None,
                        "shaped_grad_cosine": (-0.4 + 0.1 * epoch) if dp else None,
                    }
                )
    return add_defense(pd.DataFrame(rows))


def _assert_drawn(fig: plt.Figure) -> None:
    """The figure has plotted data and renders to a PNG of real size."""
    artists = sum(len(ax.lines) + len(ax.collections) + len(ax.images) for ax in fig.axes)
    assert artists > 0
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    assert buf.tell() > 10_000
    plt.close(fig)


def test_load_runs_reads_config_metrics_and_status(runs: pd.DataFrame, sweep: Path) -> None:
    assert len(runs) == 4
    assert sorted(runs["dp.clip"]) == [0.5, 0.5, 1.0, 1.0]
    assert sorted(runs["attack.poison_ratio"]) == [0.1, 0.1, 1.5, 1.5]
    assert (runs["optimizer.epochs"] == 2).all() and (runs["dataset.name"] == "digits").all()
    assert not [c for c in runs.columns if c.startswith("hydra")]
    assert set(runs.columns) >= METRIC_KEYS
    assert runs["status"].value_counts().to_dict() == {"ok": 2, "failed": 2}
    failed = runs[runs["status"] == "failed"]
    assert (failed["attack.poison_ratio"] == 1.5).all() and failed["clean_acc"].isna().all()
    assert failed["error"].str.contains("poison_ratio").all()
    ok = runs[runs["status"] == "ok"]
    assert ok["clean_acc"].between(0, 1).all() and ok["epsilon"].gt(0).all()
    assert set(ok["defense"]) == {"DP clip=0.5 noise=1", "DP clip=1 noise=1"}
    assert {Path(d).parent for d in runs["run_dir"]} == {sweep.resolve()}
    assert (runs["config.device"] == "auto").all()  # the requested device; `device` is the one used


def test_missing_unreadable_and_extra_keys(sweep: Path, tmp_path: Path) -> None:
    extra = tmp_path / "extra"
    for name, edit in {"no_metrics": "delete", "truncated": '{"status": "ok", "clean', "new_key": "add"}.items():
        dst = shutil.copytree(sweep / "0", extra / name)
        metrics = dst / "metrics.json"
        if edit == "delete":
            metrics.unlink()
        elif edit == "add":
            metrics.write_text(json.dumps(json.loads(metrics.read_text()) | {"n_removed": 3}))
        else:
            metrics.write_text(edit)
    df = load_runs([sweep, extra])
    assert len(df) == 7
    by_name = df.set_index(df["run_dir"].map(lambda d: Path(d).name))
    assert by_name.loc["no_metrics", "status"] == by_name.loc["truncated", "status"] == "missing"
    assert "unreadable" in by_name.loc["truncated", "error"]
    assert by_name.loc["new_key", "n_removed"] == 3 and np.isnan(by_name.loc["no_metrics", "n_removed"])
    single = load_runs(extra / "new_key")
    assert len(single) == 1 and single["status"].item() == "ok"


def test_config_comes_from_yaml_not_folder_names(sweep: Path, tmp_path: Path) -> None:
    dst = shutil.copytree(sweep / "0", tmp_path / "dp.clip=99,seed=5")
    cfg_path = dst / ".hydra" / "config.yaml"
    cfg = OmegaConf.load(cfg_path)
    cfg.dataset.classes = [3, 4]
    OmegaConf.save(cfg, cfg_path)
    row = load_runs(dst).iloc[0]
    assert row["dp.clip"] == 0.5 and row["seed"] == 0
    assert row["dataset.classes"] == (3, 4)  # hashable: usable as a groupby key
    assert hash(row["dataset.classes"])


def test_mixed_sweeps_concatenate(sweep: Path, moons: Path) -> None:
    df = load_runs([sweep, moons])
    assert len(df) == 6
    is_moons = df["dataset.name"] == "moons"
    assert is_moons.sum() == 2
    assert df.loc[is_moons, "dataset.n_train"].eq(700).all() and df.loc[~is_moons, "dataset.n_train"].isna().all()
    assert df.loc[is_moons, "attack.patch_size"].isna().all() and df.loc[~is_moons, "attack.patch_size"].eq(3).all()
    vanilla = df[df["dp.name"] == "none"]
    assert len(vanilla) == 1 and vanilla["defense"].item() == "vanilla" and np.isnan(vanilla["dp.clip"].item())


def test_load_history(sweep: Path) -> None:
    hist = load_history(sweep)
    assert len(hist) == 4  # 2 ok runs × 2 epochs; failed runs have no history
    assert {"epoch", "train_loss", "clean_acc", "asr", "dp.clip", "run_dir", "defense"} <= set(hist.columns)
    assert hist.groupby("run_dir")["epoch"].apply(sorted).tolist() == [[1, 2], [1, 2]]
    assert sorted(hist["dp.clip"].unique()) == [0.5, 1.0]


def test_summarise_over_seeds() -> None:
    df = pd.DataFrame(
        {
            "dp.clip": [1.0, 1.0, 4.0, 4.0, np.nan, np.nan],
            "seed": [0, 1, 0, 1, 0, 1],
            "clean_acc": [0.8, 0.9, 0.6, 0.7, 0.95, None],
            "asr": [0.1, 0.3, 0.5, 0.5, 1.0, 1.0],
        }
    )
    long = summarise(df, by=["dp.clip"])
    assert set(long["metric"]) == {"clean_acc", "asr"}  # seed is a setting, not a metric
    cell = long[(long["dp.clip"] == 1.0) & (long["metric"] == "clean_acc")].iloc[0]
    assert cell["mean"] == pytest.approx(0.85) and cell["std"] == pytest.approx(np.std([0.8, 0.9], ddof=1))
    assert cell["count"] == 2
    vanilla = long[long["dp.clip"].isna() & (long["metric"] == "clean_acc")].iloc[0]
    assert vanilla["count"] == 1 and vanilla["mean"] == pytest.approx(0.95)
    wide = summarise(df, by=["dp.clip"], metrics=["asr"], wide=True)
    assert list(wide.columns) == ["dp.clip", "asr_mean", "asr_std", "asr_count"] and len(wide) == 3
    with pytest.raises(KeyError, match="nope"):
        summarise(df, by=["nope"])


def test_defense_label() -> None:
    assert defense_label({"dp.name": "none"}) == "vanilla"
    assert defense_label({"dp.name": "dpsgd", "dp.clip": 0.5, "dp.noise": 4.0}) == "DP clip=0.5 noise=4"


@pytest.mark.parametrize("name", ["rad_vs_poison_ratio", "asr_rad_vs_dp", "utility_heatmap", "privacy_tradeoff"])
def test_grid_figures_on_design_grid(name: str) -> None:
    _assert_drawn(getattr(plots, name)(synthetic_runs()))


def test_noise_axis_places_zero_and_clip_is_log() -> None:
    fig = plots.asr_rad_vs_dp(synthetic_runs())
    scales = {ax.get_xlabel(): ax.get_xscale() for ax in fig.axes}
    assert scales == {"clip norm C": "log", "noise multiplier σ": "symlog"}
    plt.close(fig)


def test_figures_on_the_cli_sweep(runs: pd.DataFrame, sweep: Path) -> None:
    for make in (plots.asr_rad_vs_dp, plots.utility_heatmap, plots.privacy_tradeoff):
        _assert_drawn(make(runs))
    _assert_drawn(plots.training_curves(load_history(sweep)))
    _assert_drawn(plots.gradient_telemetry(load_history(sweep)))  # telemetry is on by default
    # One valid poison ratio, no moons: each says why, in one line.
    cases = [
        (plots.rad_vs_poison_ratio, runs, "poison_ratio"),
        (plots.decision_boundaries, runs, "moons"),
    ]
    for make, frame, reason in cases:
        with pytest.raises(ValueError, match=reason) as err:
            make(frame)
        assert "\n" not in str(err.value)


def test_telemetry_and_training_curves() -> None:
    hist = synthetic_history()
    _assert_drawn(plots.gradient_telemetry(hist))
    _assert_drawn(plots.training_curves(hist))


def test_decision_boundaries(moons: Path) -> None:
    fig = plots.decision_boundaries(load_runs(moons))
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert [t.split("\n")[0] for t in titles] == ["vanilla", "DP clip=1 noise=1"]
    _assert_drawn(fig)


def test_report_cli(sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    proc = subprocess.run(
        [sys.executable, "-m", "gsdefense.report", str(sweep), "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert len(pd.read_csv(out / "runs.csv")) == 4
    assert {p.name for p in out.glob("*.png")} == {
        "asr_rad_vs_dp.png",
        "utility_heatmap.png",
        "training_curves.png",
        "privacy_tradeoff.png",
        "gradient_telemetry.png",
    }
    summary = (out / "summary.md").read_text()
    assert "| ok | 2 |" in summary and "| failed | 2 |" in summary
    assert "rad_vs_poison_ratio: needs" in summary and "skipped rad_vs_poison_ratio" in proc.stdout
    for bad in (tmp_path / "nope", tmp_path):
        proc = subprocess.run([sys.executable, "-m", "gsdefense.report", str(bad)], capture_output=True, text=True)
        assert proc.returncode != 0 and "error:" in proc.stderr


def test_notebook_runs_headless(sweep: Path) -> None:
    nb = nbformat.read(ROOT / "notebooks" / "aggregate.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)  # stored clean
    params = code[0]
    assert "parameters" in params.metadata.get("tags", []) and "sweep_dir" in params.source
    params.source = f"sweep_dir = {str(sweep)!r}"
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    outputs = [o for c in nb.cells for o in c.get("outputs", [])]
    assert any("4 runs" in o.get("text", "") for o in outputs)
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 5  # 4 sweep figures + gradient telemetry
