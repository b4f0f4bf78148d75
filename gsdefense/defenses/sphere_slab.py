"""Sphere and slab sanitisation of Steinhardt, Koh & Liang (NeurIPS 2017, eq. 2 and eq. 7).

Before training, drop every training point ``(x, y)`` outside its class's sphere ``‖x − μ_y‖ ≤ r_y`` and/or
slab ``|⟨x − μ_y, μ_y − μ_{−y}⟩| ≤ s_y`` (geometry in ``gsdefense.attacks.feasible``). Radii are the
``percentile``-th percentile of the distances of the points the centroids come from:

- ``oracle: true`` — the *fixed* defense: centroids and radii of the clean training data (an oracle the
  defender does not have in practice; the set the Steinhardt attack crafts against);
- ``oracle: false`` — the *data-dependent* defense: centroids and radii of the poisoned training set itself.

``defense=sphere`` and ``defense=slab`` are the same class with different switches; ``defense=sphere
defense.slab=true`` applies both. The slab needs a binary task; the sphere works for any number of classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gsdefense.attacks.base import PoisonedSet, RunContext
from gsdefense.attacks.feasible import FeasibleSet
from gsdefense.data.bundle import DataBundle
from gsdefense.defenses import Defense, keep
from gsdefense.errors import ConfigError


@dataclass
class SphereConfig:
    name: str = "sphere"
    sphere: bool = True
    slab: bool = False
    percentile: float = 70.0
    oracle: bool = True


@dataclass
class SlabConfig(SphereConfig):
    name: str = "slab"
    sphere: bool = False
    slab: bool = True


class SphereSlab(Defense):
    """Keep the points inside the sphere and/or slab."""

    def __init__(self, cfg: SphereConfig) -> None:
        self.cfg = cfg
        self.feasible: FeasibleSet | None = None

    def validate(self, data: DataBundle, *, context: RunContext | None = None) -> None:
        if not (self.cfg.sphere or self.cfg.slab):
            raise ConfigError("defense.sphere", "both defense.sphere and defense.slab are false.", "enable one.")
        if not 0.0 < self.cfg.percentile <= 100.0:
            raise ConfigError("defense.percentile", f"must be in (0, 100] (got {self.cfg.percentile}).")
        if self.cfg.slab and data.num_classes != 2:
            raise ConfigError(
                "defense.slab",
                f"the slab is defined for binary tasks; {data.name} has {data.num_classes} classes.",
                "use defense=sphere, or pick two classes with dataset.classes=[a,b].",
            )

    def apply(self, poisoned: PoisonedSet, *, data: DataBundle) -> tuple[PoisonedSet, dict[str, Any]]:
        x, y = (data.x_train, data.y_train) if self.cfg.oracle else (poisoned.x, poisoned.y)
        self.feasible = FeasibleSet.fit(
            x, y, num_classes=data.num_classes, percentile=self.cfg.percentile, box=data.box
        )
        inside = self.feasible.contains(poisoned.x, poisoned.y, sphere=self.cfg.sphere, slab=self.cfg.slab)
        return keep(poisoned, inside)
