"""What Poison Frogs reports: per-trial tallies, per-poison clean-label evidence, and the run's summary.

Clean-label evidence, per kept poison ``p`` crafted from base ``b`` for target ``t`` (pixel space):

- ``base_distance = ‖p − b‖ / ‖t − b‖``: 0 is the base itself, 1 is as far from it as the target is;
- ``as_base``: the pretrained model still classifies ``p`` as ``base_class`` (its label).

A poison far from its base, or one the pretrained model already calls the target's class, is a mislabelled copy
of the target rather than a clean-label poison.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from gsdefense import metrics as M


def mean(values: list) -> float | None:
    """The mean of the non-None ``values``; None if there are none."""
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


@dataclasses.dataclass
class Tally:
    """Per-trial numbers summed over all targets.

    A trial stops at its first successful epoch, so a successful trial's "final" epoch is that one.
    """

    rads: list[float] = dataclasses.field(default_factory=list)  # RAD at the last epoch of every finished trial
    accs: list[float] = dataclasses.field(default_factory=list)
    epsilons: list[float] = dataclasses.field(default_factory=list)
    n_trials: int = 0
    n_diverged: int = 0
    n_epochs: int = 0  # retraining epochs run, over all trials

    def add(self, result: Any, *, acc_ref: float | None) -> None:
        self.n_trials += 1
        self.n_epochs += len(result.history)
        if result.epsilon is not None:
            self.epsilons.append(result.epsilon)
        if result.status != "ok":
            self.n_diverged += 1
            return
        acc = result.history[-1].get("clean_acc")
        if acc is not None:
            self.accs.append(acc)
        if (rad := M.rad(acc_ref, acc)) is not None:
            self.rads.append(rad)


@torch.no_grad()
def clean_label_stats(
    model: torch.nn.Module, poisons: torch.Tensor, bases: torch.Tensor, target: torch.Tensor, *, base_class: int
) -> dict[str, torch.Tensor]:
    """``base_distance``, the pretrained model's ``pred`` and ``as_base`` for each poison (rows of ``poisons``)."""
    if len(poisons) == 0:
        empty = poisons.new_zeros(0)
        return {"base_distance": empty, "pred": empty.long(), "as_base": empty.bool()}
    moved = (poisons - bases).flatten(1).norm(dim=1)
    span = (target[None] - bases).flatten(1).norm(dim=1).clamp_min(1e-12)
    pred = M.predict(model, poisons)
    return {"base_distance": moved / span, "pred": pred, "as_base": pred == base_class}


def poison_rows(target: int, base_index: torch.Tensor, crafted: dict[str, torch.Tensor], stats: dict, *, tried: int):
    """One poisons.csv row per kept poison of ``target``, in trial order (``tried``: how many the trials used)."""
    columns = {
        "base_index": base_index.tolist(),
        "feature_distance": crafted["feature_distance"].tolist(),
        "perturbation": crafted["perturbation"].tolist(),
        "base_distance": stats["base_distance"].tolist(),
        "pretrained_pred": stats["pred"].tolist(),
        "as_base": stats["as_base"].tolist(),
    }
    return [
        {"target_index": target, "rank": i + 1, **{k: v[i] for k, v in columns.items()}, "tried": i < tried}
        for i in range(len(base_index))
    ]


def summary(rows: list[dict], poisons: list[dict], tally: Tally, *, acc_ref: float | None, seconds: float) -> dict:
    """metrics.json keys of a Poison Frogs run from its targets.csv and poisons.csv rows."""
    wins = [r for r in rows if r["success"]]
    n = len(rows)
    return {
        "asr": len(wins) / n if n else None,
        "n_compromised": len(wins),
        "mean_poisons_needed": mean([r["poisons_used"] for r in wins]),
        "mean_trials_needed": mean([r["trials"] for r in wins]),
        "rad": mean(tally.rads),
        "clean_acc": mean(tally.accs),
        "acc_ref": acc_ref,
        "n_targets": n,
        "n_targets_with_poisons": sum(r["n_poisons"] > 0 for r in rows),
        "mean_poisons_crafted": mean([r["n_poisons"] for r in rows]),
        "poison_base_distance": mean([p["base_distance"] for p in poisons]),
        "poison_base_agreement": mean([float(p["as_base"]) for p in poisons]),
        "n_trials": tally.n_trials,
        "n_diverged_trials": tally.n_diverged,
        "n_trial_epochs": tally.n_epochs,
        "epsilon": max(tally.epsilons, default=None),
        "seconds_per_target": seconds / n if n else None,
    }
