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
import time
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
    min_seconds: float = 30.0  # and no more often than this: a short run saves once, at its last epoch


def checkpoint_config(node) -> CheckpointConfig:
    cfg = to_dataclass(node, CheckpointConfig, group="checkpoint")
    if cfg.every_n_epochs < 0:
        raise ConfigError("checkpoint.every_n_epochs", f"must be >= 0 (got {cfg.every_n_epochs}).", "0 disables.")
    if not cfg.min_seconds >= 0:
        raise ConfigError(
            "checkpoint.min_seconds", f"must be >= 0 (got {cfg.min_seconds}).", "0 saves every due epoch."
        )
    return cfg


class Checkpointer:
    """Saves every ``every_n_epochs`` epochs, but at most once per ``min_seconds`` (wall clock since the last save
    or the start): writing M fused members' state every epoch of a short run costs more than the work it saves."""

    def __init__(self, path: str | Path, *, every_n_epochs: int, tag: str, min_seconds: float = 0.0) -> None:
        self.path, self.every, self.tag, self.min_seconds = Path(path), every_n_epochs, tag, min_seconds
        self._last = time.monotonic()

    def due(self, epoch: int) -> bool:
        if not (self.every > 0 and epoch % self.every == 0):
            return False
        return time.monotonic() - self._last >= self.min_seconds

    def save(self, state: dict[str, Any]) -> None:
        # No fsync: the rename is atomic against a killed process; a checkpoint lost to a power cut only costs time.
        atomic_write(self.path, lambda fh: torch.save({"tag": self.tag, **state}, fh), mode="wb", fsync=False)
        self._last = time.monotonic()

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
