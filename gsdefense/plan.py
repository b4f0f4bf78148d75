"""Validate a composed config into a ``Plan``: everything a run needs, checked before any training."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from gsdefense.attacks import Attack, RunContext, build_attack
from gsdefense.cache import check_dir
from gsdefense.data import input_map
from gsdefense.data.bundle import DataBundle
from gsdefense.data.memo import load_dataset_cached
from gsdefense.defenses import Defense, build_defense
from gsdefense.detectors import check_detector, defender_split, holds_out
from gsdefense.errors import ConfigError
from gsdefense.identity import DATA_LOCATION, as_dict, check_seed, plain_config, typed_groups
from gsdefense.models import build_model
from gsdefense.sanity import check_run
from gsdefense.scenario import RetrainConfig, ScratchConfig
from gsdefense.settings import settings_config
from gsdefense.telemetry import TelemetryConfig, telemetry_config
from gsdefense.training.adaptive import AdaptiveDPConfig
from gsdefense.training.checkpoint import checkpoint_config
from gsdefense.training.dp import DPSGDConfig
from gsdefense.training.optim import AdamConfig, ReferenceConfig, SGDConfig, reference_config


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
    detector: Any = None  # the detector group's config (gsdefense.detectors)
    defender: tuple[torch.Tensor, torch.Tensor] | None = None  # the detector's held-out clean data (x, y)
    loaded: DataBundle | None = None  # the dataset as loaded, before the defender's share was held out
    reference: ReferenceConfig = dataclasses.field(default_factory=ReferenceConfig)  # rad's vanilla schedule

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
    """Validate ``cfg``, check the cache folder and load data; raises ConfigError before any training.

    ``data``: the already loaded dataset of another job with the same dataset, seed and device (fused groups).
    """
    typed = typed_groups(cfg)
    seed = check_seed(cfg.seed, field="seed")
    device = resolve_device(str(cfg.device))
    settings_config(plain_config(cfg))  # threads, rad_definition, booleans: typed as every group
    telemetry = telemetry_config(cfg.telemetry)
    checkpoint_config(cfg.checkpoint)
    cache_dir = check_dir(str(cfg.cache_dir), field="cache_dir")
    loaded = data if data is not None else load_dataset_cached(cfg.dataset, seed=seed).to(device)
    detector = typed["detector"]
    data, defender = hold_out_defender(loaded, fraction=holds_out(detector), seed=seed)
    check_run(typed=typed, loaded=loaded, data=data, fraction=holds_out(detector))  # degenerate runs, ε computable
    optimizer = typed["optimizer"]
    context = RunContext(
        seed=seed,
        device=device,
        cache_dir=cache_dir,
        model_name=typed["model"].name,
        model_node=cfg.model,
        optimizer=optimizer,
        scenario=typed["scenario"].name,
    )
    attack = build_attack(cfg.attack)
    attack.validate(data, context=context)
    if getattr(attack, "targeted", False) and defender is not None:
        raise ConfigError(
            "detector", "inspects one trained model; poison_frogs trains one per trial.", "use detector=none."
        )
    defense = build_defense(cfg.defense)
    defense.validate(data, context=context)
    spec = {
        "dataset": {k: v for k, v in as_dict(typed["dataset"]).items() if k not in DATA_LOCATION},
        "model": as_dict(typed["model"]),
        "optimizer": as_dict(optimizer),
        "seed": seed,
        "device": device.type,
    }
    if defender is not None:  # the references train on the same reduced training set
        spec["defender_fraction"] = holds_out(detector)
    plan = Plan(
        data=data,
        attack=attack,
        defense=defense,
        context=context,
        model_node=cfg.model,
        optimizer=optimizer,
        dp=typed["dp"],
        scenario=typed["scenario"],
        telemetry=telemetry,
        seed=seed,
        device=device,
        cache_dir=cache_dir,
        spec=spec,
        detector=detector,
        defender=defender,
        loaded=loaded,
        reference=reference_config(cfg.get("reference"), scenario=typed["scenario"].name),
    )
    model = plan.build_model()  # a model that does not fit the data fails now, not after a reference trains
    check_detector(detector, num_classes=data.num_classes, n_train=len(loaded.y_train), model=model)
    return plan


def hold_out_defender(
    data: DataBundle, *, fraction: float, seed: int
) -> tuple[DataBundle, tuple[torch.Tensor, torch.Tensor] | None]:
    """The training set without the detector's share, and that share (None when the detector takes none).

    The defender's clean samples are drawn before poisoning, so neither the victim nor its clean references
    ever train on them; the input map is recomputed from what remains.
    """
    if not fraction > 0:
        return data, None
    keep, held = (i.to(data.y_train.device) for i in defender_split(len(data.y_train), fraction=fraction, seed=seed))
    x_train, y_train = data.x_train[keep], data.y_train[keep]
    norm = data.input_norm or ("none" if data.mean is None else "standardize")  # bundles built by hand carry none
    mean, std = input_map(x_train, input_norm=norm, box=data.box)
    reduced = dataclasses.replace(data, x_train=x_train, y_train=y_train, mean=mean, std=std)
    return reduced, (data.x_train[held], data.y_train[held])
