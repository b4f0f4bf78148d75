"""Feature collision by watermarking (Hong et al. §3.1, Fig. 1–2).

Draw ``count`` distinct ``x_base`` from ``base_class`` and ``count`` distinct ``x_other`` from ``other_class``
(pair ``i`` = the ``i``-th of each draw); each poison is

    x_p = clip((1 − α)·x_base + α·x_other, lo, hi),   labelled base_class,

appended to the clean training set. ``α`` is the collision intensity: α = 0 duplicates dresses, α = 1 is a coat
labelled dress. ``count`` is ``n_poisons`` (the paper: 100 pairs on FashionMNIST-3/4) or
``round(poison_ratio·n)``. The pairs are a seeded random draw; the original used fixed index lists
(docs/deviations.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gsdefense.attacks.base import Attack, PoisonedSet, RunContext, check_budget, pick, poison_count
from gsdefense.data.bundle import DataBundle
from gsdefense.errors import ConfigError


@dataclass
class CollisionConfig:
    name: str = "collision"
    n_poisons: int | None = 100
    poison_ratio: float | None = None
    alpha: float = 0.5
    base_class: int = 0
    other_class: int = 1


class Collision(Attack):
    def __init__(self, cfg: CollisionConfig) -> None:
        self.cfg = cfg
        self.pairs: tuple[torch.Tensor, torch.Tensor] | None = None  # training indices (x_base, x_other)

    def validate(self, data: DataBundle, *, context: RunContext | None = None) -> None:
        check_budget(poison_ratio=self.cfg.poison_ratio, n_poisons=self.cfg.n_poisons)
        if not 0.0 <= self.cfg.alpha <= 1.0:
            raise ConfigError("attack.alpha", f"must be in [0, 1] (got {self.cfg.alpha}).", "e.g. 0.1 … 1.0.")
        for field in ("base_class", "other_class"):
            value = getattr(self.cfg, field)
            if not 0 <= value < data.num_classes:
                raise ConfigError(
                    f"attack.{field}", f"must be a class of {data.name}, 0..{data.num_classes - 1} (got {value})."
                )
        if self.cfg.base_class == self.cfg.other_class:
            raise ConfigError("attack.other_class", f"must differ from attack.base_class ({self.cfg.base_class}).")
        count = self._count(len(data.y_train))
        available = min(int((data.y_train == c).sum()) for c in (self.cfg.base_class, self.cfg.other_class))
        if count > available:
            field = "attack.n_poisons" if self.cfg.n_poisons is not None else "attack.poison_ratio"
            raise ConfigError(field, f"asks for {count} pairs but a class of the pair has only {available} samples.")

    def _count(self, n_train: int) -> int:
        return poison_count(poison_ratio=self.cfg.poison_ratio, n_poisons=self.cfg.n_poisons, n_train=n_train)

    def poison(self, data: DataBundle, *, generator: torch.Generator, context: RunContext | None = None) -> PoisonedSet:
        n = len(data.y_train)
        count = self._count(n)
        base, other = (
            pick((data.y_train == c).nonzero().squeeze(1), count, generator=generator, field="attack.n_poisons")
            for c in (self.cfg.base_class, self.cfg.other_class)
        )
        # pick() sorts its draw; shuffle the partners so that pairs are random, not index-ordered.
        other = other[torch.randperm(count, generator=generator).to(other.device)]
        a = self.cfg.alpha
        x_p = ((1 - a) * data.x_train[base] + a * data.x_train[other]).clamp(*data.box)
        y_p = torch.full((count,), self.cfg.base_class, dtype=data.y_train.dtype, device=data.y_train.device)
        mask = torch.cat([torch.zeros(n, dtype=torch.bool), torch.ones(count, dtype=torch.bool)])
        self.pairs = (base, other)
        return PoisonedSet(
            x=torch.cat([data.x_train, x_p]), y=torch.cat([data.y_train, y_p]), is_poison=mask.to(data.y_train.device)
        )
