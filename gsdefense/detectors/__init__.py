"""Post-training detectors (the ``detector`` config group): inspect the trained model, optionally repair it.

``defense`` sanitises the training set before training; a detector runs after it, on the defender's own clean
data: a held-out share of the clean training set that the victim never trains on (``defender_split``),
never the test set. The run's integration is three calls::

    cfg = detector_config(node)                       # validated; ConfigError on bad values
    check_detector(cfg, num_classes=..., n_train=..., model=...)   # data/model checks, before training
    train_idx, defender_idx = defender_split(n_train, fraction=cfg.defender_fraction, seed=seed)
    ...                                               # poison and train on train_idx only
    metrics |= run_detector(cfg, model=..., x_defender=..., ...)   # after training; writes its files

Options: ``none`` (nothing held out, no keys) and ``neural_cleanse`` (Wang et al. 2019).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gsdefense.detectors.config import NeuralCleanseConfig, NoDetectorConfig
from gsdefense.detectors.mitigation import FineTune, last_linear
from gsdefense.detectors.neural_cleanse import run_neural_cleanse
from gsdefense.errors import ConfigError
from gsdefense.registry import Registry

DETECTORS: Registry[Callable[..., dict[str, Any]]] = Registry("detector")


@DETECTORS.register("none", NoDetectorConfig)
def _no_detector(cfg: NoDetectorConfig, **_: Any) -> dict[str, Any]:
    return {}


DETECTORS.register("neural_cleanse", NeuralCleanseConfig)(run_neural_cleanse)


def detector_config(node: Any) -> NoDetectorConfig | NeuralCleanseConfig:
    """The validated detector settings (ConfigError naming the field on unknown keys or bad values)."""
    return DETECTORS.config(node)


def holds_out(cfg: NoDetectorConfig | NeuralCleanseConfig) -> float:
    """The share of the clean training set the detector takes for the defender (0 for ``none``)."""
    return getattr(cfg, "defender_fraction", 0.0)


def defender_split(n_train: int, *, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, defender indices): a seeded random partition of ``range(n_train)``, both sorted.

    ``round(fraction · n_train)`` indices go to the defender. The draw uses its own generator, so it does not
    shift any other random stream of the run.
    """
    count = round(fraction * n_train)
    perm = torch.randperm(n_train, generator=torch.Generator().manual_seed(seed))
    return perm[count:].sort().values, perm[:count].sort().values


def check_detector(cfg: NoDetectorConfig | NeuralCleanseConfig, *, num_classes: int, n_train: int,
                   model: nn.Module | None = None) -> None:  # fmt: skip
    """Raise ConfigError for a detector that cannot work on this data or model (call before training)."""
    if isinstance(cfg, NoDetectorConfig):
        return
    if num_classes < 3:
        raise ConfigError(
            "detector.name",
            f"Neural Cleanse's MAD outlier test needs >= 3 labels; this dataset has {num_classes} "
            "(with 2 the smaller norm's index is always 0.67).",
            "use a dataset with 3 or more classes, or detector=none.",
        )
    n_defender = round(cfg.defender_fraction * n_train)
    if n_defender < 1 or n_defender >= n_train:
        raise ConfigError(
            "detector.defender_fraction",
            f"gives {n_defender} defender samples out of {n_train} training samples.",
            "hold out at least one sample and leave some to train on, e.g. detector.defender_fraction=0.1.",
        )
    if cfg.mitigation == "prune" and (model is None or last_linear(model) is None):
        raise ConfigError(
            "detector.mitigation",
            "prune zeroes inputs of the model's last nn.Linear; this model has none.",
            "use detector.mitigation=unlearn or none.",
        )


def run_detector(
    cfg: NoDetectorConfig | NeuralCleanseConfig,
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
    """Run the detector on the trained ``model`` (left unchanged); its metrics.json keys, files in ``output_dir``.

    ``target_class``/``true_trigger``: the backdoor's target and test-time trigger when the attack has one
    (for ``nc_detected`` and the PNGs), else None. ``evaluate(model)`` is the run's metric code (clean_acc,
    asr, …); its keys come back with ``_after`` for the repaired model (RAD is the caller's, from acc_ref).
    ``fine_tune(model, x, y, *, epochs)`` trains a copy for unlearning with the run's optimizer and DP settings.
    """
    return DETECTORS.builder(cfg)(
        cfg,
        model=model,
        x_defender=x_defender,
        y_defender=y_defender,
        box=box,
        num_classes=num_classes,
        target_class=target_class,
        true_trigger=true_trigger,
        evaluate=evaluate,
        fine_tune=fine_tune,
        seed=seed,
        output_dir=output_dir,
    )


__all__ = [
    "DETECTORS",
    "NeuralCleanseConfig",
    "NoDetectorConfig",
    "check_detector",
    "defender_split",
    "detector_config",
    "holds_out",
    "run_detector",
]
