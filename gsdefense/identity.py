"""What a run *is*: its typed, validated config, and the ids and seeds derived from it.

Every id and seed hashes the typed config (each group's dataclass after
validation), never the raw YAML, so spellings of one value (``dp.noise=1`` and
``1.0``, ``lr=1e-2`` and ``0.01``) are one run with the same noise and the same
numbers. Invalid configs raise ``ConfigError`` here, before anything is written.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig

from gsdefense.cache import cache_key, noise_seed
from gsdefense.errors import ConfigError

GROUPS = ("dataset", "model", "attack", "defense", "optimizer", "dp", "scenario", "detector")
SETTINGS = (
    "telemetry", "seed", "device", "threads", "cache_dir", "save_model", "resume", "checkpoint", "rad_definition",
    "reference",
)  # fmt: skip
TOP_LEVEL_KEYS = frozenset(GROUPS) | frozenset(SETTINGS)
# Where data lives, not what it is: a run does not change when its files move (and an analysis machine whose
# GSDEFENSE_DATA_DIR / GSDEFENSE_PURCHASE100 differ still recognises it).
DATA_LOCATION = ("data_dir", "download", "path")
MAX_SEED = 2**32 - 1
# dp keys that change how an identical update is computed: never part of an id or a seed
EXECUTION = ("fixed_shape",)
# telemetry keys that only format files (mextracts' header row): never part of an id
TELEMETRY_FORMAT = ("original_format",)
# dp keys folded into others by validation (noise_std into noise): never part of an id, so that
# dp.noise=0.25 dp.clip=4 and dp.noise_std=1 dp.clip=4 are one run
FOLDED = ("noise_std",)


def check_seed(value: Any, *, field: str) -> int:
    """A seed is an integer in [0, 2³²−1] (numpy's and every generator's range)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        raise ConfigError(field, f"must be an integer in [0, {MAX_SEED}] (got {value!r}).", f"e.g. {field}=0.")
    return value


def check_top_level(cfg: DictConfig) -> None:
    unknown = set(cfg.keys()) - TOP_LEVEL_KEYS - {"hydra"}
    if unknown:
        raise ConfigError(", ".join(sorted(unknown)), "is not a known top-level key.", f"use {sorted(TOP_LEVEL_KEYS)}.")


def typed_groups(cfg: DictConfig) -> dict[str, Any]:
    """Each config group's validated dataclass (raises ConfigError on bad input)."""
    from gsdefense.attacks import ATTACKS
    from gsdefense.data import DATASETS
    from gsdefense.defenses import DEFENSES
    from gsdefense.detectors import detector_config
    from gsdefense.models import MODELS
    from gsdefense.scenario import scenario_config
    from gsdefense.training.dp import dp_config
    from gsdefense.training.optim import optimizer_config

    check_top_level(cfg)
    return {
        "dataset": DATASETS.config(cfg.dataset),
        "model": MODELS.config(cfg.model),
        "attack": ATTACKS.config(cfg.attack),
        "defense": DEFENSES.config(cfg.defense),
        "optimizer": optimizer_config(cfg.optimizer),
        "dp": dp_config(cfg.dp),
        "scenario": scenario_config(cfg.scenario),
        "detector": detector_config(cfg.detector),
    }


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


def identity(cfg: DictConfig) -> dict[str, Any]:
    """Everything that determines a run's outputs, in canonical typed form."""
    from gsdefense.telemetry import telemetry_config
    from gsdefense.training.optim import reference_config

    typed = typed_groups(cfg)
    out = _groups_dict(typed)
    reference = reference_config(cfg.get("reference"), scenario=typed["scenario"].name).overrides()
    if reference:  # rad's vanilla schedule, when it is not the run's own (which leaves every earlier id as it was)
        out["reference"] = reference
    telemetry = dataclasses.asdict(telemetry_config(cfg.telemetry))
    out["telemetry"] = {k: v for k, v in telemetry.items() if k not in TELEMETRY_FORMAT}
    out["seed"] = check_seed(cfg.seed, field="seed")
    out["device"] = str(cfg.device)
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
    def of(cls, cfg: DictConfig) -> Identity:
        config = identity(cfg)
        spec = {key: config[key] for key in (*GROUPS, "seed")}
        return cls(config=config, run_id=cache_key("run", config), noise_seed=noise_seed(cache_key("noise", spec)))
