"""Per-epoch checkpoints, so a killed or preempted run continues where it stopped.

A checkpoint holds everything the next epoch depends on: weights, optimizer
state, the privacy accountant's history (so no step is counted twice), the
generator states of batch sampling, DP noise and telemetry noise, and the
history so far. Resuming therefore gives bit-identical results on CPU.
It is written atomically and tagged with the run's id, so a checkpoint left by
a different config is never resumed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gsdefense.errors import ConfigError
from gsdefense.io import atomic_write
from gsdefense.registry import to_dataclass

log = logging.getLogger(__name__)


@dataclass
class CheckpointConfig:
    every_n_epochs: int = 1  # 0 turns checkpoints off


def checkpoint_config(node) -> CheckpointConfig:
    cfg = to_dataclass(node, CheckpointConfig, group="checkpoint")
    if cfg.every_n_epochs < 0:
        raise ConfigError("checkpoint.every_n_epochs", f"must be >= 0 (got {cfg.every_n_epochs}).", "0 disables.")
    return cfg


class Checkpointer:
    def __init__(self, path: str | Path, *, every_n_epochs: int, tag: str) -> None:
        self.path, self.every, self.tag = Path(path), every_n_epochs, tag

    def due(self, epoch: int) -> bool:
        return self.every > 0 and epoch % self.every == 0

    def save(self, state: dict[str, Any]) -> None:
        atomic_write(self.path, lambda fh: torch.save({"tag": self.tag, **state}, fh), mode="wb")

    def load(self) -> dict[str, Any] | None:
        if not self.path.exists():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - a damaged checkpoint means starting over, not crashing
            log.warning("ignoring unreadable checkpoint %s (%s)", self.path, err)
            return None
        if state.get("tag") != self.tag:
            log.warning("ignoring checkpoint %s: it belongs to a different config", self.path)
            return None
        log.info("resuming from %s after epoch %d", self.path, state["epoch"])
        return state

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
