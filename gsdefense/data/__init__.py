"""Dataset registry and the one entry point, ``load_dataset``, that turns a Hydra node into a DataBundle.

Every option of the ``dataset`` config group registers a typed config and a builder here. Options that apply to
all datasets — ``classes``, ``validation_fraction`` and ``input_norm`` — are handled once, in ``load_dataset``,
so builders only have to produce pixel-space tensors.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch

from gsdefense.data.bundle import DataBundle
from gsdefense.errors import ConfigError
from gsdefense.registry import Registry

DATASETS: Registry[DataBundle] = Registry("dataset")

#: What the model's first layer does to pixel-space inputs (``models.build_model``):
#: none: nothing (raw pixels, as Hong et al.'s code feeds them); standardize: ``(x - mean)/std`` per channel
#: with training-set statistics; symmetric: the box [lo, hi] mapped to [-1, 1] (Narcissus' ``Normalize(0.5, 0.5)``).
INPUT_NORMS = ("none", "standardize", "symmetric")


@dataclasses.dataclass
class DatasetConfig:
    """Keys shared by every dataset.

    ``classes`` keeps and relabels a subset (null = all classes); ``input_norm`` is one of ``INPUT_NORMS`` (each
    dataset sets the default its papers used); ``validation_fraction`` of each class of the training set is held
    out (stratified, fixed by ``split_seed``) into ``DataBundle.x_val``/``y_val``.
    """

    name: str = ""
    classes: list[int] | None = None
    input_norm: str = "standardize"
    validation_fraction: float = 0.0
    split_seed: int = 0

    def __post_init__(self) -> None:
        if self.input_norm not in INPUT_NORMS:
            raise ConfigError(
                "dataset.input_norm", f"unknown value {self.input_norm!r}.", f"use one of {', '.join(INPUT_NORMS)}."
            )
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ConfigError(
                "dataset.validation_fraction", f"must be in [0, 1) (got {self.validation_fraction}).", "e.g. 0.1."
            )
        if self.split_seed < 0:
            raise ConfigError("dataset.split_seed", f"must be >= 0 (got {self.split_seed}).", "e.g. 0.")


def channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean/std of ``x`` (axis 1: image channels, or features for 1-D inputs).

    A constant channel gets std 1 (as in sklearn's StandardScaler) so normalisation never divides by zero.
    """
    dims = [d for d in range(x.dim()) if d != 1]
    mean = x.mean(dim=dims)
    std = x.std(dim=dims)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return mean.float(), std.float()


def input_map(
    x_train: torch.Tensor, *, input_norm: str, box: tuple[float, float]
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``(mean, std)`` of the model's first layer for ``input_norm`` (``(None, None)``: raw inputs)."""
    if input_norm == "none":
        return None, None
    if input_norm == "standardize":
        return channel_stats(x_train)
    lo, hi = box
    channels = x_train.shape[1]
    return torch.full((channels,), (lo + hi) / 2), torch.full((channels,), (hi - lo) / 2)


def make_bundle(
    *,
    name: str,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    class_names: Sequence[str],
    box: tuple[float, float] = (0.0, 1.0),
    input_norm: str = "standardize",
) -> DataBundle:
    """A DataBundle with dtypes fixed (float32 / int64) and the ``input_norm`` map computed from ``x_train``."""
    x_train = x_train.to(torch.float32).contiguous()
    mean, std = input_map(x_train, input_norm=input_norm, box=box)
    return DataBundle(
        name=name,
        x_train=x_train,
        y_train=y_train.to(torch.int64).contiguous(),
        x_test=x_test.to(torch.float32).contiguous(),
        y_test=y_test.to(torch.int64).contiguous(),
        num_classes=len(class_names),
        mean=mean,
        std=std,
        box=box,
        class_names=tuple(class_names),
        input_norm=input_norm,
    )


def select_classes(bundle: DataBundle, *, classes: Sequence[int]) -> DataBundle:
    """Keep only ``classes`` (original ids) in train and test, relabelled ``0..k-1`` in the given order."""
    valid = list(range(bundle.num_classes))
    listing = ", ".join(f"{i}={n}" for i, n in zip(valid, bundle.class_names, strict=True))
    fix = f"pick at least 2 distinct ids of {bundle.name!r} from: {listing}."
    unknown = [c for c in classes if c not in valid]
    if unknown:
        raise ConfigError("dataset.classes", f"unknown class ids {unknown}.", fix)
    if len(set(classes)) != len(classes):
        raise ConfigError("dataset.classes", f"contains duplicates: {list(classes)}.", fix)
    if len(classes) < 2:
        raise ConfigError("dataset.classes", f"needs at least 2 classes, got {list(classes)}.", fix)

    # Lookup table old id -> new id (-1 = dropped) relabels in one indexing op.
    table = torch.full((bundle.num_classes,), -1, dtype=torch.int64)
    table[torch.tensor(list(classes), dtype=torch.int64)] = torch.arange(len(classes))

    def subset(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        new = table[y]
        keep = new >= 0
        return x[keep], new[keep]

    x_train, y_train = subset(bundle.x_train, bundle.y_train)
    x_test, y_test = subset(bundle.x_test, bundle.y_test)
    return make_bundle(
        name=bundle.name,
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        class_names=[bundle.class_names[c] for c in classes],
        box=bundle.box,
    )


def hold_out(bundle: DataBundle, *, fraction: float, split_seed: int) -> DataBundle:
    """Move ``round(fraction · n_c)`` training samples of every class c to ``x_val``/``y_val``.

    The samples are drawn by a permutation fixed by ``split_seed``; both parts keep the original order.
    """
    gen = torch.Generator().manual_seed(split_seed)
    y = bundle.y_train
    held = torch.zeros(len(y), dtype=torch.bool)
    for c in range(bundle.num_classes):
        idx = (y == c).nonzero().squeeze(1)
        held[idx[torch.randperm(len(idx), generator=gen)[: round(fraction * len(idx))]]] = True
    if held.all() or not held.any():
        raise ConfigError(
            "dataset.validation_fraction",
            f"holds out {int(held.sum())} of {len(y)} training samples; train and validation must both be non-empty.",
            "use a fraction such as 0.1, or 0 for no validation set.",
        )
    return dataclasses.replace(
        bundle, x_train=bundle.x_train[~held], y_train=y[~held], x_val=bundle.x_train[held], y_val=y[held]
    )


def load_dataset(node: Any, *, seed: int) -> DataBundle:
    """Validate the ``dataset`` node, build it on CPU, apply ``classes``, the validation split and ``input_norm``.

    ``input_norm`` statistics come from the (remaining) training set only.
    """
    cfg = DATASETS.config(node)
    bundle = DATASETS.builder(node)(cfg, seed=seed)
    if cfg.classes is not None:
        bundle = select_classes(bundle, classes=cfg.classes)
    if cfg.validation_fraction > 0:
        bundle = hold_out(bundle, fraction=cfg.validation_fraction, split_seed=cfg.split_seed)
    mean, std = input_map(bundle.x_train, input_norm=cfg.input_norm, box=bundle.box)
    return dataclasses.replace(bundle, mean=mean, std=std, input_norm=cfg.input_norm)


# Imported last: these modules register their builders into DATASETS defined above.
from gsdefense.data import purchase100, sklearn_sets, torchvision_sets  # noqa: E402,F401
