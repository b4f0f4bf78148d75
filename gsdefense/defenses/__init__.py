"""Data-sanitisation defenses (the ``defense`` config group), applied before training.

A defense drops training points it deems poisonous. It composes with ``dp``,
so one sweep can compare sanitisation, gradient shaping, and both.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from gsdefense.attacks.base import PoisonedSet, RunContext
from gsdefense.data.bundle import DataBundle
from gsdefense.registry import Registry


class Defense(ABC):
    """Filters a poisoned training set; reports what it removed."""

    def validate(self, data: DataBundle, *, context: RunContext | None = None) -> None:
        """Raise ConfigError for settings that do not fit ``data``; nothing to check by default."""
        return None

    @abstractmethod
    def apply(self, poisoned: PoisonedSet, *, data: DataBundle) -> tuple[PoisonedSet, dict[str, Any]]:
        """The kept training set, and metrics: at least ``n_removed`` and ``n_poison_removed``."""


def keep(poisoned: PoisonedSet, mask) -> tuple[PoisonedSet, dict[str, int]]:
    """Keep the samples where ``mask`` is True; count what was removed."""
    removed = ~mask
    info = {"n_removed": int(removed.sum()), "n_poison_removed": int((removed & poisoned.is_poison).sum())}
    kept = PoisonedSet(x=poisoned.x[mask], y=poisoned.y[mask], is_poison=poisoned.is_poison[mask], kept=mask)
    return kept, info


@dataclass
class NoDefenseConfig:
    name: str = "none"


class NoDefense(Defense):
    def __init__(self, cfg: NoDefenseConfig) -> None:
        self.cfg = cfg

    def apply(self, poisoned: PoisonedSet, *, data: DataBundle) -> tuple[PoisonedSet, dict[str, Any]]:
        return poisoned, {"n_removed": 0, "n_poison_removed": 0}


DEFENSES: Registry[Defense] = Registry("defense")
DEFENSES.register("none", NoDefenseConfig)(NoDefense)


def build_defense(node: Any) -> Defense:
    return DEFENSES.builder(node)(DEFENSES.config(node))


# Imported last: sphere_slab subclasses Defense and uses keep(), both defined above.
from gsdefense.defenses.sphere_slab import SlabConfig, SphereConfig, SphereSlab  # noqa: E402

DEFENSES.register("sphere", SphereConfig)(SphereSlab)
DEFENSES.register("slab", SlabConfig)(SphereSlab)
