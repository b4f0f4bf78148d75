"""Validate a composed config into a ``Plan``: everything a run needs, checked before any training."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from gsdefense.attacks import ATTACKS, Attack, RunContext, build_attack
from gsdefense.data import DATASETS, load_dataset
from gsdefense.data.bundle import DataBundle
from gsdefense.defenses import Defense, build_defense
from gsdefense.errors import ConfigError
from gsdefense.models import MODELS, build_model
from gsdefense.scenario import SCENARIOS, RetrainConfig, ScratchConfig
from gsdefense.telemetry import TelemetryConfig, telemetry_config
from gsdefense.training.adaptive import AdaptiveDPConfig
from gsdefense.training.dp import DPSGDConfig, dp_config
from gsdefense.training.optim import OPTIMIZERS, AdamConfig, SGDConfig, check_schedule

GROUPS = ("dataset", "model", "attack", "defense", "optimizer", "dp", "scenario")
SETTINGS = ("telemetry", "seed", "device", "threads", "cache_dir", "save_model", "resume", "checkpoint")
TOP_LEVEL_KEYS = set(GROUPS) | set(SETTINGS)


@dataclass
class Plan:
    data: DataBundle
    attack: Attack
    defense: Defense
    context: RunContext
    model_node: Any
    optimizer: SGDConfig | AdamConfig
    dp: DPSGDConfig | AdaptiveDPConfig | None
    scenario: ScratchConfig | RetrainConfig
    telemetry: TelemetryConfig
    seed: int
    device: torch.device
    cache_dir: Path
    spec: dict[str, Any]  # what determines a clean model (dataset, model, optimizer, seed, device): cache keys

    def build_model(self) -> torch.nn.Module:
        """A freshly initialised model; the same seed gives the run and its references the same init."""
        torch.manual_seed(self.seed)
        data = self.data
        model = build_model(
            self.model_node, input_shape=data.input_shape, num_classes=data.num_classes, mean=data.mean, std=data.std
        )
        return model.to(self.device)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError("device", f"unknown device {name!r}.", "use auto, cpu, cuda or cuda:N.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", "CUDA was requested but is not available here.", "use device=auto or device=cpu.")
    return device


def prepare(cfg: DictConfig, *, data: DataBundle | None = None) -> Plan:
    """Validate ``cfg`` and load data; raises ConfigError before any training.

    ``data``: the already loaded dataset of another job with the same dataset, seed and device (fused groups).
    """
    unknown = set(cfg.keys()) - TOP_LEVEL_KEYS - {"hydra"}
    if unknown:
        raise ConfigError(", ".join(sorted(unknown)), "is not a known top-level key.", f"use {sorted(TOP_LEVEL_KEYS)}.")
    seed = cfg.seed
    if not isinstance(seed, int) or seed < 0:
        raise ConfigError("seed", f"must be a non-negative integer (got {seed!r}).")
    device = resolve_device(str(cfg.device))
    threads = cfg.threads
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ConfigError("threads", f"must be a positive integer or null (got {threads!r}).", "use threads=1.")
    optimizer = OPTIMIZERS.config(cfg.optimizer)
    check_schedule(optimizer)
    dp = dp_config(cfg.dp)
    scenario = SCENARIOS.builder(cfg.scenario)(SCENARIOS.config(cfg.scenario))
    telemetry = telemetry_config(cfg.telemetry)
    ATTACKS.config(cfg.attack)
    MODELS.config(cfg.model)
    dataset_cfg = DATASETS.config(cfg.dataset)
    data = data if data is not None else load_dataset(cfg.dataset, seed=seed).to(device)
    cache_dir = Path(str(cfg.cache_dir)).expanduser()
    context = RunContext(
        seed=seed,
        device=device,
        cache_dir=cache_dir,
        model_name=cfg.model.name,
        model_node=cfg.model,
        optimizer=optimizer,
        scenario=scenario.name,
    )
    attack = build_attack(cfg.attack)
    attack.validate(data, context=context)
    defense = build_defense(cfg.defense)
    defense.validate(data, context=context)
    spec = {
        "dataset": dataclasses.asdict(dataset_cfg),
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "optimizer": dataclasses.asdict(optimizer),
        "seed": seed,
        "device": device.type,
    }
    plan = Plan(
        data=data,
        attack=attack,
        defense=defense,
        context=context,
        model_node=cfg.model,
        optimizer=optimizer,
        dp=dp,
        scenario=scenario,
        telemetry=telemetry,
        seed=seed,
        device=device,
        cache_dir=cache_dir,
        spec=spec,
    )
    plan.build_model()  # a model that does not fit the data fails now, not after a reference trains
    return plan
