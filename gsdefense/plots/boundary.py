"""Decision boundaries of a vanilla and a DP model on 2-D data (Hong et al.'s two-moons illustration)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from gsdefense.plots._common import VANILLA, ok_runs, require, styled, title

MODEL_FILE = "model.pt"


def _pick(runs: pd.DataFrame, *, figure: str) -> list[pd.Series]:
    """The first vanilla and the first DP moons run that saved a model."""
    df = ok_runs(runs, figure=figure)
    require(df, ["dataset.name", "run_dir"], figure=figure)
    df = df[df["dataset.name"] == "moons"]
    if df.empty:
        raise ValueError(f"{figure}: no ok runs with dataset.name == moons")
    df = df[[(Path(d) / MODEL_FILE).exists() for d in df["run_dir"]]]
    if df.empty:
        raise ValueError(f"{figure}: no moons run saved {MODEL_FILE}")
    vanilla = df[df["defense"] == VANILLA]
    dp = df[df["defense"] != VANILLA]
    return [part.iloc[0] for part in (vanilla, dp) if not part.empty]


def _load(run_dir: Path):
    """Rebuild a run's model, data and poisoned training set exactly as ``gsdefense.run`` made them."""
    import torch
    from omegaconf import OmegaConf

    from gsdefense.attacks import build_attack
    from gsdefense.data import load_dataset
    from gsdefense.models import build_model

    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    data = load_dataset(cfg.dataset, seed=cfg.seed)
    if data.input_shape != (2,):
        raise ValueError(f"decision_boundaries: {run_dir} has inputs of shape {data.input_shape}, not 2-D")
    torch.manual_seed(cfg.seed)
    model = build_model(
        cfg.model, input_shape=data.input_shape, num_classes=data.num_classes, mean=data.mean, std=data.std
    )
    model.load_state_dict(torch.load(run_dir / MODEL_FILE, weights_only=True, map_location="cpu"))
    model.eval()
    # Same generator seed as run(): reproduces which points were poisoned.
    poisoned = build_attack(cfg.attack).poison(data, generator=torch.Generator().manual_seed(cfg.seed))
    return model, data, poisoned


def _probabilities(model, grid: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        logits = model(torch.as_tensor(grid, dtype=torch.float32))
        return torch.softmax(logits, dim=1).numpy()


@styled
def decision_boundaries(runs: pd.DataFrame, *, resolution: int = 200) -> Figure:
    """P(class 1) shading, the 0.5 boundary and the poisoned training set for a vanilla and a DP moons model."""
    name = "decision_boundaries"
    chosen = _pick(runs, figure=name)
    fig, axes = plt.subplots(
        1, len(chosen), figsize=(4.4 * len(chosen) + 0.8, 4.0), squeeze=False, layout="constrained"
    )
    shading = None
    for ax, run in zip(axes[0], chosen, strict=True):
        model, data, poisoned = _load(Path(run["run_dir"]))
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
