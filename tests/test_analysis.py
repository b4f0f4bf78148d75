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
from gsdefense.analysis import (  # noqa: E402
    add_defense,
    config_run_id,
    defense_label,
    load_history,
    load_runs,
    read_config,
    resolve_sweep,
    summarise,
)
from gsdefense.data import load_dataset  # noqa: E402
from gsdefense.models import build_model  # noqa: E402
from tests.test_figures import overlapping_texts  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
METRIC_KEYS = {
    "clean_acc", "asr", "rad", "rad_dp_matched", "epsilon", "n_poison", "poison_fraction_of_train", "seconds",
}  # fmt: skip


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
    assert by_name.loc["no_metrics", "status"] == "missing"
    assert by_name.loc["truncated", "status"] == "invalid" and "unreadable" in by_name.loc["truncated", "error"]
    assert by_name.loc["new_key", "n_removed"] == 3 and np.isnan(by_name.loc["no_metrics", "n_removed"])
    single = load_runs(extra / "new_key")
    assert len(single) == 1 and single["status"].item() == "ok"


def test_config_comes_from_yaml_not_folder_names(sweep: Path, tmp_path: Path) -> None:
    dst = shutil.copytree(sweep / "0", tmp_path / "dp.clip=99,seed=5")
    cfg_path = dst / ".hydra" / "config.yaml"
    cfg = OmegaConf.load(cfg_path)
    cfg.dataset.classes = [3, 4]
    OmegaConf.save(cfg, cfg_path)
    # The run of this config would have recorded this config's id.
    metrics = json.loads((dst / "metrics.json").read_text())
    (dst / "metrics.json").write_text(json.dumps(metrics | {"run_id": config_run_id(cfg)}))
    row = load_runs(dst).iloc[0]
    assert row["status"] == "ok"
    assert row["dp.clip"] == 0.5 and row["seed"] == 0
    assert row["dataset.classes"] == (3, 4)  # hashable: usable as a groupby key
    assert hash(row["dataset.classes"])


def test_metrics_of_another_config_are_stale_never_ok(sweep: Path, tmp_path: Path) -> None:
    dst = shutil.copytree(sweep / "0", tmp_path / "edited")
    cfg = OmegaConf.load(dst / ".hydra" / "config.yaml")
    cfg.optimizer.lr = 0.5  # the folder now holds another config than the one its metrics.json was computed for
    OmegaConf.save(cfg, dst / ".hydra" / "config.yaml")
    recorded = json.loads((dst / "metrics.json").read_text())["run_id"]
    df = load_runs([sweep, dst])
    row = df[df["run_dir"] == str(dst.resolve())].iloc[0]
    assert row["status"] == "stale" and row["optimizer.lr"] == 0.5
    assert recorded in row["error"] and config_run_id(cfg) in row["error"] and row["run_id"] == config_run_id(cfg)
    assert np.isnan(row["clean_acc"]) and np.isnan(row["epsilon"])  # the other config's numbers are dropped
    assert df["status"].value_counts().to_dict() == {"ok": 2, "failed": 2, "stale": 1}
    hist = load_history(dst)
    assert (hist["status"] == "stale").all()  # so no figure draws its epochs


def test_odd_run_folders_are_invalid_with_a_reason(sweep: Path, tmp_path: Path) -> None:
    odd = tmp_path / "odd"
    corrupt = shutil.copytree(sweep / "0", odd / "corrupt_config")
    (corrupt / ".hydra" / "config.yaml").write_text("dataset: [unclosed\n")
    typed = shutil.copytree(sweep / "0", odd / "string_metric")
    metrics = json.loads((typed / "metrics.json").read_text())
    (typed / "metrics.json").write_text(json.dumps(metrics | {"clean_acc": "0.9"}))
    unhashable = shutil.copytree(sweep / "0", odd / "bad_config")
    cfg = OmegaConf.load(unhashable / ".hydra" / "config.yaml")
    cfg.dp.clip = -1.0  # run_id validates the typed config: this one cannot be identified
    OmegaConf.save(cfg, unhashable / ".hydra" / "config.yaml")
    refused = shutil.copytree(sweep / "0", odd / "refused")  # a config error, recorded as such by its run
    cfg.dp.clip = -1.0
    OmegaConf.save(cfg, refused / ".hydra" / "config.yaml")
    failure = {"run_id": "0123456789abcdef0123", "status": "failed", "error": "ConfigError: dp.clip: must be > 0"}
    (refused / "metrics.json").write_text(json.dumps(failure))
    df = load_runs([sweep, odd]).set_index("run_dir")
    assert len(df) == 8
    row = lambda name: df.loc[str((odd / name).resolve())]  # noqa: E731
    assert row("corrupt_config")["status"] == "invalid" and "config.yaml" in row("corrupt_config")["error"]
    assert row("string_metric")["status"] == "invalid"
    assert "clean_acc is '0.9' (str), not a number" in row("string_metric")["error"]
    assert np.isnan(row("string_metric")["clean_acc"]) and pd.api.types.is_float_dtype(df["clean_acc"])
    assert row("bad_config")["status"] == "invalid" and "run_id" in row("bad_config")["error"]
    assert "dp.clip" in row("bad_config")["error"]
    assert row("refused")["status"] == "failed" and row("refused")["error"] == failure["error"]


def test_env_dependent_values_are_never_raw_interpolations(sweep: Path, tmp_path: Path) -> None:
    dst = shutil.copytree(sweep / "0", tmp_path / "env")
    cfg = OmegaConf.load(dst / ".hydra" / "config.yaml")
    cfg.dataset.data_dir = "${oc.env:GSDEFENSE_DATA_DIR,data}"
    cfg.dataset.path = "${oc.env:GSDEFENSE_PURCHASE100,data/purchase100.npz}"
    OmegaConf.save(cfg, dst / ".hydra" / "config.yaml")
    row = read_config(dst)
    assert "config.cache_dir" not in row and "dataset.data_dir" not in row  # locations, not settings: dropped
    assert row["dataset.path"] == "$GSDEFENSE_PURCHASE100 (not recorded)"
    hydra_cfg = OmegaConf.load(dst / ".hydra" / "hydra.yaml")
    hydra_cfg.hydra.job.env_set = {"GSDEFENSE_PURCHASE100": "/data/p100.npz", "GSDEFENSE_CACHE_DIR": "/c"}
    OmegaConf.save(hydra_cfg, dst / ".hydra" / "hydra.yaml")
    row = read_config(dst)  # what Hydra set for the job is what the run saw
    assert row["dataset.path"] == "/data/p100.npz" and row["config.cache_dir"] == "/c"
    assert not [v for v in row.values() if isinstance(v, str) and "${" in v]


def test_resolve_sweep_latest(tmp_path: Path) -> None:
    import os
    import time

    for i, name in enumerate(["2026-01-01/10-00-00", "2026-01-02/09-00-00", "fig/vanilla"]):
        (tmp_path / "multirun" / name).mkdir(parents=True)
        (tmp_path / "multirun" / name / "multirun.yaml").write_text("{}")
        os.utime(tmp_path / "multirun" / name / "multirun.yaml", (time.time() + i, time.time() + i))
    assert resolve_sweep("multirun/latest", root=tmp_path) == tmp_path / "multirun" / "fig" / "vanilla"
    (tmp_path / "multirun" / "latest").mkdir()  # a real folder (or link) of that name wins
    assert resolve_sweep("multirun/latest", root=tmp_path) == tmp_path / "multirun" / "latest"
    with pytest.raises(FileNotFoundError, match="no sweep"):
        resolve_sweep(tmp_path / "empty" / "latest")


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


def test_an_unreadable_history_is_skipped_with_a_warning(sweep: Path, tmp_path: Path, caplog) -> None:
    broken = shutil.copytree(sweep / "0", tmp_path / "broken")
    (broken / "history.csv").write_bytes(b"\xff\xfe\x00garbage")
    with caplog.at_level("WARNING", logger="gsdefense.analysis"):
        assert load_history(broken).empty
    assert "unreadable history.csv" in caplog.text and "broken" in caplog.text


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
    assert cell["count"] == 2 and cell["over"] == "seed"
    vanilla = long[long["dp.clip"].isna() & (long["metric"] == "clean_acc")].iloc[0]
    assert vanilla["count"] == 1 and vanilla["mean"] == pytest.approx(0.95)
    wide = summarise(df, by=["dp.clip"], metrics=["asr"], wide=True)
    assert list(wide.columns) == ["dp.clip", "asr_mean", "asr_std", "asr_count", "over"] and len(wide) == 3
    assert summarise(df, wide=True).equals(summarise(df, by=["dp.clip"], wide=True))  # default: what varies
    with pytest.raises(KeyError, match="nope"):
        summarise(df, by=["nope"])


def preset_sweep(seeds: int = 3) -> pd.DataFrame:
    """Hong Fig. 4a's grid as load_runs returns it: 10 poison ratios × 5 clip norms × 3 seeds."""
    rng = np.random.default_rng(0)
    rows = [
        {"attack.name": "label_flip", "attack.poison_ratio": r, "dp.name": "dpsgd", "dp.clip": c, "dp.noise": 0.0,
         "optimizer.lr": 0.01, "seed": s, "status": "ok", "rad": r * c / 8 + rng.normal(0, 0.02),
         "clean_acc": 0.9 - r / 4 + rng.normal(0, 0.01)}
        for r in (0, 0.01, 0.02, 0.03, 0.04, 0.05, 0.1, 0.2, 0.3, 0.4)
        for c in (8, 4, 2, 1, 0.1)
        for s in range(seeds)
    ]  # fmt: skip
    return add_defense(pd.DataFrame(rows))


def test_summarise_groups_by_every_swept_setting() -> None:
    runs = preset_sweep()
    wide = summarise(runs, metrics=["rad", "clean_acc"], wide=True)
    assert len(wide) == 50 and (wide["rad_count"] == 3).all() and (wide["over"] == "seed").all()
    assert [c for c in wide.columns if "." in c] == ["attack.poison_ratio", "dp.clip"]  # only what varies
    expected = runs.groupby(["attack.poison_ratio", "dp.clip"])["rad"].std(ddof=1).to_numpy()
    assert wide["rad_std"].to_numpy() == pytest.approx(expected)  # the sd is the spread across seeds
    one = runs[(runs["attack.poison_ratio"] == 0.3) & (runs["dp.clip"] == 2)]["rad"]
    cell = wide[(wide["attack.poison_ratio"] == 0.3) & (wide["dp.clip"] == 2)].iloc[0]
    assert cell["rad_mean"] == pytest.approx(one.mean()) and cell["rad_std"] == pytest.approx(one.std(ddof=1))
    # Grouping by less pools settings, and says so.
    pooled = summarise(runs, by=["dp.clip"], metrics=["rad"], wide=True)
    assert (pooled["rad_count"] == 30).all() and (pooled["over"] == "seed, attack.poison_ratio").all()


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
    assert not overlapping_texts(fig)
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


def _notebook_outputs(nb) -> list[dict]:
    return [o for c in nb.cells for o in c.get("outputs", [])]


def test_notebook_runs_headless(sweep: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nb = nbformat.read(ROOT / "notebooks" / "aggregate.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)  # stored clean
    params = code[0]
    assert "parameters" in params.metadata.get("tags", []) and "GSDEFENSE_SWEEP" in params.source
    # The sweep comes from the environment: the notebook runs as stored, without editing it.
    monkeypatch.setenv("GSDEFENSE_SWEEP", str(sweep))
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    outputs = _notebook_outputs(nb)
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any("4 runs" in o.get("text", "") for o in outputs)
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 5  # 4 sweep figures + gradient telemetry
    tables = [o["data"]["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {})]
    assert any("its one run (no sd)" in t for t in tables)  # one row per setting, n stated


@pytest.mark.slow
def test_notebook_headless_command_writes_outside_the_tree(sweep: Path, tmp_path: Path) -> None:
    """The README's command: papermill with the sweep as a parameter, the executed copy where the user says."""
    source = ROOT / "notebooks" / "aggregate.ipynb"
    stored = source.read_bytes()
    out = tmp_path / "report" / "aggregate.ipynb"
    out.parent.mkdir()
    cmd = [sys.executable, "-m", "papermill", "notebooks/aggregate.ipynb", str(out), "-p", "sweep_dir", str(sweep)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert source.read_bytes() == stored  # the tracked notebook stays without outputs
    outputs = _notebook_outputs(nbformat.read(out, as_version=4))
    assert any("4 runs" in o.get("text", "") for o in outputs)
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 5
