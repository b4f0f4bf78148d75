"""Per-run values a claim tests that metrics.json does not hold, computed from each run's own files.

Rows are matched by ``run_dir`` (the key ``load_runs`` and ``load_history`` both carry), never by position.

- ``common`` (every part): ``n_test`` (the test set's size, from the run's dataset config: one test image is
  1 / n_test of accuracy), ``n_clean`` (= n_train − n_poison) and, for runs written before metrics.json had it,
  ``rad_early_stop`` = max(0, rad_best) (its definition).
- ``telemetry`` (Hong §3, from history.csv's per-sample columns, over the epochs that have them): with
  ``s_t`` = ``sample_norm_ratio`` (mean poison ‖g_i‖ ÷ mean clean ‖g_i‖), ``u_t`` the ratio the update used
  (``clipped_sample_norm_ratio`` under DP, else ``s_t``) and ``c_t`` = ``poison_sample_cosine`` (mean over poisons
  of cos(g_i, ḡ_C)): ``log_sample_ratio = mean_t log s_t``, ``sample_ratio_gmean = exp(log_sample_ratio)``,
  ``log_update_ratio = mean_t log u_t``, ``neg_poison_cosine = −mean_t c_t``, and with ``k = max(1, T/4)``,
  ``ratio_fall = mean_{first k} |log s_t| − mean_{last k} |log s_t|``, ``cos_fall`` likewise for ``|c_t|``
  (positive: the marks fade). ``mean_grad_ratio_gmean`` (the original's batch-mean ratio, geometric mean over
  epochs) is kept to show its artifact.
- ``losses`` (Steinhardt et al.): the run's model is rebuilt from model.pt exactly as ``gsdefense.run`` made
  it, and ``test_loss`` = mean cross-entropy on the test set, ``clean_loss`` = on the whole clean training set
  (points the defense removed included); ``bound_margin = certified_upper_bound − test_loss``.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from gsdefense.analysis import load_history

TELEMETRY = ("log_sample_ratio", "sample_ratio_gmean", "log_update_ratio", "neg_poison_cosine", "ratio_fall",
             "cos_fall", "mean_grad_ratio_gmean")  # fmt: skip
PER_SAMPLE = ("sample_norm_ratio", "poison_sample_cosine")


@functools.lru_cache(maxsize=16)
def _test_size(dataset_yaml: str, seed: int) -> float:
    from omegaconf import OmegaConf

    from gsdefense.data import load_dataset

    node = OmegaConf.create(dataset_yaml)
    if "download" in node:
        node.download = False  # a report never fetches data
    return float(len(load_dataset(node, seed=seed).y_test))


def test_size(run_dir: str | Path) -> float:
    """The test set's size of a run's dataset (NaN, with a warning, where it cannot be loaded)."""
    from omegaconf import OmegaConf

    from gsdefense.records import load_config

    try:
        cfg = load_config(run_dir)
        return _test_size(OmegaConf.to_yaml(cfg.dataset, resolve=True), int(cfg.get("seed", 0)))
    except Exception as err:  # noqa: BLE001 - a run whose data is gone still has its other numbers
        warnings.warn(f"{run_dir}: cannot size its test set ({type(err).__name__}: {err})", RuntimeWarning, 2)
        return math.nan


def common(runs: pd.DataFrame) -> pd.DataFrame:
    """``runs`` with ``n_test``, ``n_clean`` and (where missing) ``rad_early_stop``."""
    out = runs.copy()
    if "n_test" not in out and "run_dir" in out and len(out):
        out["n_test"] = test_size(out["run_dir"].iloc[0])
    if {"n_train", "n_poison"} <= set(out.columns):
        out["n_clean"] = pd.to_numeric(out["n_train"], errors="coerce") - pd.to_numeric(
            out["n_poison"], errors="coerce"
        )
    if "rad_early_stop" not in out and "rad_best" in out:
        out["rad_early_stop"] = pd.to_numeric(out["rad_best"], errors="coerce").clip(lower=0.0)
    return out


def _log(values: pd.Series) -> np.ndarray:
    return np.log(pd.to_numeric(values, errors="coerce").clip(lower=1e-12).to_numpy(dtype=float))


def _fall(x: np.ndarray) -> float:
    k = max(1, len(x) // 4)
    return float(np.abs(x[:k]).mean() - np.abs(x[-k:]).mean())


def telemetry_row(epochs: pd.DataFrame) -> dict[str, float]:
    """The TELEMETRY values of one run from its per-epoch rows (module docstring)."""
    epochs = epochs.sort_values("epoch")
    log_s = _log(epochs["sample_norm_ratio"])
    clipped = epochs.get("clipped_sample_norm_ratio")
    has_clipped = clipped is not None and pd.to_numeric(clipped, errors="coerce").notna().all()
    log_u = _log(clipped) if has_clipped else log_s
    cos = pd.to_numeric(epochs["poison_sample_cosine"], errors="coerce").to_numpy(dtype=float)
    batch = epochs.get("mean_grad_ratio")
    return {
        "log_sample_ratio": float(log_s.mean()),
        "sample_ratio_gmean": float(math.exp(log_s.mean())),
        "log_update_ratio": float(log_u.mean()),
        "neg_poison_cosine": float(-cos.mean()),
        "ratio_fall": _fall(log_s),
        "cos_fall": _fall(cos),
        "mean_grad_ratio_gmean": float(math.exp(np.nanmean(_log(batch)))) if batch is not None else math.nan,
    }


def telemetry(runs: pd.DataFrame, sweep_dir: Path) -> pd.DataFrame:
    """``runs`` with the TELEMETRY columns (NaN for a run without per-sample telemetry epochs)."""
    history = load_history(sweep_dir)
    values: dict[str, dict[str, float]] = {}
    if {*PER_SAMPLE, "epoch", "run_dir"} <= set(history.columns):
        rows = history.dropna(subset=list(PER_SAMPLE))
        values = {str(run_dir): telemetry_row(part) for run_dir, part in rows.groupby("run_dir")}
    elif not history.empty:
        warnings.warn(f"{sweep_dir}: history.csv has no per-sample telemetry ({', '.join(PER_SAMPLE)}): the runs "
                      "predate it; rerun them", RuntimeWarning, stacklevel=2)  # fmt: skip
    out = runs.copy()
    for column in TELEMETRY:
        out[column] = [values.get(str(d), {}).get(column, math.nan) for d in out["run_dir"]]
    return out


def _losses(run_dir: Path) -> tuple[float, float]:
    """(test_loss, clean_loss) of the model in ``run_dir``, rebuilt from its config and model.pt."""
    import torch
    from omegaconf import OmegaConf

    from gsdefense import metrics as M
    from gsdefense.plan import prepare

    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    cfg.device = "cpu"
    plan = prepare(cfg)
    model = plan.build_model()
    model.load_state_dict(torch.load(run_dir / "model.pt", weights_only=True, map_location="cpu"))
    model.eval()
    data = plan.data
    return M.mean_loss(model, data.x_test, data.y_test), M.mean_loss(model, data.x_train, data.y_train)


def model_losses(runs: pd.DataFrame, sweep_dir: Path) -> pd.DataFrame:  # noqa: ARG001 - one signature for all
    """``runs`` with ``test_loss``, ``clean_loss`` and ``bound_margin`` (NaN, with a warning, where model.pt does
    not load)."""
    test, clean = [], []
    for run_dir in runs["run_dir"]:
        try:
            a, b = _losses(Path(run_dir))
        except Exception as err:  # noqa: BLE001 - one unreadable run must not cost the claim's other runs
            warnings.warn(
                f"{run_dir}: cannot rebuild the model ({type(err).__name__}: {err})", RuntimeWarning, stacklevel=2
            )
            a, b = math.nan, math.nan
        test.append(a)
        clean.append(b)
    out = runs.copy()
    out["test_loss"], out["clean_loss"] = test, clean
    bound = pd.to_numeric(out.get("certified_upper_bound", pd.Series(math.nan, index=out.index)), errors="coerce")
    out["bound_margin"] = bound - out["test_loss"]
    return out


DERIVE: dict[str, Callable[[pd.DataFrame, Path], pd.DataFrame]] = {"telemetry": telemetry, "losses": model_losses}
