"""Poisoning attacks, one per module, looked up by ``attack.name``."""

from __future__ import annotations

from typing import Any

from gsdefense.attacks.badnets import BadNets, BadNetsConfig
from gsdefense.attacks.base import Attack, PoisonedSet, RunContext
from gsdefense.attacks.blend import Blend, BlendConfig
from gsdefense.attacks.collision import Collision, CollisionConfig
from gsdefense.attacks.label_flip import LabelFlip, LabelFlipConfig
from gsdefense.attacks.narcissus import Narcissus, NarcissusConfig
from gsdefense.attacks.none import NoAttack, NoAttackConfig
from gsdefense.attacks.poison_frogs import PoisonFrogs, PoisonFrogsConfig
from gsdefense.attacks.steinhardt import Steinhardt, SteinhardtConfig
from gsdefense.registry import Registry

ATTACKS: Registry[Attack] = Registry("attack")
ATTACKS.register("none", NoAttackConfig)(NoAttack)
ATTACKS.register("label_flip", LabelFlipConfig)(LabelFlip)
ATTACKS.register("badnets", BadNetsConfig)(BadNets)
ATTACKS.register("blend", BlendConfig)(Blend)
ATTACKS.register("collision", CollisionConfig)(Collision)
ATTACKS.register("steinhardt", SteinhardtConfig)(Steinhardt)
ATTACKS.register("narcissus", NarcissusConfig)(Narcissus)
ATTACKS.register("poison_frogs", PoisonFrogsConfig)(PoisonFrogs)


def build_attack(node: Any) -> Attack:
    return ATTACKS.builder(node)(ATTACKS.config(node))


__all__ = ["ATTACKS", "Attack", "PoisonedSet", "RunContext", "build_attack"]
