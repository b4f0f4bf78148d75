"""No attack: the clean training set (a baseline for RAD and for DP's utility cost)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gsdefense.attacks.base import Attack, PoisonedSet, RunContext
from gsdefense.data.bundle import DataBundle


@dataclass
class NoAttackConfig:
    name: str = "none"


class NoAttack(Attack):
    def __init__(self, cfg: NoAttackConfig) -> None:
        self.cfg = cfg

    def poison(self, data: DataBundle, *, generator: torch.Generator, context: RunContext | None = None) -> PoisonedSet:
        mask = torch.zeros(len(data.y_train), dtype=torch.bool, device=data.y_train.device)
        return PoisonedSet(x=data.x_train, y=data.y_train, is_poison=mask)
