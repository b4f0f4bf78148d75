"""Decision boundaries of a vanilla and a DP model on 2-D data (Hong et al.'s two-moons illustration)."""

from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from gsdefense.plots._common import VANILLA, ok_runs, require, styled, title

MODEL_FILE = "model.pt"


def _candidates(runs: pd.DataFrame, *, figure: str) -> list[pd.DataFrame]:
    """Ok moons runs that saved a model: [vanilla runs, DP runs] (each possibly empty)."""
    df = ok_runs(runs, figure=figure)
    require(df, ["dataset.name", "run_dir"], figure=figure)
    df = df[df["dataset.name"] == "moons"]
    if df.empty:
        raise ValueError(f"{figure}: no ok runs with dataset.name == moons")
    df = df[[(Path(d) / MODEL_FILE).exists() for d in df["run_dir"]]]
    if df.empty:
        raise ValueError(f"{figure}: no moons run saved {MODEL_FILE}")
    return [part for part in (df[df["defense"] == VANILLA], df[df["defense"] != VANILLA]) if not part.empty]


def _load(run_dir: Path):
    """Rebuild a run's model, data and (poisoned, sanitised) training set exactly as ``gsdefense.run`` made them."""
    import torch
    from omegaconf import OmegaConf

    from gsdefense.plan import prepare
    from gsdefense.run import poison

    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    cfg.device = "cpu"  # the figure is drawn wherever the report runs
    plan = prepare(cfg)
    if plan.data.input_shape != (2,):
        raise ValueError(f"inputs of shape {plan.data.input_shape}, not 2-D")
    model = plan.build_model()
    model.load_state_dict(torch.load(run_dir / MODEL_FILE, weights_only=True, map_location="cpu"))
    model.eval()
    return model, plan.data, poison(plan)


def _first_loadable(part: pd.DataFrame, *, figure: str):
    """(run, model, data, poisoned) of the first run in ``part`` whose model loads; a RuntimeWarning for each that
    does not (the report lists them), None when none does."""
    for run in part.to_dict("records"):
        try:
            return run, *_load(Path(run["run_dir"]))
        except Exception as err:  # noqa: BLE001 - a corrupt model.pt or config is reported, and the next run tried
            reason = " ".join(f"{type(err).__name__}: {err}".split())
            warnings.warn(f"{figure}: {run['run_dir']}: {MODEL_FILE} does not load ({reason})", RuntimeWarning,
                          stacklevel=2)  # fmt: skip
    return None


def _probabilities(model, grid: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        logits = model(torch.as_tensor(grid, dtype=torch.float32))
        return torch.softmax(logits, dim=1).numpy()


@styled
def decision_boundaries(runs: pd.DataFrame, *, resolution: int = 200) -> Figure:
    """P(class 1) shading, the 0.5 boundary and the poisoned training set for a vanilla and a DP moons model."""
    name = "decision_boundaries"
    chosen = [c for c in (_first_loadable(p, figure=name) for p in _candidates(runs, figure=name)) if c]
    if not chosen:
        raise ValueError(f"{name}: no moons run's {MODEL_FILE} loads (see the warnings)")
    fig, axes = plt.subplots(
        1, len(chosen), figsize=(4.4 * len(chosen) + 0.8, 4.0), squeeze=False, layout="constrained"
    )
    shading = None
    for ax, (run, model, data, poisoned) in zip(axes[0], chosen, strict=True):
        if data.num_classes != 2:
            raise ValueError(f"{name}: confidence shading needs 2 classes, {run['run_dir']} has {data.num_classes}")
        lo, hi = data.box
        pad = 0.05 * (hi - lo)
        axis = np.linspace(lo - pad, hi + pad, resolution)
        xx, yy = np.meshgrid(axis, axis)
        prob = _probabilities(model, np.column_stack([xx.ravel(), yy.ravel()]))[:, 1].reshape(xx.shape)
        shading = ax.contourf(xx, yy, prob, levels=np.linspace(0, 1, 11), cmap="RdBu_r", alpha=0.75, vmin=0, vmax=1)
        ax.contour(xx, yy, prob, levels=[0.5], colors="black", linewidths=1.5)
        x, y, bad = poisoned.x.numpy(), poisoned.y.numpy(), poisoned.is_poison.numpy()
        colors = np.where(y == 1, "tab:red", "tab:blue")
        ax.scatter(x[~bad, 0], x[~bad, 1], c=colors[~bad], s=6, alpha=0.6, linewidths=0)
        ax.scatter(x[bad, 0], x[bad, 1], c=colors[bad], s=28, marker="x", linewidths=1.2, label="poisoned")
        ax.set(xlim=(lo - pad, hi + pad), ylim=(lo - pad, hi + pad), xticks=[], yticks=[], aspect="equal")
        ax.set_title(f"{run['defense']}\nclean acc {run.get('clean_acc', float('nan')):.2f}", fontsize=10)
        if bad.any():
            ax.legend(loc="lower left", fontsize=8, framealpha=0.8)
    fig.colorbar(shading, ax=list(axes[0]), label="P(class 1)", shrink=0.8)
    title(fig, "Decision boundaries on two moons")
    return fig
