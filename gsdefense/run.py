"""``run(cfg)``: one poisoning × defense experiment, from config to metrics.json.

1. Validate every config node and load the data (bad input fails here, before
   any training).
2. Poison the training set; train with or without DP-SGD.
3. Train (or load from the shared cache) the clean references that RAD needs.
4. Write ``history.csv`` then ``metrics.json`` atomically into ``output_dir``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from gsdefense import metrics as M
from gsdefense.attacks import ATTACKS, Attack, RunContext, build_attack
from gsdefense.cache import cache_key, cached_json
from gsdefense.data import DATASETS, load_dataset
from gsdefense.data.bundle import DataBundle
from gsdefense.defenses import Defense, build_defense
from gsdefense.errors import ConfigError
from gsdefense.io import atomic_write, write_csv, write_json
from gsdefense.models import MODELS, build_model
from gsdefense.telemetry import GradientProbe, TelemetryConfig, original_exports, telemetry_config
from gsdefense.training.checkpoint import Checkpointer, checkpoint_config
from gsdefense.training.dp import DPSGDConfig, dp_config
from gsdefense.training.loop import TrainResult, train
from gsdefense.training.optim import OPTIMIZERS, check_schedule

log = logging.getLogger(__name__)

TOP_LEVEL_KEYS = {"dataset", "model", "attack", "defense", "optimizer", "dp", "telemetry", "seed", "device"}
TOP_LEVEL_KEYS |= {"cache_dir", "save_model", "resume", "checkpoint"}
# Keys that say where or how a run executes, not what it computes: left out of run_id.
NOT_IN_RUN_ID = {"hydra", "cache_dir", "save_model", "resume", "checkpoint"}
NO_DP_NOTE = "no DP: vanilla training has no privacy guarantee"


@dataclass
class Plan:
    """Everything a run needs, validated."""

    data: DataBundle
    attack: Attack
    defense: Defense
    context: RunContext
    model_node: Any
    optimizer: Any
    dp: DPSGDConfig | None
    seed: int
    device: torch.device
    cache_dir: Path
    spec: dict[str, Any]  # resolved config groups, the basis of cache keys
    telemetry: TelemetryConfig


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


def prepare(cfg: DictConfig) -> Plan:
    """Validate ``cfg`` and load data; raises ConfigError before any training."""
    unknown = set(cfg.keys()) - TOP_LEVEL_KEYS - {"hydra"}
    if unknown:
        raise ConfigError(", ".join(sorted(unknown)), "is not a known top-level key.", f"use {sorted(TOP_LEVEL_KEYS)}.")
    seed = cfg.seed
    if not isinstance(seed, int) or seed < 0:
        raise ConfigError("seed", f"must be a non-negative integer (got {seed!r}).")
    device = resolve_device(str(cfg.device))
    optimizer = OPTIMIZERS.config(cfg.optimizer)
    check_schedule(optimizer)
    dp = dp_config(cfg.dp)
    telemetry = telemetry_config(cfg.telemetry)
    ATTACKS.config(cfg.attack)
    MODELS.config(cfg.model)
    dataset_cfg = DATASETS.config(cfg.dataset)
    data = load_dataset(cfg.dataset, seed=seed).to(device)
    attack = build_attack(cfg.attack)
    cache_dir = Path(str(cfg.cache_dir)).expanduser()
    context = RunContext(
        seed=seed,
        device=device,
        cache_dir=cache_dir,
        model_name=cfg.model.name,
        model_node=cfg.model,
        optimizer=optimizer,
    )
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
    plan = Plan(data, attack, defense, context, cfg.model, optimizer, dp, seed, device, cache_dir, spec, telemetry)
    _build(plan)  # a model that does not fit the data fails now, not after the reference trains
    return plan


def _build(plan: Plan) -> torch.nn.Module:
    torch.manual_seed(plan.seed)  # same init for the run and its references
    data = plan.data
    model = build_model(
        plan.model_node, input_shape=data.input_shape, num_classes=data.num_classes, mean=data.mean, std=data.std
    )
    return model.to(plan.device)


def _train(plan: Plan, x, y, *, dp: DPSGDConfig | None, desc: str, **hooks) -> TrainResult:
    """Train a freshly initialised model; ``hooks``: evaluate, probe, checkpointer."""
    return train(_build(plan), x, y, optimizer_cfg=plan.optimizer, dp=dp, seed=plan.seed, desc=desc, **hooks)


def reference_accuracy(plan: Plan, *, dp: DPSGDConfig | None) -> tuple[float | None, bool]:
    """Clean test accuracy of the same setup trained without poison (cached)."""
    spec = dict(plan.spec, dp=dataclasses.asdict(dp) if dp else None)

    def compute() -> dict:
        label = "reference" + ("-dp" if dp else "")
        result = _train(plan, plan.data.x_train, plan.data.y_train, dp=dp, desc=label)
        if result.status != "ok":
            return {"clean_acc": None, "status": result.status}
        acc = M.accuracy(M.predict(result.model, plan.data.x_test), plan.data.y_test)
        return {"clean_acc": acc, "status": "ok"}

    entry, hit = cached_json(plan.cache_dir, "reference", spec, compute)
    log.info("reference%s clean_acc=%s (%s)", "-dp" if dp else "", entry["clean_acc"], "cached" if hit else "trained")
    return entry["clean_acc"], hit


def completed(output_dir: Path, ident: str) -> dict[str, Any] | None:
    """The metrics of a finished, successful run of this exact config in ``output_dir``, if any."""
    path = output_dir / "metrics.json"
    try:
        metrics = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return metrics if metrics.get("status") == "ok" and metrics.get("run_id") == ident else None


def run(cfg: DictConfig, *, output_dir: str | Path) -> dict[str, Any]:
    """Run one experiment; returns (and writes) its metrics.

    With ``resume: true`` a run whose complete ``status: ok`` metrics.json (same
    run_id) is already in ``output_dir`` is skipped, and an interrupted run
    continues from its last checkpoint.
    """
    start = time.perf_counter()
    output_dir = Path(output_dir)
    ident = run_id(cfg)
    if cfg.resume and (done := completed(output_dir, ident)) is not None:
        log.info("run %s is already complete in %s; skipping (resume=false recomputes)", ident, output_dir)
        return done
    checkpointer = None
    checkpoint = checkpoint_config(cfg.checkpoint)
    if checkpoint.every_n_epochs:
        checkpointer = Checkpointer(output_dir / "checkpoint.pt", every_n_epochs=checkpoint.every_n_epochs, tag=ident)
        if not cfg.resume:
            checkpointer.clear()
    plan = prepare(cfg)
    data = plan.data
    gen = torch.Generator().manual_seed(plan.seed)
    poisoned = plan.attack.poison(data, generator=gen, context=plan.context)
    poisoned, defense_info = plan.defense.apply(poisoned, data=data)
    triggered = M.backdoor_test_set(plan.attack, data.x_test, data.y_test) if plan.attack.is_backdoor else None

    def evaluate(model: torch.nn.Module) -> dict:
        return M.evaluate(model, data.x_test, data.y_test, attack=plan.attack, triggered=triggered)

    probe = None
    if plan.telemetry.enabled:
        probe = GradientProbe(
            plan.telemetry,
            x=poisoned.x,
            y=poisoned.y,
            is_poison=poisoned.is_poison,
            clip=plan.dp.clip if plan.dp else None,
            noise=plan.dp.noise if plan.dp else None,
        )
    result = _train(
        plan,
        poisoned.x,
        poisoned.y,
        dp=plan.dp,
        evaluate=evaluate,
        probe=probe,
        checkpointer=checkpointer,
        desc="train",
    )
    acc_ref, _ = reference_accuracy(plan, dp=None)
    acc_ref_dp, _ = reference_accuracy(plan, dp=plan.dp) if plan.dp else (acc_ref, True)

    final = result.history[-1] if result.status == "ok" else {}
    model, clean = result.model, ~poisoned.is_poison
    ok = result.status == "ok"
    metrics: dict[str, Any] = {
        "run_id": ident,
        "status": result.status,
        "error": None if ok else f"loss became non-finite at epoch {result.diverged_epoch}",
        "diverged_epoch": result.diverged_epoch,
        "clean_acc": final.get("clean_acc"),
        "best_clean_acc": max((r["clean_acc"] for r in result.history if "clean_acc" in r), default=None),
        "target_class_acc": final.get("target_class_acc"),
        "asr": final.get("asr"),
        "robust_acc": final.get("robust_acc"),
        "rad": M.rad(acc_ref, final.get("clean_acc")),
        "rad_dp_matched": M.rad(acc_ref_dp, final.get("clean_acc")),
        "acc_ref": acc_ref,
        "acc_ref_dp_matched": acc_ref_dp,
        "train_loss": M.mean_loss(model, poisoned.x, poisoned.y) if ok else None,
        "clean_train_loss": M.mean_loss(model, poisoned.x[clean], poisoned.y[clean]) if ok else None,
        "poison_train_loss": M.mean_loss(model, poisoned.x[~clean], poisoned.y[~clean]) if ok else None,
        "epsilon": result.epsilon,
        "epsilon_note": None if plan.dp else NO_DP_NOTE,
        "delta": plan.dp.delta if plan.dp else None,
        "n_train": len(poisoned.y),
        "n_poison": poisoned.n_poison,
        "poison_ratio": poisoned.n_poison / len(poisoned.y),
        **defense_info,
        **plan.attack.extra_metrics(),
        "seconds": time.perf_counter() - start,
        "device": str(plan.device),
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    if cfg.save_model:
        atomic_write(output_dir / "model.pt", lambda fh: torch.save(model.state_dict(), fh), mode="wb")
    write_csv(output_dir / "history.csv", result.history)
    if probe is not None:
        write_original_exports(output_dir, result)
    write_json(output_dir / "metrics.json", metrics)
    if checkpointer is not None:
        checkpointer.clear()  # the run is complete; model.pt keeps the weights
    return metrics


def write_original_exports(output_dir: Path, result: TrainResult) -> None:
    """Telemetry in the original tool's formats, beside history.csv (and per-step rows if asked)."""
    mextracts, aextracts = original_exports(result.history)
    if mextracts:
        atomic_write(output_dir / "mextracts_epoch.csv", lambda fh: fh.write("".join(f"{r}\n" for r in mextracts)))
        atomic_write(output_dir / "aextracts_epoch.csv", lambda fh: fh.write("".join(f"{r}\n" for r in aextracts)))
    if result.step_telemetry:
        write_csv(output_dir / "telemetry.csv", result.step_telemetry)


def run_id(cfg: DictConfig) -> str:
    """A deterministic id: the hash of the resolved config, without paths and launcher settings."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    return cache_key("run", {k: v for k, v in resolved.items() if k not in NOT_IN_RUN_ID})


def failure_metrics(error: BaseException, cfg: DictConfig | None = None) -> dict[str, Any]:
    """The metrics.json of a run that did not finish: status failed, and why."""
    ident = None
    if cfg is not None:
        try:
            ident = run_id(cfg)
        except Exception:  # noqa: BLE001 - an unresolvable config still deserves its failure record
            ident = None
    return {"run_id": ident, "status": "failed", "error": f"{type(error).__name__}: {error}"}
