"""The ``detector`` step of a run: inspect the trained model with the defender's held-out data, maybe repair it.

Privacy of the repaired model: the defender's records are held out of the training set before poisoning,
so whatever the detector does with them is post-processing for the training records, and ``epsilon`` (of
the training set) still bounds the repaired model w.r.t. them. The defender's own records get no guarantee:
Neural Cleanse reads them without DP. Unlearning fine-tunes with the run's optimizer and ``dp`` settings
(DP-SGD when ``dp`` is on); its own ε over the defender data is ``nc_unlearn_epsilon``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from gsdefense import metrics as M
from gsdefense.cache import cache_key, noise_seed
from gsdefense.detectors import run_detector
from gsdefense.training.loop import TrainResult, train

if TYPE_CHECKING:
    from gsdefense.plan import Plan

EPSILON_NOTE = (
    "covers the training records; the detector's held-out defender records are not covered (Neural Cleanse "
    "reads them without DP)"
)


def detect(plan: Plan, evaluate, result: TrainResult, output_dir: Path, *, acc_ref: float | None, seed: int) -> dict:
    """The detector's metrics for a trained run (empty for ``detector=none`` or a run that did not finish)."""
    if plan.defender is None or result.status != "ok":
        return {}
    x_def, y_def = plan.defender
    tuned: dict[str, Any] = {}

    def fine_tune(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int) -> nn.Module:
        optimizer = dataclasses.replace(plan.optimizer, epochs=epochs)
        out = train(model, x, y, optimizer_cfg=optimizer, dp=plan.dp, seed=plan.seed, desc="unlearn",
                    noise_seed=noise_seed(cache_key("unlearn", {"run": seed})))  # fmt: skip
        tuned["epsilon"] = out.epsilon
        return out.model

    attack = plan.attack
    metrics = run_detector(
        plan.detector,
        model=result.model,
        x_defender=x_def,
        y_defender=y_def,
        box=plan.data.box,
        num_classes=plan.data.num_classes,
        target_class=attack.target_class if attack.is_backdoor else None,
        true_trigger=attack.trigger if attack.is_backdoor else None,
        evaluate=evaluate,
        fine_tune=fine_tune,
        seed=plan.seed,
        output_dir=output_dir,
    )
    if "clean_acc_after" in metrics:
        metrics["rad_after"] = M.rad(acc_ref, metrics["clean_acc_after"])
    if tuned:
        metrics["nc_unlearn_epsilon"] = tuned["epsilon"]
    if plan.dp is not None:  # without DP there is no epsilon for the note to qualify
        metrics["nc_epsilon_note"] = EPSILON_NOTE
    return metrics
