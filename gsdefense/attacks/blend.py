"""Blended backdoor of Chen et al. (2017), "Targeted Backdoor Attacks … Using Data Poisoning".

Poisons are ``x' = (1-α)·x + α·t`` for ``round(poison_ratio·n)`` training samples (``n`` = clean training set
size) drawn from ``source``, labelled ``target_class``. ``mode: append`` (default) adds them to the clean set, as
Chen et al. inject poisoning samples; ``replace`` swaps them for their originals (BackdoorBench, and the
limitations study's "trigger patched on a random image whose label is changed"). ``source``: ``any`` class
(default) or ``non_target`` only. ``t`` is a fixed uniform-noise pattern drawn with ``pattern_seed`` (Chen et al.'s
random-pattern key), or an image file given by ``trigger_path`` (e.g. the Hello Kitty image of Chen et al. and
the limitations study), resized to the input size. At test time the trigger is blended with ``test_alpha``
(default: ``alpha``) into non-target test images. Differences from the papers: docs/deviations.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gsdefense.attacks.base import (
    Attack,
    PoisonedSet,
    RunContext,
    check_insertion,
    check_ratio,
    check_target,
    insert_backdoor,
)
from gsdefense.data.bundle import DataBundle
from gsdefense.errors import ConfigError
from gsdefense.optional import import_torchvision
from gsdefense.paths import check_path, launch_path


@dataclass
class BlendConfig:
    name: str = "blend"
    poison_ratio: float = 0.1
    target_class: int = 0
    alpha: float = 0.2
    test_alpha: float | None = None
    trigger_path: str | None = None
    pattern_seed: int = 0
    mode: str = "append"  # append (Chen et al.) | replace (BackdoorBench, the limitations study)
    source: str = "any"  # any | non_target


def load_pattern(path: str, shape: tuple[int, ...], box: tuple[float, float]) -> torch.Tensor:
    """An image file as a tensor of ``shape`` (C, H, W) in ``box``; any unreadable file is a one-line ConfigError."""
    from PIL import Image

    field, fix = "attack.trigger_path", "pass a PNG or JPEG file that opens in an image viewer, or null."
    file = check_path(launch_path(path), field=field)  # a name too long or a symlink loop: one line, no traceback
    if file.is_dir():
        raise ConfigError(field, f"{file.resolve()} is a directory, not an image file.", fix)
    if not file.is_file():
        raise ConfigError(field, f"no image file at {file.resolve()}.", fix)
    if len(shape) != 3:
        raise ConfigError(field, "an image trigger needs an image dataset.", "drop trigger_path.")
    if file.stat().st_size == 0:
        raise ConfigError(field, f"{file.resolve()} is empty (0 bytes).", fix)
    try:
        with Image.open(file) as image:
            image = image.convert("L" if shape[0] == 1 else "RGB")  # decodes every pixel: truncation shows here
    except Exception as err:  # noqa: BLE001 - PIL raises many types (UnidentifiedImageError, OSError, SyntaxError …)
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        raise ConfigError(field, f"{file.resolve()} is not a readable image ({reason}).", fix) from None
    need, instead = "a trigger image (torchvision resizes it)", "or set attack.trigger_path=null (the seeded pattern)"
    tvf = import_torchvision("transforms.functional", field=field, needed_for=need, instead=instead)
    pattern = tvf.resize(tvf.pil_to_tensor(image), list(shape[1:]), antialias=True).float() / 255.0
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
        check_insertion(mode=self.cfg.mode, source=self.cfg.source)
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
        cfg = self.cfg
        return insert_backdoor(data, lambda x: self.blend(x, cfg.alpha), poison_ratio=cfg.poison_ratio,
                               target_class=cfg.target_class, mode=cfg.mode, source=cfg.source,
                               generator=generator)  # fmt: skip
