"""Console texts of a run: ε in the end-of-run line."""

from __future__ import annotations

import math


def epsilon_text(metrics: dict) -> str:
    """ε as a number; ``— (no DP)`` for vanilla; ``∞ (σ = 0)`` for clipping without noise; else ``— (<why>)``.

    The cases follow ``scenario.privacy_report``'s ``epsilon_note``, which says why a run has no ε.
    """
    eps = metrics.get("epsilon")
    if isinstance(eps, int | float) and not isinstance(eps, bool):
        return "∞ (σ = 0)" if math.isinf(eps) else f"{eps:.3g}"
    note = metrics.get("epsilon_note") or ""
    if note.startswith("no DP"):
        return "— (no DP)"
    if note.startswith("dp.noise=0"):
        return "∞ (σ = 0)"
    if note.startswith("dp=adaptive"):
        return "— (adaptive noise: no guarantee)"
    private = metrics.get("epsilon_private_phases")
    if isinstance(private, float):
        return f"— (private phases only: {private:.3g})"
    return "— (see epsilon_note)" if note else "—"
