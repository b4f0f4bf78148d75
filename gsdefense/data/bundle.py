"""The one in-memory form every dataset takes."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

TENSORS = ("x_train", "y_train", "x_test", "y_test", "mean", "std", "x_val", "y_val")


@dataclass
class DataBundle:
    """Train/test tensors in *pixel space* ``[lo, hi]`` (usually [0, 1]).

    Attacks work in this space (triggers, ℓ∞ balls, box clipping); the model's first layer maps it to what
    the network sees (``models.build_model``), so data is stored once.

    Attributes:
        x_train, x_test: float32, shape ``(n, *input_shape)``.
        y_train, y_test: int64 labels in ``0 .. num_classes-1``.
        mean, std: the per-channel map ``(x - mean) / std`` of the model's first layer (shape ``(C,)``), or
            None for raw inputs (``input_norm: none``). For ``standardize`` they are statistics of
            ``x_train`` — of the private training set, so not covered by DP's ε.
        box: the valid input range ``(lo, hi)``; attacks clip into it.
        class_names: readable names, index = label.
        input_norm: the ``dataset.input_norm`` that produced mean/std (None when built by hand).
        x_val, y_val: training samples held out by ``dataset.validation_fraction`` (None when none are);
            nothing trains or evaluates on them.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    mean: torch.Tensor | None
    std: torch.Tensor | None
    box: tuple[float, float] = (0.0, 1.0)
    class_names: tuple[str, ...] = ()
    input_norm: str | None = None
    x_val: torch.Tensor | None = None
    y_val: torch.Tensor | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def to(self, device: torch.device | str) -> DataBundle:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        for key in TENSORS:
            if values[key] is not None:
                values[key] = values[key].to(device)
        return DataBundle(**values)
