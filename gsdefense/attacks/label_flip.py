"""Random label flipping (Hong et al. §6.1).

``replace``: relabel ``round(poison_ratio·n)`` training samples to a different,
uniformly random class (or to ``target_class`` when given).
``append``: the original's variant — append that many *copies* with flipped
labels, leaving the clean samples untouched (the Hong presets use it; see docs/deviations.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gsdefense.attacks.base import Attack, PoisonedSet, RunContext, check_ratio, check_target, pick
from gsdefense.data.bundle import DataBundle
from gsdefense.errors import ConfigError


@dataclass
class LabelFlipConfig:
    name: str = "label_flip"
    poison_ratio: float = 0.1
    target_class: int | None = None
    mode: str = "replace"


class LabelFlip(Attack):
    def __init__(self, cfg: LabelFlipConfig) -> None:
        self.cfg = cfg
        self.target_class = cfg.target_class

    def validate(self, data: DataBundle, *, context: RunContext | None = None) -> None:
        check_ratio(self.cfg.poison_ratio)
        check_target(self.cfg.target_class, data)
        if self.cfg.mode not in ("replace", "append"):
            raise ConfigError("attack.mode", f"unknown mode {self.cfg.mode!r}.", "use replace or append.")

    def _flip(self, y: torch.Tensor, *, num_classes: int, generator: torch.Generator) -> torch.Tensor:
        if self.cfg.target_class is not None:
            return torch.full_like(y, self.cfg.target_class)
        # y + U{1..k-1} mod k is uniform over the other classes and never equals y.
        shift = torch.randint(1, num_classes, (len(y),), generator=generator).to(y.device)
        return (y + shift) % num_classes

    def poison(self, data: DataBundle, *, generator: torch.Generator, context: RunContext | None = None) -> PoisonedSet:
        n = len(data.y_train)
        count = round(self.cfg.poison_ratio * n)
        eligible = torch.arange(n, device=data.y_train.device)
        if self.cfg.target_class is not None:
            eligible = eligible[data.y_train != self.cfg.target_class]
        idx = pick(eligible, count, generator=generator, field="attack.poison_ratio")
        flipped = self._flip(data.y_train[idx], num_classes=data.num_classes, generator=generator)
        if self.cfg.mode == "replace":
            y = data.y_train.clone()
            y[idx] = flipped
            mask = torch.zeros(n, dtype=torch.bool, device=y.device)
            mask[idx] = True
            return PoisonedSet(x=data.x_train, y=y, is_poison=mask)
        mask = torch.cat([torch.zeros(n, dtype=torch.bool), torch.ones(count, dtype=torch.bool)]).to(
            data.y_train.device
        )
        return PoisonedSet(
            x=torch.cat([data.x_train, data.x_train[idx]]), y=torch.cat([data.y_train, flipped]), is_poison=mask
        )
