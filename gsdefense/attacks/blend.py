"""Blended backdoor of Chen et al. (2017), "Targeted Backdoor Attacks … Using Data Poisoning".

Poisons are ``x' = (1-α)·x + α·t`` for ``round(poison_ratio·n)`` non-target
training samples, relabelled to ``target_class``. ``t`` is a fixed uniform-noise
pattern drawn with ``pattern_seed`` (Chen et al.'s random-pattern key), or an
image file given by ``trigger_path``, resized to the input size. At test time
the trigger is blended with ``test_alpha`` (default: ``alpha``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from gsdefense.attacks.base import Attack, PoisonedSet, RunContext, check_ratio, check_target, pick, relabel_to_target
from gsdefense.data.bundle import DataBundle
from gsdefense.errors import ConfigError


@dataclass
class BlendConfig:
    name: str = "blend"
    poison_ratio: float = 0.1
    target_class: int = 0
    alpha: float = 0.2
    test_alpha: float | None = None
    trigger_path: str | None = None
    pattern_seed: int = 0


def load_pattern(path: str, shape: tuple[int, ...], box: tuple[float, float]) -> torch.Tensor:
    """An image file as a tensor of ``shape`` (C, H, W) in ``box``."""
    from PIL import Image
    from torchvision.transforms.functional import pil_to_tensor, resize

    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError("attack.trigger_path", f"no image file at {file.resolve()}.", "pass an existing PNG/JPEG.")
    if len(shape) != 3:
        raise ConfigError("attack.trigger_path", "an image trigger needs an image dataset.", "drop trigger_path.")
    image = Image.open(file).convert("L" if shape[0] == 1 else "RGB")
    pattern = resize(pil_to_tensor(image), list(shape[1:]), antialias=True).float() / 255.0
    return box[0] + pattern * (box[1] - box[0])


class Blend(Attack):
    is_backdoor = True

    def __init__(self, cfg: BlendConfig) -> None:
        self.cfg = cfg
        self.target_class = cfg.target_class
        self.pattern: torch.Tensor | None = None

    def validate(self, data: DataBundle, *, context: RunContext | None = None) -> None:
        check_ratio(self.cfg.poison_ratio)
        check_target(self.cfg.target_class, data)
        for field in ("alpha", "test_alpha"):
            value = getattr(self.cfg, field)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ConfigError(f"attack.{field}", f"must be in [0, 1] (got {value}).")
        if self.cfg.trigger_path:
            self.pattern = load_pattern(self.cfg.trigger_path, data.input_shape, data.box)
        else:
            gen = torch.Generator().manual_seed(self.cfg.pattern_seed)
            lo, hi = data.box
            self.pattern = lo + (hi - lo) * torch.rand(data.input_shape, generator=gen)
        self.pattern = self.pattern.to(data.x_train.device)

    def blend(self, x: torch.Tensor, alpha: float) -> torch.Tensor:
        return (1 - alpha) * x + alpha * self.pattern

    def trigger(self, x: torch.Tensor) -> torch.Tensor:
        alpha = self.cfg.alpha if self.cfg.test_alpha is None else self.cfg.test_alpha
        return self.blend(x, alpha)

    def poison(self, data: DataBundle, *, generator: torch.Generator, context: RunContext | None = None) -> PoisonedSet:
        count = round(self.cfg.poison_ratio * len(data.y_train))
        eligible = (data.y_train != self.cfg.target_class).nonzero().squeeze(1)
        idx = pick(eligible, count, generator=generator, field="attack.poison_ratio")
        return relabel_to_target(data, idx, self.blend(data.x_train[idx], self.cfg.alpha), self.cfg.target_class)
