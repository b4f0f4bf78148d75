"""BadNets-style patch backdoor — Hong et al.'s "feature insertion" (§6.2).

A white ``patch_size``×``patch_size`` square in a corner is stamped on
``round(poison_ratio·n)`` training samples drawn from the non-target classes,
which are relabelled to ``target_class``. At test time the same patch is
stamped on non-target test images to measure ASR.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gsdefense.attacks.base import Attack, PoisonedSet, RunContext, check_ratio, check_target, pick, relabel_to_target
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


class BadNets(Attack):
    is_backdoor = True

    def __init__(self, cfg: BadNetsConfig) -> None:
        self.cfg = cfg
        self.target_class = cfg.target_class
        self.value = 1.0

    def validate(self, data: DataBundle, *, context: RunContext | None = None) -> None:
        check_ratio(self.cfg.poison_ratio)
        check_target(self.cfg.target_class, data)
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
        count = round(self.cfg.poison_ratio * len(data.y_train))
        eligible = (data.y_train != self.cfg.target_class).nonzero().squeeze(1)
        idx = pick(eligible, count, generator=generator, field="attack.poison_ratio")
        return relabel_to_target(data, idx, self.trigger(data.x_train[idx]), self.cfg.target_class)
