"""Dataset registry and the one entry point, ``load_dataset``, that turns a Hydra node into a DataBundle.

Every option of the ``dataset`` config group registers a typed config and a builder here. Options that apply to
all datasets (``classes``) and the normalisation statistics are handled once, in ``load_dataset``, so builders only
have to produce pixel-space tensors.
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


@dataclasses.dataclass
class DatasetConfig:
    """Keys shared by every dataset; ``classes`` keeps and relabels a subset (null = all classes)."""

    name: str = ""
    classes: list[int] | None = None


def channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean/std of ``x`` (axis 1: image channels, or features for 1-D inputs).

    A constant channel gets std 1 (as in sklearn's StandardScaler) so normalisation never divides by zero.
    """
    dims = [d for d in range(x.dim()) if d != 1]
    mean = x.mean(dim=dims)
    std = x.std(dim=dims)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return mean.float(), std.float()


def make_bundle(
    *,
    name: str,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    class_names: Sequence[str],
    box: tuple[float, float] = (0.0, 1.0),
) -> DataBundle:
    """A DataBundle with dtypes fixed (float32 / int64) and mean/std computed from ``x_train``."""
    x_train = x_train.to(torch.float32).contiguous()
    mean, std = channel_stats(x_train)
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


def load_dataset(node: Any, *, seed: int) -> DataBundle:
    """Validate the ``dataset`` node, build it on CPU, apply ``classes`` and compute mean/std from x_train."""
    cfg = DATASETS.config(node)
    bundle = DATASETS.builder(node)(cfg, seed=seed)
    if cfg.classes is not None:
        return select_classes(bundle, classes=cfg.classes)
    mean, std = channel_stats(bundle.x_train)
    return dataclasses.replace(bundle, mean=mean, std=std)


# Imported last: these modules register their builders into DATASETS defined above.
from gsdefense.data import purchase100, sklearn_sets, torchvision_sets  # noqa: E402,F401
