"""The one in-memory form every dataset takes."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class DataBundle:
    """Train/test tensors in *pixel space* ``[lo, hi]`` (usually [0, 1]).

    Attacks work in this space (triggers, ℓ∞ balls, box clipping); the model
    normalises with ``mean``/``std`` in its first layer, so data is stored once.

    Attributes:
        x_train, x_test: float32, shape ``(n, *input_shape)``.
        y_train, y_test: int64 labels in ``0 .. num_classes-1``.
        mean, std: per-channel statistics of ``x_train`` (shape ``(C,)``) used
            by the model's input normalisation.
        box: the valid input range ``(lo, hi)``; attacks clip into it.
        class_names: readable names, index = label.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    mean: torch.Tensor
    std: torch.Tensor
    box: tuple[float, float] = (0.0, 1.0)
    class_names: tuple[str, ...] = ()

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def to(self, device: torch.device | str) -> DataBundle:
        move = {k: getattr(self, k).to(device) for k in ("x_train", "y_train", "x_test", "y_test", "mean", "std")}
        return DataBundle(
            name=self.name, num_classes=self.num_classes, box=self.box, class_names=self.class_names, **move
        )
