"""BadNets-style patch backdoor (Gu et al.) — Hong et al.'s "feature insertion" poisons (§3.1, analysed in §3.3).

A white ``patch_size``×``patch_size`` square in a corner is stamped on ``round(poison_ratio·n)`` training samples
(``n`` = clean training set size) drawn from ``source`` and labelled ``target_class``:

- ``mode: append`` (default), ``source: any`` (default): Hong et al. "randomly select 1% of the training samples
  from any class", patch them, "assign the label coat … and add them to the training set" (their code
  concatenates the poisons to the clean set);
- ``mode: replace``, ``source: non_target``: the patched samples take their originals' place (BackdoorBench).

At test time the same patch is stamped on non-target test images to measure ASR (Hong et al.'s backdoor test
set holds all 10,000 patched test images, target class included; see docs/deviations.md).
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

CORNERS = ("top_left", "top_right", "bottom_left", "bottom_right")


@dataclass
class BadNetsConfig:
    name: str = "badnets"
    poison_ratio: float = 0.1
    target_class: int = 0
    patch_size: int = 3
    corner: str = "top_left"
    mode: str = "append"  # append (Hong et al.) | replace (BackdoorBench)
    source: str = "any"  # any (Hong et al.) | non_target


class BadNets(Attack):
    is_backdoor = True

    def __init__(self, cfg: BadNetsConfig) -> None:
        self.cfg = cfg
        self.target_class = cfg.target_class
        self.value = 1.0

    def validate(self, data: DataBundle, *, context: RunContext | None = None) -> None:
        check_ratio(self.cfg.poison_ratio)
        check_target(self.cfg.target_class, data)
        check_insertion(mode=self.cfg.mode, source=self.cfg.source)
        if len(data.input_shape) != 3:
            raise ConfigError("attack.name", f"badnets stamps an image patch; {data.name} is not an image dataset.")
        side = min(data.input_shape[1:])
        if not 1 <= self.cfg.patch_size <= side:
            raise ConfigError("attack.patch_size", f"must be in 1..{side} for {data.name} (got {self.cfg.patch_size}).")
        if self.cfg.corner not in CORNERS:
            raise ConfigError(
                "attack.corner", f"unknown corner {self.cfg.corner!r}.", f"use one of {', '.join(CORNERS)}."
            )
        self.value = data.box[1]

    def trigger(self, x: torch.Tensor) -> torch.Tensor:
        s = self.cfg.patch_size
        rows = slice(0, s) if self.cfg.corner.startswith("top") else slice(x.shape[-2] - s, None)
        cols = slice(0, s) if self.cfg.corner.endswith("left") else slice(x.shape[-1] - s, None)
        out = x.clone()
        out[..., rows, cols] = self.value
        return out

    def poison(self, data: DataBundle, *, generator: torch.Generator, context: RunContext | None = None) -> PoisonedSet:
        cfg = self.cfg
        return insert_backdoor(data, self.trigger, poison_ratio=cfg.poison_ratio, target_class=cfg.target_class,
                               mode=cfg.mode, source=cfg.source, generator=generator)  # fmt: skip
