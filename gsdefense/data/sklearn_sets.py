"""Small offline datasets that ship with scikit-learn: ``digits`` (the default), ``breast_cancer``, ``moons``.

scikit-learn has no official train/test split, so each set is split once with a fixed ``split_seed`` that is
independent of the experiment seed: every run (any seed, any defense) sees exactly the same train and test data.
All three live in the box [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.datasets import load_breast_cancer, load_digits, make_moons
from sklearn.model_selection import train_test_split

from gsdefense.data import DATASETS, DatasetConfig, make_bundle
from gsdefense.data.bundle import DataBundle
from gsdefense.errors import ConfigError


def _check_split(*, test_fraction: float) -> None:
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError("dataset.test_fraction", f"must be in (0, 1), got {test_fraction}.", "e.g. 0.25.")


@dataclass
class DigitsConfig(DatasetConfig):
    """sklearn's 8x8 digits; ``test_fraction`` of each class goes to the test set. Raw [0, 1] pixels by default,
    as Hong et al. feed (Fashion)MNIST pixels, so that clip values mean what they mean in the paper."""

    name: str = "digits"
    input_norm: str = "none"
    test_fraction: float = 0.25

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_split(test_fraction=self.test_fraction)


@dataclass
class BreastCancerConfig(DatasetConfig):
    """Wisconsin breast cancer, 30 tabular features, binary (0 = malignant, 1 = benign). Standardised by
    default: the raw features span orders of magnitude, and even min-max scaled into the box (which attacks
    and sanitisers use) their means range over 0.06–0.49 and their spreads over 0.09–0.23."""

    name: str = "breast_cancer"
    input_norm: str = "standardize"
    test_fraction: float = 0.25

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_split(test_fraction=self.test_fraction)


@dataclass
class MoonsConfig(DatasetConfig):
    """Two interleaving half-circles in 2-D; ``split_seed`` fixes both the sample and the split.

    Standardised by default: no paper fixes a choice for this toy set, which exists to show decision
    boundaries, and on the raw [0, 1] coordinates the default MLP (SGD, 20 epochs) reaches only 0.90 test
    accuracy against 0.99 standardised (LR: 0.87 / 0.88), so its boundary plots would show an unfinished fit."""

    name: str = "moons"
    input_norm: str = "standardize"
    n_train: int = 700
    n_test: int = 300
    noise: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("n_train", "n_test"):
            # Stratified splitting needs at least one point of each class on each side.
            if getattr(self, key) < 2:
                raise ConfigError(f"dataset.{key}", f"must be >= 2, got {getattr(self, key)}.")
        if not self.noise >= 0:
            raise ConfigError("dataset.noise", f"must be >= 0, got {self.noise}.", "e.g. 0.1.")


def _stratified_split(
    x: np.ndarray, y: np.ndarray, *, test_size: float, train_size: int | None = None, split_seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return train_test_split(
        x, y, test_size=test_size, train_size=train_size, stratify=y, random_state=split_seed, shuffle=True
    )


def _minmax_to_unit_box(x_train: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scale each feature to [0, 1] with TRAIN min/max (no test leakage); test is clipped into the box."""
    lo, hi = x_train.min(axis=0), x_train.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    return (x_train - lo) / span, np.clip((x_test - lo) / span, 0.0, 1.0)


def _tensors(*arrays: np.ndarray) -> list[torch.Tensor]:
    return [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]


@DATASETS.register("digits", DigitsConfig)
def build_digits(cfg: DigitsConfig, *, seed: int) -> DataBundle:
    """1797 images (1, 8, 8); raw pixels 0..16 divided by 16. ``seed`` is unused: the split is fixed."""
    raw = load_digits()
    x = raw.images.astype(np.float32)[:, None] / 16.0
    x_tr, x_te, y_tr, y_te = _stratified_split(
        x, raw.target.astype(np.int64), test_size=cfg.test_fraction, split_seed=cfg.split_seed
    )
    x_tr, y_tr, x_te, y_te = _tensors(x_tr, y_tr, x_te, y_te)
    names = [str(int(t)) for t in raw.target_names]
    return make_bundle(name="digits", x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te, class_names=names)


@DATASETS.register("breast_cancer", BreastCancerConfig)
def build_breast_cancer(cfg: BreastCancerConfig, *, seed: int) -> DataBundle:
    """569 samples (30,), min-max scaled to [0, 1] on train. ``seed`` is unused: the split is fixed."""
    raw = load_breast_cancer()
    x_tr, x_te, y_tr, y_te = _stratified_split(
        raw.data, raw.target.astype(np.int64), test_size=cfg.test_fraction, split_seed=cfg.split_seed
    )
    x_tr, x_te = _minmax_to_unit_box(x_tr, x_te)
    x_tr, y_tr, x_te, y_te = _tensors(x_tr.astype(np.float32), y_tr, x_te.astype(np.float32), y_te)
    names = [str(n) for n in raw.target_names]
    return make_bundle(name="breast_cancer", x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te, class_names=names)


@DATASETS.register("moons", MoonsConfig)
def build_moons(cfg: MoonsConfig, *, seed: int) -> DataBundle:
    """``n_train`` + ``n_test`` points (2,), min-max scaled to [0, 1] on train so attacks share the unit box.

    ``seed`` is unused: the sample and the split are both fixed by ``split_seed``.
    """
    x, y = make_moons(n_samples=cfg.n_train + cfg.n_test, noise=cfg.noise, random_state=cfg.split_seed)
    x_tr, x_te, y_tr, y_te = _stratified_split(
        x, y.astype(np.int64), test_size=cfg.n_test, train_size=cfg.n_train, split_seed=cfg.split_seed
    )
    x_tr, x_te = _minmax_to_unit_box(x_tr, x_te)
    x_tr, y_tr, x_te, y_te = _tensors(x_tr.astype(np.float32), y_tr, x_te.astype(np.float32), y_te)
    # make_moons: label 0 is the upper half-circle, 1 the lower one.
    names = ["upper", "lower"]
    return make_bundle(name="moons", x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te, class_names=names)
