"""Per-epoch checkpoints, so a killed or preempted run continues where it stopped.

A checkpoint holds everything the next epoch depends on: weights, optimizer
state, the privacy accountant's history (so no step is counted twice), the
generator states of batch sampling, DP noise and telemetry noise, and the
history so far. Resuming therefore gives bit-identical results on CPU.
It is written atomically and tagged with the run's id, so a checkpoint left by
a different config is never resumed.

A checkpoint is validated like a cache entry before it is used (``check_state``): one whose epoch lies outside
the schedule, whose history is shorter than its epoch, whose tensors do not fit the model or optimizer, or which
lacks a key, a generator state or the accountant's history is discarded with a warning and training starts over
— never a run "ok" after half its epochs, or with an ε that misses steps. A checkpoint that cannot be written
(a full disk) is a warning too: training goes on, it only loses the chance to resume.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gsdefense.cache import StaleEntry, check_tensors
from gsdefense.errors import ConfigError, one_line
from gsdefense.io import atomic_write, os_error_in
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


REQUIRED = ("epoch", "step", "seconds", "model", "optimizer", "accountant", "history", "step_telemetry", "epsilon")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_state(
    state: Any,
    *,
    model: torch.nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    accountant: Any = None,
    generators: Mapping[str, torch.Generator | None] | None = None,
    epochs: int | None = None,
) -> None:
    """Raise StaleEntry unless ``state`` can continue this training: every key, an epoch in ``[1, epochs]`` with its
    history, tensors shaped like ``model``'s and ``optimizer``'s, the accountant's steps, each generator's state."""
    if not isinstance(state, dict):
        raise StaleEntry("it is not a dict")
    missing = [k for k in REQUIRED if k not in state]
    missing += [k for k, gen in (generators or {}).items() if gen is not None and k not in state]
    if missing:
        raise StaleEntry(f"it lacks {', '.join(missing)}")
    epoch, step, history = state["epoch"], state["step"], state["history"]
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1 or (epochs is not None and epoch > epochs):
        raise StaleEntry(f"its epoch {epoch!r} is outside this schedule (1..{epochs})")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0 or not _number(state["seconds"]):
        raise StaleEntry("its step or seconds are not counts")
    if not isinstance(history, list) or len(history) < epoch or not all(isinstance(r, dict) for r in history):
        raise StaleEntry(f"its history has {len(history) if isinstance(history, list) else 'no'} rows for {epoch} "
                         "epochs")  # fmt: skip
    if history[-1].get("epoch", epoch) != epoch:
        raise StaleEntry(f"its history ends at epoch {history[-1].get('epoch')}, not {epoch}")
    if state["epsilon"] is not None and not _number(state["epsilon"]):
        raise StaleEntry("its epsilon is not a number")
    weights = check_tensors(state["model"])
    if model is not None:
        _same_shapes(weights, {k: v.shape for k, v in model.state_dict().items()}, what="model")
    if optimizer is not None:
        _check_optimizer(state["optimizer"], optimizer)
        if hasattr(optimizer, "load_extra_state") and not isinstance(state.get("optimizer_extra"), dict):
            raise StaleEntry("it lacks the DP optimizer's extra state")
    if accountant is not None:
        _check_accountant(state["accountant"], accountant, step=step)
    for name, gen in (generators or {}).items():
        saved = state.get(name)
        if gen is not None and not (isinstance(saved, torch.Tensor) and saved.dtype == torch.uint8
                                    and saved.shape == gen.get_state().shape):  # fmt: skip
            raise StaleEntry(f"its {name} generator state does not fit")


def _same_shapes(saved: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Size], *, what: str) -> None:
    if set(saved) != set(expected):
        raise StaleEntry(f"its {what} tensors are not this {what}'s ({sorted(set(saved) ^ set(expected))[:3]} …)")
    wrong = [k for k, v in saved.items() if v.shape != expected[k]]
    if wrong:
        raise StaleEntry(f"its {what} tensor {wrong[0]} has shape {tuple(saved[wrong[0]].shape)}, not "
                         f"{tuple(expected[wrong[0]])}")  # fmt: skip


def _check_optimizer(saved: Any, optimizer: torch.optim.Optimizer) -> None:
    """The saved optimizer state has this optimizer's groups, and each per-parameter tensor its parameter's shape."""
    if not isinstance(saved, dict) or not isinstance(saved.get("param_groups"), list) or "state" not in saved:
        raise StaleEntry("its optimizer state is not an optimizer's state_dict")
    optimizer = getattr(optimizer, "original_optimizer", optimizer)  # DP wrappers keep the parameters' optimizer
    current = optimizer.state_dict()["param_groups"]
    sizes = [len(g.get("params", [])) for g in saved["param_groups"] if isinstance(g, dict)]
    if sizes != [len(g["params"]) for g in current]:
        raise StaleEntry("its optimizer has other parameter groups")
    params = [p for group in optimizer.param_groups for p in group["params"]]
    index = {i: params[n] for n, i in enumerate(i for g in current for i in g["params"])}
    for key, entry in (saved["state"] or {}).items():
        if key not in index or not isinstance(entry, dict):
            raise StaleEntry(f"its optimizer state names an unknown parameter {key!r}")
        for name, value in entry.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != index[key].shape:
                raise StaleEntry(f"its optimizer's {name} for parameter {key} has the wrong shape")


def _check_accountant(saved: Any, accountant: Any, *, step: int) -> None:
    """The accountant's history: (σ, q, steps) triples of this mechanism, covering at least the steps taken."""
    if not isinstance(saved, dict) or saved.get("mechanism") != accountant.mechanism():
        raise StaleEntry("it lacks this run's privacy accountant state")
    history = saved.get("history")
    if not isinstance(history, list) or not all(
        isinstance(h, list | tuple) and len(h) == 3 and all(_number(v) for v in h) for h in history
    ):
        raise StaleEntry("its accountant history is not (σ, q, steps) triples")
    if sum(h[2] for h in history) < step:
        raise StaleEntry(f"its accountant counts {sum(h[2] for h in history)} steps of the {step} taken")


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
        """Write the checkpoint; a write that fails for want of space (or any OSError) is a warning, not the end
        of the run: the checkpoint only saves time, and the last good one (if any) stays in place."""
        try:
            # No fsync: the rename is atomic against a killed process; a checkpoint lost to a power cut costs time.
            atomic_write(self.path, lambda fh: torch.save({"tag": self.tag, **state}, fh), mode="wb", fsync=False)
        except Exception as err:  # noqa: BLE001 - torch.save turns a full disk into a RuntimeError
            if os_error_in(err) is None:
                raise
            log.warning("could not write checkpoint %s (%s); training goes on without it", self.path, one_line(err))
        self._last = time.monotonic()

    def load(self, **expected: Any) -> dict[str, Any] | None:
        """The checkpoint, if it exists, is this config's and passes ``check_state(state, **expected)``;
        otherwise None (and a checkpoint that cannot be used is deleted, with a warning)."""
        if not self.path.exists():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - a damaged checkpoint means starting over, not crashing
            return self._discard(f"it is unreadable ({one_line(err)})")
        if not isinstance(state, dict) or state.get("tag") != self.tag:
            return self._discard("it belongs to a different config")
        try:
            check_state(state, **expected)
        except StaleEntry as err:
            return self._discard(str(err))
        log.info("resuming from %s after epoch %d", self.path, state["epoch"])
        return state

    def _discard(self, why: str) -> None:
        log.warning("ignoring checkpoint %s: %s; training starts over", self.path, why)
        with contextlib.suppress(OSError):  # the next save replaces it
            self.clear()
        return None

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
