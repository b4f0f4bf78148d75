"""A tiny name -> (typed config, builder) registry, shared by every config group.

Each option of a config group (``attack=blend``, ``dataset=digits`` …) registers a
dataclass describing its keys and a builder. ``Registry.config(node)`` turns the
composed Hydra node into that dataclass, so unknown keys and wrong types are
rejected with a message that names the field.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from gsdefense.errors import ConfigError, one_line

T = TypeVar("T")


def field_name(group: str, key: str) -> str:
    """``group.key``, or ``key`` alone for a top-level setting (``group=""``)."""
    return f"{group}.{key}" if group else key


def resolved(node: Any, *, field: str = "") -> Any:
    """``node`` as plain Python with every interpolation resolved; one that cannot resolve (an unset
    ``${oc.env:…}``, a key that refers to itself, a missing key) is a ConfigError naming its key."""
    if not isinstance(node, DictConfig | ListConfig):
        return node
    try:
        return OmegaConf.to_container(node, resolve=True)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or field or "config"
        reason = one_line(exc)
        raise ConfigError(
            key, f"cannot be resolved ({reason}).", "pass a plain value, or define what the ${…} refers to."
        ) from None


@functools.cache
def _bool_fields(schema: type) -> dict[str, bool]:
    """The schema's boolean fields, each mapped to whether it may be null."""
    hints = typing.get_type_hints(schema)
    out = {}
    for f in dataclasses.fields(schema):
        hint = hints.get(f.name)
        if hint is bool:
            out[f.name] = False
        elif typing.get_origin(hint) in (typing.Union, types.UnionType) and set(typing.get_args(hint)) == {
            bool,
            type(None),
        }:
            out[f.name] = True
    return out


def check_booleans(data: dict[str, Any], schema: type, *, group: str) -> None:
    """Booleans are ``true`` or ``false``: OmegaConf would read ``no``, ``off``, ``0`` or ``"yes"`` as booleans,
    and ``resume=no`` must not mean resume. YAML's yes/no are text here too (Hydra and OmegaConf read YAML 1.2)."""
    for key, nullable in _bool_fields(schema).items():
        if key not in data:
            continue
        value = data[key]
        if isinstance(value, bool) or (value is None and nullable):
            continue
        field = field_name(group, key)
        allowed = "true, false or null" if nullable else "true or false"
        raise ConfigError(field, f"must be {allowed} (got {value!r}).", f"{field}=true or {field}=false.")


def to_dataclass(node: Any, schema: type[T], *, group: str) -> T:
    """Merge ``node`` into ``schema``; unknown keys, bad types, non-booleans for booleans raise ConfigError."""
    if dataclasses.is_dataclass(node) and isinstance(node, schema):
        return node
    data = resolved(node, field=group) if isinstance(node, DictConfig) else dict(node)
    data.pop("name", None)
    known = {f.name for f in dataclasses.fields(schema)}
    for key in data:
        if key not in known:
            allowed = ", ".join(sorted(known - {"name"})) or "(none)"
            raise ConfigError(field_name(group, key), "is not a known key.", f"use one of: {allowed}.")
    check_booleans(data, schema, group=group)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), data)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "?"
        reason = str(exc.msg).splitlines()[0] if exc.msg else type(exc).__name__
        raise ConfigError(field_name(group, key), f"has the wrong type ({reason}).") from None
    # Typed values ('nan' given as text is a float now), before a __post_init__ range check can be fooled by them.
    check_numbers(OmegaConf.to_container(merged), group=group)
    return OmegaConf.to_object(merged)


INT64 = 2**63


def check_numbers(data: dict[str, Any], *, group: str) -> None:
    """Every number is finite and fits a 64-bit integer; NaN or ±inf would train, then hang or mislead.

    Checked once here for every typed config rather than key by key in each group.
    """
    for key, value in data.items():
        field = field_name(group, key)
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
