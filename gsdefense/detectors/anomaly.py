"""Neural Cleanse's outlier test on the reversed triggers' mask norms (Wang et al. 2019, §IV-C).

    med = median_i L1_i,   MAD = 1.4826 · median_i |L1_i − med|,   index_i = (med − L1_i) / MAD

1.4826 makes the MAD a consistent estimator of a normal distribution's standard deviation. The index is
signed: positive for labels below the median (a small trigger, the backdoor signature), zero at the median,
negative above it. A label is flagged when ``index_i > threshold`` (the paper: 2), so only labels below the
median can be flagged, as in the original ``mad_outlier_detection.py``.

MAD = 0 (more than half the labels share one norm) would make every other index ±∞; the scale then falls
back to 1.4826 · mean_i |L1_i − med| (> 0 unless all norms are equal, when every index is 0). With two labels
the test is degenerate (the smaller norm always has index 1/1.4826 ≈ 0.67), so the detector needs ≥ 3 labels.
"""

from __future__ import annotations

import numpy as np

CONSISTENCY = 1.4826


def anomaly_index(l1: np.ndarray) -> np.ndarray:
    """Signed anomaly index of each label's mask norm (see the module docstring)."""
    l1 = np.asarray(l1, dtype=np.float64)
    med = np.median(l1)
    dev = np.abs(l1 - med)
    scale = CONSISTENCY * np.median(dev)
    if scale == 0:
        scale = CONSISTENCY * dev.mean()
    if scale == 0:
        return np.zeros_like(l1)
    return (med - l1) / scale


def flagged(index: np.ndarray, *, threshold: float) -> np.ndarray:
    """Positions whose anomaly index exceeds ``threshold``, most anomalous first."""
    index = np.asarray(index)
    hits = np.flatnonzero(index > threshold)
    return hits[np.argsort(-index[hits], kind="stable")]
