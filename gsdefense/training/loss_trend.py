"""A DP run whose training loss keeps rising: a warning that names the likely cause and a schedule that trains.

DP-SGD adds noise of std σ·C to each batch's summed, clipped gradient. With the default SGD (lr 0.05, momentum
0.9, batch 64) that noise can dominate the step: a FashionMNIST MLP at C = 1, σ = 1 goes 1.02 → 1.50 → 2.04 →
2.60 in four epochs. The papers' schedules (larger batches, smaller lr, no momentum) train these models.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

log = logging.getLogger(__name__)

MIN_RISES = 2  # consecutive epoch-on-epoch increases: three epochs of rising loss
MIN_GROWTH = 0.25  # ... by at least this fraction of the loss where the rise began (DP noise near
# convergence jitters by less: the default run went 0.194 → 0.197 → 0.215, +11 %)

# (dataset, model) → the papers' schedule, in words and as overrides (shared facts about the original code).
# dataset None: any dataset with that model.
PAPER_SCHEDULES: dict[tuple[str | None, str], tuple[str, str]] = {
    ("fashion_mnist", "mlp"): (
        "Hong et al.'s FashionMNIST MLP: SGD, batch 100, 100 epochs, lr 0.04, no momentum",
        "optimizer=sgd optimizer.lr=0.04 optimizer.momentum=0 optimizer.batch_size=100 optimizer.epochs=100",
    ),
    ("fashion_mnist_3_4", "lr"): (
        "Hong et al.'s LR on FashionMNIST-3/4: Adam, batch 300, 40 epochs, lr 0.01",
        "optimizer=adam optimizer.lr=0.01 optimizer.batch_size=300 optimizer.epochs=40",
    ),
    (None, "cnn"): (
        "Hong et al.'s CNN: SGD, batch 100, 80 epochs, lr 0.01, no momentum",
        "optimizer=sgd optimizer.lr=0.01 optimizer.momentum=0 optimizer.batch_size=100 optimizer.epochs=80",
    ),
}


def rising_stretch(losses: Sequence[float | None]) -> tuple[int, int] | None:
    """(first, last) 0-based epoch indices of the longest stretch of consecutive loss increases, when it has
    ≥ MIN_RISES increases and grows by ≥ MIN_GROWTH of its first value; else None."""
    best: tuple[int, int] | None = None
    start = 0
    for i in range(1, len(losses) + 1):
        prev, cur = losses[i - 1], losses[i] if i < len(losses) else None
        if cur is not None and prev is not None and cur > prev:
            continue
        first = losses[start]
        if (
            i - 1 - start >= MIN_RISES
            and first is not None
            and losses[i - 1] - first >= MIN_GROWTH * abs(first)
            and (best is None or i - 1 - start > best[1] - best[0])
        ):
            best = (start, i - 1)
        start = i
    return best


def paper_schedule(dataset: str, model: str) -> tuple[str, str] | None:
    return PAPER_SCHEDULES.get((dataset, model)) or PAPER_SCHEDULES.get((None, model))


def loss_warnings(history: Sequence[dict[str, Any]], *, dp: Any, optimizer: Any, dataset: str, model: str) -> list[str]:
    """One warning when a DP run's per-epoch ``train_loss`` rose for several epochs in a row (else none)."""
    if dp is None or not history:
        return []
    losses = [row.get("train_loss") for row in history]
    stretch = rising_stretch(losses)
    if stretch is None:
        return []
    first, last = stretch
    path = " → ".join(f"{v:.3g}" for v in losses[first : last + 1])
    epochs = f"epochs {history[first].get('epoch', first + 1)}–{history[last].get('epoch', last + 1)}"
    momentum = getattr(optimizer, "momentum", 0.0)
    step = f"lr {optimizer.lr:g}" + (f", momentum {momentum:g}" if momentum else "")
    noise = getattr(dp, "noise", None)
    shaping = f"C = {dp.clip:g}" + (f", σ = {noise:g}" if noise is not None else "")
    text = (
        f"train loss rose for {last - first} epochs in a row ({path}, {epochs}) under {dp.name} ({shaping}): the "
        f"step ({optimizer.name}, {step}, batch {optimizer.batch_size}) is likely too large for the clipped, noised "
        f"gradient. Fix: a smaller optimizer.lr, "
        + ("optimizer.momentum=0, " if momentum else "")
        + "or a larger optimizer.batch_size"
    )
    schedule = paper_schedule(dataset, model)
    if schedule:
        text += f"; the papers' schedule ({schedule[0]}): {schedule[1]}"
    return [text]


def run_warnings(history: Sequence[dict[str, Any]], *, dp: Any, optimizer: Any, spec: dict) -> list[str]:
    """``loss_warnings`` of a run (``plan.spec`` names its dataset and model), each also logged."""
    found = loss_warnings(history, dp=dp, optimizer=optimizer, dataset=spec["dataset"]["name"],
                          model=spec["model"]["name"])  # fmt: skip
    for text in found:
        log.warning("%s", text)
    return found
