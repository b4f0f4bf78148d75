"""A tiny name -> (typed config, builder) registry, shared by every config group.

Each option of a config group (``attack=blend``, ``dataset=digits`` …) registers a
dataclass describing its keys and a builder. ``Registry.config(node)`` turns the
composed Hydra node into that dataclass, so unknown keys and wrong types are
rejected with a message that names the field.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from gsdefense.errors import ConfigError

T = TypeVar("T")


def to_dataclass(node: Any, schema: type[T], *, group: str) -> T:
    """Merge ``node`` into ``schema``; unknown keys or bad types raise ConfigError."""
    if dataclasses.is_dataclass(node) and isinstance(node, schema):
        return node
    data = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    data.pop("name", None)
    known = {f.name for f in dataclasses.fields(schema)}
    for key in data:
        if key not in known:
            allowed = ", ".join(sorted(known - {"name"})) or "(none)"
            raise ConfigError(f"{group}.{key}", "is not a known key.", f"use one of: {allowed}.")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), data)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "?"
        reason = str(exc.msg).splitlines()[0] if exc.msg else type(exc).__name__
        raise ConfigError(f"{group}.{key}", f"has the wrong type ({reason}).") from None
    # Typed values ('nan' given as text is a float now), before a __post_init__ range check can be fooled by them.
    check_numbers(OmegaConf.to_container(merged), group=group)
    return OmegaConf.to_object(merged)


INT64 = 2**63


def check_numbers(data: dict[str, Any], *, group: str) -> None:
    """Every number is finite and fits a 64-bit integer; NaN or ±inf would train, then hang or mislead.

    Checked once here for every typed config rather than key by key in each group.
    """
    for key, value in data.items():
        field = f"{group}.{key}"
        if isinstance(value, dict):
            check_numbers(value, group=field)
        elif isinstance(value, list | tuple):
            check_numbers({str(i): v for i, v in enumerate(value)}, group=field)
        elif isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(field, f"must be a finite number (got {value}).", f"pass a real value, e.g. {field}=1.")
        elif isinstance(value, int) and not isinstance(value, bool) and not -INT64 <= value < INT64:
            raise ConfigError(field, f"is out of range (got {value}).", "pass a 64-bit integer.")


class Registry(Generic[T]):
    """Options of one config group, looked up by their ``name`` key."""

    def __init__(self, group: str) -> None:
        self.group = group
        self._entries: dict[str, tuple[type, Callable[..., T]]] = {}

    def register(self, name: str, schema: type) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def deco(fn: Callable[..., T]) -> Callable[..., T]:
            self._entries[name] = (schema, fn)
            return fn

        return deco

    @property
    def names(self) -> list[str]:
        return sorted(self._entries)

    def _entry(self, node: Any) -> tuple[str, type, Callable[..., T]]:
        name = node.get("name") if hasattr(node, "get") else getattr(node, "name", None)
        if name not in self._entries:
            raise ConfigError(
                f"{self.group}.name",
                f"unknown option {name!r}.",
                f"choose {self.group}= one of: {', '.join(self.names)}.",
            )
        schema, fn = self._entries[name]
        return name, schema, fn

    def config(self, node: Any) -> Any:
        """The typed, validated config dataclass for ``node``."""
        _, schema, _ = self._entry(node)
        return to_dataclass(node, schema, group=self.group)

    def builder(self, node: Any) -> Callable[..., T]:
        return self._entry(node)[2]
