"""Poisoning attacks, one per module, looked up by ``attack.name``."""

from __future__ import annotations

from typing import Any

from gsdefense.attacks.badnets import BadNets, BadNetsConfig
from gsdefense.attacks.base import Attack, PoisonedSet, RunContext
from gsdefense.attacks.blend import Blend, BlendConfig
from gsdefense.attacks.label_flip import LabelFlip, LabelFlipConfig
from gsdefense.attacks.none import NoAttack, NoAttackConfig
from gsdefense.registry import Registry

ATTACKS: Registry[Attack] = Registry("attack")
ATTACKS.register("none", NoAttackConfig)(NoAttack)
ATTACKS.register("label_flip", LabelFlipConfig)(LabelFlip)
ATTACKS.register("badnets", BadNetsConfig)(BadNets)
ATTACKS.register("blend", BlendConfig)(Blend)


def build_attack(node: Any) -> Attack:
    return ATTACKS.builder(node)(ATTACKS.config(node))


__all__ = ["ATTACKS", "Attack", "PoisonedSet", "RunContext", "build_attack"]
