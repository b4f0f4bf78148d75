"""The interface every attack implements, and the poisoned training set it returns."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gsdefense.data.bundle import DataBundle
from gsdefense.errors import ConfigError


@dataclass
class RunContext:
    """What an attack may know about the run besides the data.

    Attacks that train surrogates or craft against the victim's architecture
    (Narcissus, Steinhardt) read it; most attacks ignore it.
    """

    seed: int
    device: torch.device
    cache_dir: Path
    model_name: str
    model_node: Any = None  # the victim's ``model`` config node
    optimizer: Any = None  # the victim's typed optimizer config (lr, batch_size, epochs …)
    scenario: str = "scratch"  # scratch | retrain (see gsdefense.scenario)


@dataclass
class PoisonedSet:
    """The training set an attacked model sees.

    ``is_poison`` marks samples the attacker crafted or relabelled, so that
    metrics (clean vs poison train loss) and telemetry can tell them apart.
    """

    x: torch.Tensor
    y: torch.Tensor
    is_poison: torch.Tensor
    kept: torch.Tensor | None = None  # set by a defense: which rows of the set it was given it kept (a bool mask)

    @property
    def n_poison(self) -> int:
        return int(self.is_poison.sum())


class Attack:
    """Turns clean training data into a ``PoisonedSet``.

    Backdoor attacks also override ``trigger`` (applied to test inputs for ASR);
    ``is_backdoor`` says whether ASR is defined.
    """

    is_backdoor: bool = False
    #: label the attacker wants triggered inputs to receive (None: untargeted)
    target_class: int | None = None

    def validate(self, data: DataBundle, *, context: RunContext | None = None) -> None:
        """Raise ConfigError for settings that do not fit ``data`` (or the victim model)."""

    def poison(self, data: DataBundle, *, generator: torch.Generator, context: RunContext | None = None) -> PoisonedSet:
        """The training set the victim sees. Targeted attacks (``targeted = True``) run trials instead."""
        raise TypeError(f"{type(self).__name__} does not build one poisoned training set")

    def extra_metrics(self) -> dict[str, Any]:
        """Attack-specific numbers for metrics.json (e.g. a certified bound); call after ``poison``."""
        return {}

    def trigger(self, x: torch.Tensor) -> torch.Tensor:
        raise TypeError(f"{type(self).__name__} has no test-time trigger")


def check_ratio(poison_ratio: float) -> None:
    if not 0.0 <= poison_ratio < 1.0:
        raise ConfigError(
            "attack.poison_ratio", f"must be in [0, 1) (got {poison_ratio}).", "pass a fraction such as 0.05."
        )


def check_budget(*, poison_ratio: float | None, n_poisons: int | None) -> None:
    """Exactly one of ``poison_ratio`` and ``n_poisons`` is set; the ratio lies in [0, 1), the count is >= 0."""
    if (poison_ratio is None) == (n_poisons is None):
        raise ConfigError(
            "attack.n_poisons",
            f"set exactly one of attack.poison_ratio and attack.n_poisons (got {poison_ratio} and {n_poisons}).",
            "e.g. attack.n_poisons=100 attack.poison_ratio=null, or attack.n_poisons=null attack.poison_ratio=0.05.",
        )
    if poison_ratio is not None:
        check_ratio(poison_ratio)
    if n_poisons is not None and n_poisons < 0:
        raise ConfigError("attack.n_poisons", f"must be >= 0 (got {n_poisons}).", "pass a count such as 100.")


def poison_count(*, poison_ratio: float | None, n_poisons: int | None, n_train: int) -> int:
    """The number of poisons for a clean training set of ``n_train`` samples."""
    return n_poisons if n_poisons is not None else round(poison_ratio * n_train)


def check_target(target_class: int | None, data: DataBundle) -> None:
    if target_class is not None and not 0 <= target_class < data.num_classes:
        raise ConfigError(
            "attack.target_class",
            f"must be a class of {data.name}, 0..{data.num_classes - 1} (got {target_class}).",
        )


def pick(candidates: torch.Tensor, count: int, *, generator: torch.Generator, field: str) -> torch.Tensor:
    """``count`` distinct indices drawn uniformly from ``candidates``."""
    if count > len(candidates):
        raise ConfigError(field, f"asks for {count} poisons but only {len(candidates)} eligible samples exist.")
    order = torch.randperm(len(candidates), generator=generator)[:count]
    return candidates[order.to(candidates.device)].sort().values


def relabel_to_target(data: DataBundle, idx: torch.Tensor, x_new: torch.Tensor, target_class: int) -> PoisonedSet:
    """Replace samples ``idx`` by ``x_new`` labelled ``target_class`` (dirty-label backdoor)."""
    x, y = data.x_train.clone(), data.y_train.clone()
    x[idx] = x_new
    y[idx] = target_class
    mask = torch.zeros(len(y), dtype=torch.bool, device=y.device)
    mask[idx] = True
    return PoisonedSet(x=x, y=y, is_poison=mask)


def append_to_target(data: DataBundle, x_new: torch.Tensor, target_class: int) -> PoisonedSet:
    """Every clean sample, then ``x_new`` labelled ``target_class`` (poisons added to the training set)."""
    n, k = len(data.y_train), len(x_new)
    y_new = torch.full((k,), target_class, dtype=data.y_train.dtype, device=data.y_train.device)
    mask = torch.cat([torch.zeros(n, dtype=torch.bool), torch.ones(k, dtype=torch.bool)]).to(data.y_train.device)
    return PoisonedSet(x=torch.cat([data.x_train, x_new]), y=torch.cat([data.y_train, y_new]), is_poison=mask)


INSERTION_MODES = ("append", "replace")
SOURCES = ("any", "non_target")


def check_insertion(*, mode: str, source: str) -> None:
    """``attack.mode`` and ``attack.source`` of a dirty-label backdoor (badnets, blend)."""
    if mode not in INSERTION_MODES:
        raise ConfigError("attack.mode", f"unknown mode {mode!r}.", f"use one of {', '.join(INSERTION_MODES)}.")
    if source not in SOURCES:
        raise ConfigError("attack.source", f"unknown source {source!r}.", f"use one of {', '.join(SOURCES)}.")


def insert_backdoor(
    data: DataBundle,
    trigger: Callable[[torch.Tensor], torch.Tensor],
    *,
    poison_ratio: float,
    target_class: int,
    mode: str,
    source: str,
    generator: torch.Generator,
) -> PoisonedSet:
    """``round(poison_ratio·n)`` samples drawn from ``source``, triggered and labelled ``target_class``.

    ``append`` adds the triggered copies to the clean set (Hong et al. §3.1, Chen et al.); ``replace`` swaps them
    for their originals (BackdoorBench). ``source``: ``any`` class, or ``non_target`` classes only.
    """
    count = round(poison_ratio * len(data.y_train))
    eligible = torch.arange(len(data.y_train), device=data.y_train.device)
    if source == "non_target":
        eligible = eligible[data.y_train != target_class]
    idx = pick(eligible, count, generator=generator, field="attack.poison_ratio")
    x_new = trigger(data.x_train[idx])
    if mode == "append":
        return append_to_target(data, x_new, target_class)
    return relabel_to_target(data, idx, x_new, target_class)
