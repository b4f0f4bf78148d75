"""What a claim's runs show beside its checks, as text for its report section (``Claim.findings``).

- ``batch_mean_artifact`` (H1): the original's batch-mean gradient ratio against n_clean / n_poison, with the
  runs' own numbers. Near convergence the clean and poison gradient *sums* cancel (‖Σ_C g_i‖ ≈ ‖Σ_P g_i‖), so the
  ratio of their *means* is ≈ n_clean / n_poison whatever the gradients are: it counts poisons.
"""

from __future__ import annotations

import pandas as pd

from gsdefense.reproduce.arms import Frames
from gsdefense.reproduce.verdicts import Summary


def _summary(df: pd.DataFrame | None, column: str) -> Summary:
    if df is None or df.empty or column not in df:
        return Summary.of([])
    return Summary.of(pd.to_numeric(df[column], errors="coerce").dropna().tolist())


def batch_mean_artifact(frames: Frames) -> str | None:
    """The vanilla (and DP) runs' ``mean_grad_ratio`` beside n_clean / n_poison, and the per-sample ratio."""
    vanilla, dp = frames.get("vanilla"), frames.get("dp")
    batch = _summary(vanilla, "mean_grad_ratio_gmean")
    if batch.n == 0 or "n_clean" not in vanilla or "n_poison" not in vanilla:
        return None
    n_clean, n_poison = float(vanilla["n_clean"].median()), float(vanilla["n_poison"].median())
    under_dp = _summary(dp, "mean_grad_ratio_gmean")
    dp_text = f"; DP runs: {under_dp.text()}" if under_dp.n else ""
    per_sample = _summary(vanilla, "sample_ratio_gmean")
    return (
        f"**The batch-mean ratio counts poisons.** The original's analysis divides the norm of the epoch-averaged "
        f"poison-mean gradient by the clean-mean's (`mean_grad_ratio`, here geometric mean over epochs): "
        f"{batch.text()} in the vanilla runs{dp_text}, against n_clean / n_poison = {n_clean:,.0f} / "
        f"{n_poison:,.0f} = {n_clean / n_poison:.3g}. Near convergence the clean and poison gradient sums cancel, "
        "so their means' ratio tends to n_clean / n_poison with or without DP (the paper's 2.527 at 40 % label "
        'flips is 10,800 / 4,320 = 2.5), and its cosine to −1: "ratio > 1" and "cosine < 0" hold by '
        'construction and "DP shrinks the ratio" cannot. The checks above therefore use per-sample gradients: '
        f"mean poison ‖g_i‖ ÷ mean clean ‖g_i‖ = {per_sample.text()} in the vanilla runs."
    )
