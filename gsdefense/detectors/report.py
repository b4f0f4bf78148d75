"""Neural Cleanse's files in a run's directory, all written atomically.

- ``neural_cleanse.csv``: one row per label: label, mask_l1, anomaly_index, flagged, success_rate, lambda,
  steps, epochs, met_threshold.
- ``neural_cleanse_triggers.pt``: every label's reversed mask and pattern (tensors), with labels, L1 and index.
- ``nc_label_<k>.png``: for flagged labels and the attack's target: the mask, the pattern, mask ⊙ pattern and,
  when the attack's trigger is known, that trigger applied to a mid-grey input and its difference from grey.
  Pixels are drawn as nearest-neighbour blocks; 1-D (tabular) inputs are drawn as one row of features.
- ``neural_cleanse_prune.csv`` (mitigation=prune): the pruning curve.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from gsdefense.detectors.reverse import ReverseResult
from gsdefense.io import atomic_write, write_csv


def label_rows(rev: ReverseResult, index: np.ndarray, flagged: Sequence[int]) -> list[dict]:
    return [
        {
            "label": int(label),
            "mask_l1": float(rev.l1[i]),
            "anomaly_index": float(index[i]),
            "flagged": int(label) in flagged,
            "success_rate": float(rev.success[i]),
            "lambda": float(rev.cost[i]),
            "steps": int(rev.steps[i]),
            "epochs": int(rev.epochs[i]),
            "met_threshold": bool(rev.met[i]),
        }
        for i, label in enumerate(rev.labels.tolist())
    ]


def write_tables(output_dir: Path, rows: list[dict], rev: ReverseResult, index: np.ndarray) -> None:
    write_csv(output_dir / "neural_cleanse.csv", rows)
    triggers = {
        "labels": rev.labels.cpu(),
        "mask": rev.mask.detach().cpu(),
        "pattern": rev.pattern.detach().cpu(),
        "mask_l1": rev.l1.detach().cpu(),
        "anomaly_index": torch.as_tensor(index),
    }
    atomic_write(output_dir / "neural_cleanse_triggers.pt", lambda fh: torch.save(triggers, fh), mode="wb")


def _image(t: torch.Tensor) -> np.ndarray:
    """(H, W) or (H, W, 3) for imshow; a 1-D feature vector becomes one row."""
    a = t.detach().cpu().double().numpy()
    if a.ndim == 1:
        return a[None, :]
    return a[0] if a.shape[0] == 1 else np.moveaxis(a, 0, -1)


Trigger = Callable[[torch.Tensor], torch.Tensor]


def _panels(rev: ReverseResult, i: int, box: tuple[float, float], true_trigger: Trigger | None) -> list[tuple]:
    lo, hi = box
    mask, pattern = rev.mask[i], rev.pattern[i]
    unit = dict(vmin=0.0, vmax=1.0, cmap="gray")
    panels = [
        ("mask m", _image(mask), unit),
        ("pattern p", _image((pattern - lo) / (hi - lo)), unit),
        ("m ⊙ p", _image(mask * (pattern - lo) / (hi - lo)), unit),
    ]
    if true_trigger is not None:
        grey = torch.full_like(pattern, (lo + hi) / 2)
        with torch.no_grad():
            stamped = true_trigger(grey[None])[0]
        # Largest change over the channels: where the attack's trigger acts.
        diff = (stamped - grey).abs() / (hi - lo)
        diff = diff.amax(0, keepdim=True) if diff.dim() == 3 else diff
        panels += [
            ("true trigger on grey", _image((stamped - lo) / (hi - lo)), unit),
            ("|true − grey|", _image(diff), dict(vmin=0.0, vmax=float(diff.max()) or 1.0, cmap="magma")),
        ]
    return panels


def write_trigger_pngs(output_dir: Path, rev: ReverseResult, index: np.ndarray, *, labels: Sequence[int],
                       flagged: Sequence[int], target: int | None, box: tuple[float, float],
                       true_trigger: Trigger | None) -> list[str]:  # fmt: skip
    """One PNG per label in ``labels``; returns the file names written."""
    from matplotlib.figure import Figure

    position = {int(label): i for i, label in enumerate(rev.labels.tolist())}
    written = []
    for label in labels:
        i = position[int(label)]
        panels = _panels(rev, i, box, true_trigger if label == target else None)
        tabular = rev.mask.dim() == 2
        fig = Figure(figsize=(2.4 * len(panels), 1.4 if tabular else 2.8))
        axes = fig.subplots(1, len(panels), squeeze=False)[0]
        for ax, (name, img, style) in zip(axes, panels, strict=True):
            ax.imshow(img, interpolation="nearest", aspect="auto" if tabular else "equal", **style)
            ax.set_title(name, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        tags = [t for t, on in (("flagged", label in flagged), ("attack target", label == target)) if on]
        fig.suptitle(f"label {label}: ‖m‖₁ = {float(rev.l1[i]):.3g}, anomaly index = {index[i]:.2f}"
                     + (f" ({', '.join(tags)})" if tags else ""), fontsize=10)  # fmt: skip
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        name = f"nc_label_{label}.png"
        atomic_write(output_dir / name, lambda fh, data=buf.getvalue(): fh.write(data), mode="wb")
        written.append(name)
    return written
