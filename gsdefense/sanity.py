"""A run whose numbers would mean nothing, or could not be computed, is refused before training.

Checked once the data is loaded (the counts depend on it), each with one ``ConfigError`` line:

- a positive ``attack.poison_ratio`` that rounds to 0 poisons on this training set (its ASR would read 0.000
  for an attack that never happened; ``poison_ratio=0`` stays the legitimate no-poison arm of a sweep);
- a detector's ``defender_fraction`` that leaves the victim's training set without some class (at 0.999 a
  digits run trained on one sample and reported "ok");
- an accountant that cannot compute ε for this run's σ, q and steps (``accounting.check_epsilon``).
"""

from __future__ import annotations

from typing import Any

import torch

from gsdefense.data.bundle import DataBundle
from gsdefense.errors import ConfigError
from gsdefense.scenario import private_phases
from gsdefense.training.accounting import check_epsilon


def check_poison_count(attack: Any, *, n_train: int) -> None:
    """``round(poison_ratio · n)`` (every attack's count) is at least 1 when the ratio is positive."""
    ratio = getattr(attack, "poison_ratio", None)
    if getattr(attack, "n_poisons", None) is not None or not isinstance(ratio, float | int) or ratio <= 0:
        return
    if round(ratio * n_train) == 0:
        raise ConfigError(
            "attack.poison_ratio",
            f"{ratio:g} of {n_train} training samples is 0 poisons: the run would measure an attack that never "
            "happened.",
            f"use at least {1 / n_train:.2g} (1 poison), or 0 for a no-poison run.",
        )


def check_training_set(loaded: DataBundle, data: DataBundle, *, fraction: float) -> None:
    """The training set left after the detector's hold-out still holds every class the loaded one holds."""
    if not fraction > 0:
        return
    before = set(torch.unique(loaded.y_train).tolist())
    after = set(torch.unique(data.y_train).tolist())
    if before - after:
        raise ConfigError(
            "detector.defender_fraction",
            f"{fraction:g} leaves {len(data.y_train)} training samples, without class(es) "
            f"{', '.join(map(str, sorted(before - after)[:5]))}: the victim could not learn them.",
            "hold out a small share, e.g. detector.defender_fraction=0.1 (the paper's).",
        )


def check_privacy(dp: Any, *, scenario: Any, optimizer: Any, n_train: int) -> None:
    """ε can be computed for every private phase of the scenario, together (they compose)."""
    if dp is None:
        return
    private, _ = private_phases(scenario)
    epochs = sum(optimizer.epochs if phase == "train" else getattr(scenario, f"{phase}_epochs") for phase in private)
    check_epsilon(dp, n_train=n_train, batch_size=optimizer.batch_size, epochs=epochs)


def check_run(*, typed: dict[str, Any], loaded: DataBundle, data: DataBundle, fraction: float) -> None:
    """Every check above, for a run's typed groups (``identity.typed_groups``), before training."""
    check_training_set(loaded, data, fraction=fraction)
    check_poison_count(typed["attack"], n_train=len(data.y_train))
    check_privacy(typed["dp"], scenario=typed["scenario"], optimizer=typed["optimizer"], n_train=len(data.y_train))
