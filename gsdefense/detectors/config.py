"""Typed settings of the ``detector`` group, checked in ``__post_init__`` (bad values raise ConfigError)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from gsdefense.errors import ConfigError

MITIGATIONS = ("none", "unlearn", "prune")


@dataclass
class NoDetectorConfig:
    """No post-training step: the trained model is evaluated as it is."""

    name: str = "none"


def _finite(field: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"detector.{field}", f"must be a finite number (got {value!r}).")


def _in_range(field: str, value: float, lo: float, hi: float, *, lo_open: bool, hi_open: bool, fix: str) -> None:
    _finite(field, value)
    below = value <= lo if lo_open else value < lo
    above = value >= hi if hi_open else value > hi
    if below or above:
        interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        raise ConfigError(f"detector.{field}", f"must be in {interval} (got {value}).", fix)


def _positive_int(field: str, value: int | None, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"detector.{field}", f"must be a positive integer (got {value!r}).")


@dataclass
class NeuralCleanseConfig:
    """Neural Cleanse (Wang et al., IEEE S&P 2019) and the original code's defaults.

    Reverse engineering minimises ``CE(f((1−m)⊙x + m⊙p), t) + λ_t·‖m‖₁`` per label t with Adam(lr, β1, β2)
    over ``max_epochs`` mini-epochs of ``steps_per_epoch`` batches of ``batch_size`` defender samples.
    λ starts at 0 and is set to ``init_cost`` once the reversed trigger reaches ``attack_succ_threshold``
    for ``patience`` mini-epochs; then it is multiplied by ``cost_multiplier`` after ``patience`` mini-epochs
    at or above the threshold and divided by ``cost_multiplier**1.5`` after ``patience`` below. A label stops
    when λ has gone both up and down and its best ‖m‖₁ has not dropped below ``early_stop_threshold`` × its
    previous best for ``early_stop_patience`` mini-epochs. Labels whose anomaly index exceeds
    ``anomaly_threshold`` are flagged; ``mitigation`` repairs the model for the most anomalous one.
    """

    name: str = "neural_cleanse"
    defender_fraction: float = 0.1  # share of the clean training set held out for the defender (paper: 10%)
    batch_size: int = 32
    steps_per_epoch: int | None = None  # null: one pass over the defender data, at most 31 batches (the original's)
    max_epochs: int = 1000  # the original's STEPS
    lr: float = 0.1
    beta1: float = 0.5
    beta2: float = 0.9
    init_cost: float = 1e-3
    cost_multiplier: float = 1.5
    patience: int = 5
    attack_succ_threshold: float = 0.99
    early_stop: bool = True
    early_stop_threshold: float = 0.99
    early_stop_patience: int = 10
    anomaly_threshold: float = 2.0
    mitigation: str = "none"  # none | unlearn | prune
    unlearn_fraction: float = 0.2  # share of the defender data stamped with the reversed trigger (true labels)
    unlearn_epochs: int = 20
    prune_success: float = 0.05  # prune until the reversed trigger's success on defender data is below this
    prune_max_fraction: float = 0.5  # ... or this share of the penultimate neurons is pruned

    def __post_init__(self) -> None:
        _in_range("defender_fraction", self.defender_fraction, 0, 1, lo_open=True, hi_open=True, fix="e.g. 0.1.")
        for field in ("batch_size", "max_epochs", "patience", "early_stop_patience", "unlearn_epochs"):
            _positive_int(field, getattr(self, field))
        _positive_int("steps_per_epoch", self.steps_per_epoch, optional=True)
        _in_range("lr", self.lr, 0, math.inf, lo_open=True, hi_open=True, fix="e.g. 0.1.")
        for field in ("beta1", "beta2"):
            _in_range(field, getattr(self, field), 0, 1, lo_open=False, hi_open=True, fix="e.g. 0.5 and 0.9.")
        _in_range("init_cost", self.init_cost, 0, math.inf, lo_open=True, hi_open=True, fix="e.g. 1e-3.")
        _in_range("cost_multiplier", self.cost_multiplier, 1, math.inf, lo_open=True, hi_open=True, fix="e.g. 1.5.")
        _in_range("attack_succ_threshold", self.attack_succ_threshold, 0, 1, lo_open=True, hi_open=False,
                  fix="e.g. 0.99.")  # fmt: skip
        _in_range("early_stop_threshold", self.early_stop_threshold, 0, 1, lo_open=True, hi_open=False,
                  fix="e.g. 0.99: a new best must be 1% smaller to count as progress.")  # fmt: skip
        _finite("anomaly_threshold", self.anomaly_threshold)
        if self.anomaly_threshold <= 0:
            raise ConfigError("detector.anomaly_threshold", f"must be > 0 (got {self.anomaly_threshold}).", "e.g. 2.")
        if self.mitigation not in MITIGATIONS:
            raise ConfigError("detector.mitigation", f"unknown mitigation {self.mitigation!r}.",
                              f"use one of: {', '.join(MITIGATIONS)}.")  # fmt: skip
        _in_range("unlearn_fraction", self.unlearn_fraction, 0, 1, lo_open=True, hi_open=False, fix="e.g. 0.2.")
        _in_range("prune_success", self.prune_success, 0, 1, lo_open=True, hi_open=False, fix="e.g. 0.05.")
        _in_range("prune_max_fraction", self.prune_max_fraction, 0, 1, lo_open=True, hi_open=False, fix="e.g. 0.5.")
