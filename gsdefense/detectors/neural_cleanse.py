"""Neural Cleanse after training: reverse-engineer every label's trigger, flag outliers, optionally repair.

The defender holds clean data the model never trained on (``defender_split``) and white-box access to the
model. Mitigation works on a copy: the trained model is left as it is. When nothing is flagged no repair
runs (the defender sees no backdoor) and the ``*_after`` metrics are those of the unchanged model, so "after"
always means "what the defender deploys".
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from gsdefense.detectors.anomaly import anomaly_index, flagged
from gsdefense.detectors.config import NeuralCleanseConfig
from gsdefense.detectors.mitigation import FineTune, prune, unlearn
from gsdefense.detectors.report import label_rows, write_tables, write_trigger_pngs
from gsdefense.detectors.reverse import reverse_engineer
from gsdefense.io import write_csv

log = logging.getLogger(__name__)


def run_neural_cleanse(
    cfg: NeuralCleanseConfig,
    *,
    model: nn.Module,
    x_defender: torch.Tensor,
    y_defender: torch.Tensor,
    box: tuple[float, float],
    num_classes: int,
    target_class: int | None,
    true_trigger: Callable[[torch.Tensor], torch.Tensor] | None,
    evaluate: Callable[[nn.Module], dict],
    fine_tune: FineTune | None,
    seed: int,
    output_dir: Path,
) -> dict[str, Any]:
    """Detect (and with ``cfg.mitigation`` repair); write the files of ``report``; return the ``nc_*`` metrics."""
    output_dir = Path(output_dir)
    start = time.perf_counter()
    rev = reverse_engineer(model, x_defender, num_classes=num_classes, cfg=cfg, box=box, seed=seed)
    index = anomaly_index(rev.l1.detach().cpu().numpy())
    labels = rev.labels.tolist()
    hits = [labels[i] for i in flagged(index, threshold=cfg.anomaly_threshold)]  # most anomalous first
    seconds = time.perf_counter() - start
    log.info("neural cleanse: flagged %s (max anomaly index %.2f) in %.2f s", hits or "nothing", index.max(), seconds)
    rows = label_rows(rev, index, hits)
    write_tables(output_dir, rows, rev, index)
    show = sorted(set(hits) | ({target_class} if target_class is not None else set()))
    write_trigger_pngs(output_dir, rev, index, labels=show, flagged=hits, target=target_class, box=box,
                       true_trigger=true_trigger)  # fmt: skip
    target_row = rows[labels.index(target_class)] if target_class is not None else None
    metrics: dict[str, Any] = {
        "nc_flagged": sorted(hits),
        "nc_detected": None if target_class is None else target_class in hits,
        "nc_target_anomaly_index": target_row["anomaly_index"] if target_row else None,
        "nc_max_anomaly_index": float(index.max()),
        "nc_target_mask_l1": target_row["mask_l1"] if target_row else None,
        "nc_median_mask_l1": float(np.median(rev.l1.detach().cpu().numpy())),
        "nc_n_defender": len(x_defender),
        "nc_epochs": int(rev.epochs.max()),
        "nc_seconds": seconds,
    }
    if cfg.mitigation != "none":
        metrics.update(_mitigate(cfg, rev=rev, hits=hits, model=model, x=x_defender, y=y_defender, evaluate=evaluate,
                                 fine_tune=fine_tune, seed=seed, output_dir=output_dir))  # fmt: skip
    return metrics


def _mitigate(cfg: NeuralCleanseConfig, *, rev, hits: list[int], model: nn.Module, x: torch.Tensor,
              y: torch.Tensor, evaluate: Callable[[nn.Module], dict], fine_tune: FineTune | None, seed: int,
              output_dir: Path) -> dict[str, Any]:  # fmt: skip
    """Repair for the most anomalous flagged label; evaluate what the defender ends up with."""
    start = time.perf_counter()
    out: dict[str, Any] = {"nc_mitigation": cfg.mitigation, "nc_mitigated": bool(hits), "nc_mitigation_label": None}
    repaired = model
    if hits:
        label = hits[0]
        i = rev.labels.tolist().index(label)
        mask, pattern = rev.mask[i], rev.pattern[i]
        out["nc_mitigation_label"] = label
        if cfg.mitigation == "unlearn":
            if fine_tune is None:
                raise ValueError("mitigation=unlearn needs a fine_tune callable")
            repaired = unlearn(model, x, y, mask=mask, pattern=pattern, fraction=cfg.unlearn_fraction,
                               epochs=cfg.unlearn_epochs, fine_tune=fine_tune, seed=seed)  # fmt: skip
            if not all(torch.isfinite(p).all() for p in repaired.parameters()):
                # A diverged fine-tune is a result to record, not a model to evaluate (as a diverged run).
                log.warning("neural cleanse: unlearning diverged (non-finite weights)")
                out["nc_mitigation_error"] = "unlearning fine-tune diverged (non-finite weights)"
                out["nc_mitigation_seconds"] = time.perf_counter() - start
                return out
        else:
            result = prune(model, x, y, mask=mask, pattern=pattern, label=label, success=cfg.prune_success,
                           max_fraction=cfg.prune_max_fraction)  # fmt: skip
            repaired = result.model
            write_csv(output_dir / "neural_cleanse_prune.csv", result.curve)
            out.update(nc_pruned=result.pruned, nc_pruned_fraction=result.pruned / result.neurons,
                       nc_prune_trigger_success=result.success, nc_prune_defender_acc=result.defender_acc)  # fmt: skip
    repaired.eval()
    with torch.no_grad():
        after = evaluate(repaired)
    out.update({f"{key}_after": value for key, value in after.items()})
    out["nc_mitigation_seconds"] = time.perf_counter() - start
    return out
