"""Models from Hong et al. Table 4, plus a DP-compatible ResNet-18.

Every model's first module maps pixel space to what the network sees, so that data and attacks stay in
pixel space: ``Normalize((x - mean) / std)`` when the dataset's ``input_norm`` gives statistics, or
``nn.Identity`` when it is ``none`` (raw pixels, as Hong et al.'s code). The Identity keeps the module indices
(``0`` = input map, ``1`` = network) the same either way, so only the ``0.mean``/``0.std`` buffers differ
between the two state dicts. Input shape and number of classes always come from the dataset.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
from torch import nn

from gsdefense.errors import ConfigError
from gsdefense.optional import import_torchvision
from gsdefense.registry import Registry

MODELS: Registry[nn.Module] = Registry("model")


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel (images) or per feature (tabular)."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, ndim: int) -> None:
        super().__init__()
        shape = (1, -1) + (1,) * (ndim - 1)
        self.register_buffer("mean", mean.detach().clone().float().reshape(shape))
        self.register_buffer("std", std.detach().clone().float().clamp_min(1e-6).reshape(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


@dataclass
class LRConfig:
    name: str = "lr"


@dataclass
class MLPConfig:
    name: str = "mlp"
    hidden: int = 256
    depth: int = 1  # hidden layers: 1 as Hong et al.'s Table 4; their code (ShallowMLP) has 2


@dataclass
class CNNConfig:
    name: str = "cnn"
    hidden: int = 64  # FC width (Table 4: 64; the original's FashionMNIST backdoor CNN used 256)
    padding: int = 1  # of both 3x3 convolutions: 1 keeps the size ("same", as the original code); 0 = "valid"


@dataclass
class ResNetConfig:
    name: str = "resnet18"
    groups: int = 32  # GroupNorm groups; BatchNorm mixes samples, which per-sample DP forbids


def _wrap(body: nn.Module, mean: torch.Tensor | None, std: torch.Tensor | None, ndim: int) -> nn.Sequential:
    """``[input map, body]``: Normalize with ``mean``/``std``, or the identity when both are None (raw inputs)."""
    if (mean is None) != (std is None):
        raise ValueError("pass both mean and std (standardised inputs) or neither (raw inputs)")
    first = nn.Identity() if mean is None else Normalize(mean, std, ndim)
    return nn.Sequential(first, body)


@MODELS.register("lr", LRConfig)
def logistic_regression(cfg: LRConfig, *, input_shape: tuple[int, ...], num_classes: int, mean, std) -> nn.Module:
    """Multinomial logistic regression: softmax(W·x + b)."""
    body = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes))
    return _wrap(body, mean, std, len(input_shape))


@MODELS.register("mlp", MLPConfig)
def mlp(cfg: MLPConfig, *, input_shape: tuple[int, ...], num_classes: int, mean, std) -> nn.Module:
    """``depth`` × [FC(hidden)-ReLU], then FC(classes) (Table 4: one FC256; the original code: two)."""
    if cfg.hidden <= 0:
        raise ConfigError("model.hidden", f"must be > 0 (got {cfg.hidden}).")
    if cfg.depth < 1:
        raise ConfigError("model.depth", f"must be >= 1 (got {cfg.depth}).", "1 as Table 4, 2 as the original code.")
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for _ in range(cfg.depth):
        layers += [nn.Linear(width, cfg.hidden), nn.ReLU()]
        width = cfg.hidden
    body = nn.Sequential(*layers, nn.Linear(width, num_classes))
    return _wrap(body, mean, std, len(input_shape))


def _require_image(name: str, input_shape: tuple[int, ...], min_side: int) -> None:
    if len(input_shape) != 3 or min(input_shape[1:]) < min_side:
        raise ConfigError(
            "model.name",
            f"{name} needs image inputs (C, H, W) with H, W >= {min_side}; this dataset gives {input_shape}.",
            "use model=lr or model=mlp for tabular data.",
        )


@MODELS.register("cnn", CNNConfig)
def cnn(cfg: CNNConfig, *, input_shape: tuple[int, ...], num_classes: int, mean, std) -> nn.Module:
    """Conv3x3x16-ReLU, Conv3x3x32-ReLU, MaxPool2, FC(hidden)-ReLU, FC(classes) (Table 4; hidden = 64).

    Both convolutions pad by ``padding`` (1: "same", as the original code), so a side ``h`` reaches the
    pooling as ``h - 4 + 4·padding``.
    """
    if cfg.hidden <= 0:
        raise ConfigError("model.hidden", f"must be > 0 (got {cfg.hidden}).")
    if not 0 <= cfg.padding <= 1:
        raise ConfigError("model.padding", f"must be 0 or 1 (got {cfg.padding}).", "1 = 'same' (the original), 0.")
    shrink = 4 - 4 * cfg.padding
    _require_image("cnn", input_shape, 2 + shrink)
    c, h, w = input_shape
    flat = 32 * ((h - shrink) // 2) * ((w - shrink) // 2)
    body = nn.Sequential(
        nn.Conv2d(c, 16, 3, padding=cfg.padding),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=cfg.padding),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(flat, cfg.hidden),
        nn.ReLU(),
        nn.Linear(cfg.hidden, num_classes),
    )
    return _wrap(body, mean, std, 3)


def _resnet_module():
    """torchvision.models.resnet, or one line naming the fix where torchvision cannot be imported."""
    return import_torchvision("models.resnet", field="model", needed_for="model=resnet18", instead="or use model=cnn")


def _block_class() -> type[nn.Module]:
    class Block(_resnet_module().BasicBlock):
        """torchvision's BasicBlock with out-of-place ops: Opacus' backward hooks forbid in-place ones."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            return self.relu(self.bn2(self.conv2(out)) + identity)

    return Block


@MODELS.register("resnet18", ResNetConfig)
def resnet18(cfg: ResNetConfig, *, input_shape: tuple[int, ...], num_classes: int, mean, std) -> nn.Module:
    """torchvision ResNet-18 with GroupNorm, and a CIFAR-style 3x3 stem for small images."""
    ResNet = _resnet_module().ResNet  # noqa: N806 - torchvision's class name

    _require_image("resnet18", input_shape, 8)
    if 64 % cfg.groups:
        raise ConfigError("model.groups", f"must divide 64 (got {cfg.groups}).", "use 1, 2, 4, 8, 16, 32 or 64.")
    net = ResNet(
        _block_class(), [2, 2, 2, 2], num_classes=num_classes, norm_layer=lambda ch: nn.GroupNorm(cfg.groups, ch)
    )
    c, h, _ = input_shape
    # The ImageNet stem (7x7 stride 2 + max-pool) throws away most of a 32x32 image.
    stride = 2 if h > 64 else 1
    net.conv1 = nn.Conv2d(
        c, 64, kernel_size=3 if h <= 64 else 7, stride=stride, padding=1 if h <= 64 else 3, bias=False
    )
    if h <= 64:
        net.maxpool = nn.Identity()
    for module in net.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False  # Opacus' backward hooks cannot see through in-place ops
    return _wrap(net, mean, std, 3)


def parameter_count(cfg, *, input_shape: tuple[int, ...], num_classes: int) -> int:
    """The number of weights ``cfg`` builds for this data, computed without building it (0 for resnet18: its
    size is fixed, ~11M)."""
    features, k = math.prod(input_shape), num_classes
    if isinstance(cfg, LRConfig):
        return features * k + k
    if isinstance(cfg, MLPConfig):
        h = cfg.hidden
        return features * h + h + (cfg.depth - 1) * (h * h + h) + h * k + k
    if isinstance(cfg, CNNConfig) and len(input_shape) == 3:
        c, height, width = input_shape
        shrink = 4 - 4 * cfg.padding
        flat = 32 * (max(height - shrink, 0) // 2) * (max(width - shrink, 0) // 2)
        return (9 * c * 16 + 16) + (9 * 16 * 32 + 32) + flat * cfg.hidden + cfg.hidden + cfg.hidden * k + k
    return 0


def available_memory() -> int | None:
    """Bytes of memory a new allocation can take now (``MemAvailable``), else the machine's total; None unknown."""
    try:
        for line in open("/proc/meminfo"):  # noqa: SIM115 - a few lines, read once
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


# Training holds the weights, their gradients and up to two optimizer moments (Adam): 4 float32 copies.
COPIES = 4


def check_memory(cfg, *, input_shape: tuple[int, ...], num_classes: int) -> None:
    """Refuse a model whose weights, gradients and optimizer state cannot fit in memory, before allocating it
    (``model.hidden=100000000`` would ask for 25.6 GB of weights and end in an allocator traceback)."""
    count = parameter_count(cfg, input_shape=input_shape, num_classes=num_classes)
    need, have = COPIES * 4 * count, available_memory()
    if have is None or need <= have:
        return
    field = "model.hidden" if hasattr(cfg, "hidden") else "model.name"
    raise ConfigError(
        field,
        f"{cfg.name} has {count:.3g} weights for this data: training needs ~{need / 2**30:.1f} GiB (weights, "
        f"gradients, optimizer state), more than the {have / 2**30:.1f} GiB of memory available.",
        "use a smaller model (model.hidden, model.depth).",
    )


def build_model(
    node, *, input_shape: tuple[int, ...], num_classes: int, mean: torch.Tensor | None, std: torch.Tensor | None
) -> nn.Module:
    """The ``model`` option for this data; ``mean``/``std`` from ``DataBundle`` (None: raw inputs, Identity)."""
    cfg = MODELS.config(node)
    check_memory(cfg, input_shape=input_shape, num_classes=num_classes)
    return MODELS.builder(node)(cfg, input_shape=input_shape, num_classes=num_classes, mean=mean, std=std)
