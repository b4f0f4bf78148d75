"""What a run *is*: its typed, validated config, and the ids and seeds derived from it.

Every id and seed hashes the typed config (each group's dataclass after
validation), never the raw YAML, so spellings of one value (``dp.noise=1`` and
``1.0``, ``lr=1e-2`` and ``0.01``) are one run with the same noise and the same
numbers. Invalid configs raise ``ConfigError`` here, before anything is written.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig

from gsdefense.cache import cache_key, canonical, noise_seed
from gsdefense.errors import ConfigError
from gsdefense.registry import resolved
from gsdefense.settings import MAX_SEED, check_seed, settings_config

GROUPS = ("dataset", "model", "attack", "defense", "optimizer", "dp", "scenario", "detector")
SETTINGS = (
    "telemetry", "seed", "device", "threads", "cache_dir", "save_model", "resume", "checkpoint", "rad_definition",
    "reference",
)  # fmt: skip
TOP_LEVEL_KEYS = frozenset(GROUPS) | frozenset(SETTINGS)
# Where data lives, not what it is: a run does not change when its files move (and an analysis machine whose
# GSDEFENSE_DATA_DIR / GSDEFENSE_PURCHASE100 differ still recognises it).
DATA_LOCATION = ("data_dir", "download", "path")
__all__ = ["MAX_SEED", "check_seed"]  # re-exported from gsdefense.settings
# dp keys that change how an identical update is computed: never part of an id or a seed
EXECUTION = ("fixed_shape",)
# telemetry keys that only format files (mextracts' header row): never part of an id
TELEMETRY_FORMAT = ("original_format",)
# dp keys folded into others by validation (noise_std into noise): never part of an id, so that
# dp.noise=0.25 dp.clip=4 and dp.noise_std=1 dp.clip=4 are one run
FOLDED = ("noise_std",)


def check_top_level(cfg: DictConfig | dict) -> None:
    unknown = set(cfg.keys()) - TOP_LEVEL_KEYS - {"hydra"}
    if unknown:
        raise ConfigError(", ".join(sorted(unknown)), "is not a known top-level key.", f"use {sorted(TOP_LEVEL_KEYS)}.")


def validators() -> dict[str, Callable[[Any], Any]]:
    """Each config group's validator: its node -> its typed, checked dataclass (None for ``dp=none``)."""
    from gsdefense.attacks import ATTACKS
    from gsdefense.data import DATASETS
    from gsdefense.defenses import DEFENSES
    from gsdefense.detectors import detector_config
    from gsdefense.models import MODELS
    from gsdefense.scenario import scenario_config
    from gsdefense.training.dp import dp_config
    from gsdefense.training.optim import optimizer_config

    return {
        "dataset": DATASETS.config,
        "model": MODELS.config,
        "attack": ATTACKS.config,
        "defense": DEFENSES.config,
        "optimizer": optimizer_config,
        "dp": dp_config,
        "scenario": scenario_config,
        "detector": detector_config,
    }


Memo = dict[tuple[str, str], Any]  # (group, its resolved node as JSON) -> typed config or the ConfigError it raised


def _memoized(memo: Memo | None, group: str, plain: Any, validate: Callable[[], Any]) -> Any:
    """``validate()``, remembered in ``memo`` under the resolved content it depends on (its error too)."""
    if memo is None:
        return validate()
    key = (group, canonical({"node": plain}))
    if key not in memo:
        try:
            memo[key] = validate()
        except ConfigError as err:
            memo[key] = err
    if isinstance(memo[key], ConfigError):
        raise memo[key]
    return memo[key]


def plain_config(cfg: DictConfig | dict) -> dict[str, Any]:
    """A composed config as plain, resolved Python (an interpolation that cannot resolve is a ConfigError)."""
    return cfg if isinstance(cfg, dict) else resolved(cfg)


def typed_groups(cfg: DictConfig | dict, *, memo: Memo | None = None) -> dict[str, Any]:
    """Each config group's validated dataclass (raises ConfigError on bad input). ``cfg``: composed, or already
    plain (``plain_config``), as a sweep's up-front check builds each job's.

    ``memo`` remembers each group's verdict by its resolved content: a sweep validates 200 jobs that share a
    handful of distinct nodes per group at the cost of those few.
    """
    plain = plain_config(cfg)
    check_top_level(plain)
    out = {}
    for group, validate in validators().items():
        if group not in plain:
            raise ConfigError(group, "is missing from the config.", f"choose an option with {group}=<name>.")
        out[group] = _memoized(memo, group, plain[group], lambda v=validate, g=group: v(plain[g]))
    return out


def as_dict(typed: Any) -> dict[str, Any] | None:
    """A typed group as a plain dict (None for ``dp=none``); the canonical form ids hash."""
    return dataclasses.asdict(typed) if typed is not None else None


def dp_spec(dp: Any) -> dict[str, Any] | None:
    """A dp config as ids, cache keys and seeds see it: without ``EXECUTION`` keys (how, not what, is computed)
    and ``FOLDED`` ones (validation turned ``noise_std`` into the multiplier ``noise``)."""
    out = as_dict(dp)
    return None if out is None else {k: v for k, v in out.items() if k not in EXECUTION + FOLDED}


def _groups_dict(typed: dict[str, Any]) -> dict[str, Any]:
    out = {k: as_dict(v) for k, v in typed.items()}
    out["dataset"] = {k: v for k, v in out["dataset"].items() if k not in DATA_LOCATION}
    out["dp"] = dp_spec(typed["dp"]) or {"name": "none"}
    return out


def identity(cfg: DictConfig | dict, *, memo: Memo | None = None) -> dict[str, Any]:
    """Everything that determines a run's outputs, in canonical typed form; also checks the settings that do not
    (``resume``, ``save_model``, ``checkpoint`` …): this is every check a run makes before it loads data."""
    from gsdefense.telemetry import telemetry_config
    from gsdefense.training.checkpoint import checkpoint_config
    from gsdefense.training.optim import reference_config

    plain = plain_config(cfg)
    typed = typed_groups(plain, memo=memo)
    out = _groups_dict(typed)
    reference = reference_config(plain.get("reference"), scenario=typed["scenario"].name).overrides()
    if reference:  # rad's vanilla schedule, when it is not the run's own (which leaves every earlier id as it was)
        out["reference"] = reference
    top = {k: v for k, v in plain.items() if not isinstance(v, dict)}
    settings = _memoized(memo, "settings", top, lambda: settings_config(plain))
    telemetry_node, checkpoint_node = plain.get("telemetry") or {}, plain.get("checkpoint") or {}
    telemetry = _memoized(memo, "telemetry", telemetry_node, lambda: telemetry_config(telemetry_node))
    _memoized(memo, "checkpoint", checkpoint_node, lambda: checkpoint_config(checkpoint_node))
    out["telemetry"] = {k: v for k, v in dataclasses.asdict(telemetry).items() if k not in TELEMETRY_FORMAT}
    out["seed"] = settings.seed
    out["device"] = str(settings.device)
    return out


def run_id(cfg: DictConfig) -> str:
    """A deterministic id: the hash of the typed config, without paths and execution settings."""
    return Identity.of(cfg).run_id


def run_noise_seed(cfg: DictConfig) -> int:
    """The run's DP noise seed: a hash of what it trains (groups and seed), so every config of a grid draws
    independent noise, fused or not, while telemetry or execution settings leave it unchanged."""
    return Identity.of(cfg).noise_seed


@dataclass(frozen=True)
class Identity:
    """A run's identity, validated once: the typed config, its ``run_id`` and its DP ``noise_seed``."""

    config: dict[str, Any]
    run_id: str
    noise_seed: int

    @classmethod
    def of(cls, cfg: DictConfig, *, memo: Memo | None = None) -> Identity:
        config = identity(cfg, memo=memo)
        spec = {key: config[key] for key in (*GROUPS, "seed")}
        return cls(config=config, run_id=cache_key("run", config), noise_seed=noise_seed(cache_key("noise", spec)))
