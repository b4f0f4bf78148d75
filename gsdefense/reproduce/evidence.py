"""Per-run values a claim tests that metrics.json does not hold, computed from each run's own files.

Rows are matched by ``run_dir`` (the key ``load_runs`` and ``load_history`` both carry), never by position.

- ``telemetry`` (Hong §3, from history.csv): over the epochs that have gradient telemetry, with
  ``r_t`` = ``shaped_grad_ratio`` and ``c_t`` = ``shaped_grad_cosine`` (the poison/clean last-layer gradient ratio
  and cosine as the optimizer applies them: clipped and noised in DP runs, raw in vanilla runs, as Hong measured)
  ``log_ratio = mean_t log r_t``, ``grad_ratio_gmean = exp(log_ratio)``, ``neg_cosine = −mean_t c_t``, and, with
  ``k = max(1, T/4)``, ``ratio_fall = mean_{first k} |log r_t| − mean_{last k} |log r_t|`` and ``cos_fall``
  likewise for ``|c_t|`` (positive: the marks fade late in training).
- ``losses`` (Steinhardt et al.): the run's model is rebuilt from model.pt exactly as ``gsdefense.run`` made
  it, and ``test_loss`` = mean cross-entropy on the test set, ``clean_loss`` = on the whole clean training set
  (points the defense removed included); ``bound_margin = certified_upper_bound − test_loss``. metrics.json's
  own ``test_loss`` is the same number, but runs written before it existed lack it, and ``clean_loss`` is not
  recorded, so both are computed here.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from gsdefense.analysis import load_history

TELEMETRY = ("log_ratio", "grad_ratio_gmean", "neg_cosine", "ratio_fall", "cos_fall")


def _telemetry_row(epochs: pd.DataFrame) -> dict[str, float]:
    epochs = epochs.sort_values("epoch")
    log_r = np.log(epochs["shaped_grad_ratio"].clip(lower=1e-12).to_numpy(dtype=float))
    cos = epochs["shaped_grad_cosine"].to_numpy(dtype=float)
    k = max(1, len(log_r) // 4)
    return {
        "log_ratio": float(log_r.mean()),
        "grad_ratio_gmean": float(math.exp(log_r.mean())),
        "neg_cosine": float(-cos.mean()),
        "ratio_fall": float(np.abs(log_r[:k]).mean() - np.abs(log_r[-k:]).mean()),
        "cos_fall": float(np.abs(cos[:k]).mean() - np.abs(cos[-k:]).mean()),
    }


def telemetry(runs: pd.DataFrame, sweep_dir: Path) -> pd.DataFrame:
    """``runs`` with the TELEMETRY columns (NaN for a run without telemetry epochs)."""
    history = load_history(sweep_dir)
    needed = {"shaped_grad_ratio", "shaped_grad_cosine", "epoch", "run_dir"}
    values: dict[str, dict[str, float]] = {}
    if needed <= set(history.columns):
        rows = history.dropna(subset=["shaped_grad_ratio", "shaped_grad_cosine"])
        values = {str(run_dir): _telemetry_row(part) for run_dir, part in rows.groupby("run_dir")}
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
