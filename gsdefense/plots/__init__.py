"""Seaborn figures of a sweep. Each function takes the runs (``load_runs``) or history (``load_history``) frame,
returns a matplotlib Figure, and raises a one-line ValueError when the data cannot support it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, NamedTuple

from matplotlib.figure import Figure

from gsdefense.plots.boundary import decision_boundaries
from gsdefense.plots.detection import nc_anomaly_vs_dp, nc_asr_before_after
from gsdefense.plots.privacy import privacy_tradeoff
from gsdefense.plots.sweeps import asr_rad_vs_dp, rad_vs_poison_ratio
from gsdefense.plots.training import gradient_telemetry, training_curves
from gsdefense.plots.utility import utility_heatmap


class FigureSpec(NamedTuple):
    name: str
    make: Callable[..., Figure]
    source: Literal["runs", "history"]  # which frame the function takes
    paper: str


FIGURES: tuple[FigureSpec, ...] = (
    FigureSpec("rad_vs_poison_ratio", rad_vs_poison_ratio, "runs", "Hong et al. Fig. 4"),
    FigureSpec("asr_rad_vs_dp", asr_rad_vs_dp, "runs", "Hong et al. Fig. 5"),
    FigureSpec("gradient_telemetry", gradient_telemetry, "history", "Hong et al. Figs. 1, 7"),
    FigureSpec("utility_heatmap", utility_heatmap, "runs", "Hong et al. Fig. 12"),
    FigureSpec("decision_boundaries", decision_boundaries, "runs", "Hong et al. two-moons illustration"),
    FigureSpec("training_curves", training_curves, "history", "limitations study Fig. 3"),
    FigureSpec("privacy_tradeoff", privacy_tradeoff, "runs", "privacy-robustness-utility trade-off"),
    FigureSpec("nc_anomaly_vs_dp", nc_anomaly_vs_dp, "runs", "Wang et al. 2019 (Neural Cleanse) under DP"),
    FigureSpec("nc_asr_before_after", nc_asr_before_after, "runs", "Neural Cleanse repair"),
)

__all__ = [
    "FIGURES",
    "FigureSpec",
    "asr_rad_vs_dp",
    "decision_boundaries",
    "nc_anomaly_vs_dp",
    "nc_asr_before_after",
    "gradient_telemetry",
    "privacy_tradeoff",
    "rad_vs_poison_ratio",
    "training_curves",
    "utility_heatmap",
]
