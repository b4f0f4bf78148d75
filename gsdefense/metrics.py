"""Evaluation metrics, in BackdoorBench's vocabulary.

- clean accuracy: accuracy on the clean test set;
- ASR (attack success rate): among triggered test images whose true class is
  not the target, the fraction classified as the target;
- robust accuracy: on those same triggered images, the fraction still given
  their true class;
- RAD (relative accuracy drop, Hong et al.): ``(acc_ref - acc) / acc_ref``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from gsdefense.attacks.base import Attack

EVAL_CHUNK = 4096


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([model(chunk).argmax(1) for chunk in x.split(EVAL_CHUNK)])


@torch.no_grad()
def mean_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float | None:
    """Mean cross-entropy of ``model`` on ``(x, y)``, in chunks; None for no rows."""
    if len(y) == 0:
        return None
    total = sum(
        F.cross_entropy(model(xc), yc, reduction="sum") for xc, yc in zip(x.split(EVAL_CHUNK), y.split(EVAL_CHUNK))
    )
    return float(total) / len(y)


def accuracy(pred: torch.Tensor, y: torch.Tensor) -> float | None:
    return float((pred == y).float().mean()) if len(y) else None


def rad(acc_ref: float | None, acc: float | None) -> float | None:
    """Relative accuracy drop ``(acc_ref - acc) / acc_ref``; None when undefined."""
    if acc_ref is None or acc is None or acc_ref <= 0:
        return None
    return (acc_ref - acc) / acc_ref


def backdoor_test_set(attack: Attack, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Triggered copies of the test images whose true class is not the target."""
    keep = y != attack.target_class
    return attack.trigger(x[keep]), y[keep]


def evaluate(
    model: nn.Module,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    *,
    attack: Attack,
    triggered: tuple[torch.Tensor, torch.Tensor] | None,
) -> dict[str, float | None]:
    """clean_acc, target_class_acc, and for backdoors asr and robust_acc."""
    pred = predict(model, x_test)
    out: dict[str, float | None] = {"clean_acc": accuracy(pred, y_test), "target_class_acc": None}
    if attack.target_class is not None:
        on_target = y_test == attack.target_class
        out["target_class_acc"] = accuracy(pred[on_target], y_test[on_target])
    out["asr"] = out["robust_acc"] = None
    if triggered is not None:
        x_trig, y_trig = triggered
        pred_trig = predict(model, x_trig)
        out["asr"] = accuracy(pred_trig, torch.full_like(y_trig, attack.target_class))
        out["robust_acc"] = accuracy(pred_trig, y_trig)
    return out
