"""torchvision, imported only by the features that need it, with one line naming the fix when it cannot be.

torchvision is a declared dependency, but a torch installed from another index (PyTorch's CPU wheels, a cluster's
own build) can sit beside a torchvision built for a different torch, and then ``import torchvision`` fails
(``operator torchvision::nms does not exist``). Only three features need it: ``model=resnet18`` (its ResNet and
BasicBlock), ``attack.trigger_path`` (resizing the trigger image) and downloading FashionMNIST or CIFAR-10; every
other part of gsdefense, reading those datasets from disk included, runs without it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import torch

from gsdefense.errors import ConfigError

CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def torchvision_problem() -> str | None:
    """Why ``import torchvision`` fails here, on one line; None when it imports."""
    try:
        importlib.import_module("torchvision")
    except Exception as err:  # noqa: BLE001 - a mismatched build raises RuntimeError/OSError/ImportError alike
        text = " ".join(str(err).split())[:200]
        return f"{type(err).__name__}: {text}" if text else type(err).__name__
    return None


def import_torchvision(submodule: str, *, field: str, needed_for: str, instead: str) -> ModuleType:
    """``torchvision.<submodule>``, or a ConfigError on ``field`` saying why it cannot be imported and the fix.

    ``needed_for`` names the feature ("model=resnet18"); ``instead`` is the way around it ("or use model=cnn").
    """
    problem = torchvision_problem()
    if problem is None:
        return importlib.import_module(f"torchvision.{submodule}")
    raise ConfigError(
        field,
        f"{needed_for} needs torchvision, which cannot be imported here ({problem}).",
        f"install the torchvision build made for torch {torch.__version__} (pip install torchvision; beside a CPU-only "
        f"torch: pip install torchvision --index-url {CPU_INDEX}), {instead}.",
    )
