"""The top-level settings of ``conf/config.yaml`` (seed, device, resume …), typed like every config group.

``resume=no`` or ``save_model=maybe`` would otherwise be read as true by ``bool(...)``: each key has a type, and
a value of another type is a one-line ConfigError before anything runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gsdefense.errors import ConfigError
from gsdefense.registry import to_dataclass

RAD_DEFINITIONS = ("final", "best", "early_stop")  # which RAD the figures plot: rad, rad_best, rad_early_stop
MAX_SEED = 2**32 - 1


@dataclass
class Settings:
    seed: int = 0
    device: str = "auto"
    threads: int | None = 1
    cache_dir: str = ".cache/gsdefense"
    save_model: bool = True
    rad_definition: str = "final"
    resume: bool = True


def check_seed(value: Any, *, field: str) -> int:
    """A seed is an integer in [0, 2³²−1] (numpy's and every generator's range)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        raise ConfigError(field, f"must be an integer in [0, {MAX_SEED}] (got {value!r}).", f"e.g. {field}=0.")
    return value


def check_device_name(name: str) -> None:
    """``auto`` or a name torch can parse (``cpu``, ``cuda``, ``cuda:1`` …); whether it exists is checked by the run
    on the machine that runs it."""
    if name == "auto":
        return
    import torch

    try:
        torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError("device", f"unknown device {name!r}.", "use auto, cpu, cuda or cuda:N.") from None


def settings_config(plain: dict[str, Any]) -> Settings:
    """The validated top-level settings from a resolved config (``registry.resolved``)."""
    data = {key: plain[key] for key in Settings.__dataclass_fields__ if key in plain}
    if "seed" in data:  # its own message: the range matters more than the type
        check_seed(data["seed"], field="seed")
    settings = to_dataclass(data, Settings, group="")
    if settings.threads is not None and settings.threads < 1:
        raise ConfigError("threads", f"must be a positive integer or null (got {settings.threads}).", "use threads=1.")
    if settings.rad_definition not in RAD_DEFINITIONS:
        raise ConfigError("rad_definition", f"unknown value {settings.rad_definition!r}.",
                          f"use one of {', '.join(RAD_DEFINITIONS)}.")  # fmt: skip
    check_device_name(settings.device)
    return settings
