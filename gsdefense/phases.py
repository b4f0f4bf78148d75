"""Training per the scenario: pretraining (cached), ``fit`` on a training set, and retraining trials.

See ``gsdefense.scenario`` for the scenarios themselves and what ε covers.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gsdefense.attacks.base import PoisonedSet
from gsdefense.cache import StaleEntry, cache_key, cached_entry, load_tensor_entry, noise_seed, save_tensor_entry
from gsdefense.plan import Plan
from gsdefense.scenario import retrain_optimizer
from gsdefense.training.loop import TrainResult, train

log = logging.getLogger(__name__)


@dataclass
class Pretrained:
    state: dict[str, torch.Tensor]
    history: list[dict]
    accountant_history: list  # Opacus accountant history [(noise, sample_rate, steps)], empty if vanilla
    epsilon: float | None
    key: str  # identifies these weights, e.g. for caches keyed on the pretrained model


def pretrained(plan: Plan, *, dp) -> Pretrained:
    """The clean pretrained model of a retrain scenario, trained once per spec across all jobs."""
    scenario = plan.scenario
    spec = dict(plan.spec, pretrain_epochs=scenario.pretrain_epochs, dp=dataclasses.asdict(dp) if dp else None)
    spec["optimizer"] = dict(spec["optimizer"], epochs=None)  # the scenario owns the schedule
    path = plan.cache_dir / "pretrained" / f"{cache_key('pretrained', spec)}.pt"

    def compute() -> dict:
        optimizer = dataclasses.replace(plan.optimizer, epochs=scenario.pretrain_epochs)
        result = train(plan.build_model(), plan.data.x_train, plan.data.y_train, optimizer_cfg=optimizer, dp=dp,
                       seed=plan.seed, desc="pretrain", keep_accountant=True,
                       noise_seed=noise_seed(path.stem))  # fmt: skip
        if result.status != "ok":
            raise RuntimeError(f"pretraining diverged at epoch {result.diverged_epoch}; lower optimizer.lr")
        meta = {"history": result.history, "accountant": result.accountant_history, "epsilon": result.epsilon}
        return {"tensors": result.model.state_dict(), "meta": json.dumps(meta)}

    def load(p: Path) -> dict:
        entry = load_tensor_entry(p, spec)
        expected = plan.build_model().state_dict()
        if set(entry["tensors"]) != set(expected) or any(
            entry["tensors"][k].shape != v.shape for k, v in expected.items()
        ):
            raise StaleEntry("its weights do not fit this model")
        meta = json.loads(entry["meta"])
        if not isinstance(meta, dict) or not {"history", "accountant", "epsilon"} <= set(meta):
            raise StaleEntry("its metadata is incomplete")
        return entry

    def save(p: Path, entry: dict) -> None:
        save_tensor_entry(p, spec, entry["tensors"], entry["meta"])

    entry, hit = cached_entry(path, load, save, compute)
    log.info("pretrained model %s (%s)", path.name, "cached" if hit else "trained")
    meta = json.loads(entry["meta"])
    return Pretrained(
        state={k: v.to(plan.device) for k, v in entry["tensors"].items()},
        history=meta["history"],
        accountant_history=meta["accountant"],
        epsilon=meta["epsilon"],
        key=path.stem,
    )


def fit(plan: Plan, x: torch.Tensor, y: torch.Tensor, *, dp, desc: str, **hooks) -> TrainResult:
    """Train per the scenario on ``(x, y)``; ``dp`` is the DP setting of the private phases.

    ``hooks`` (evaluate, probe, checkpointer) apply to the phase that sees ``(x, y)``.
    """
    if plan.scenario.name == "scratch":
        return train(plan.build_model(), x, y, optimizer_cfg=plan.optimizer, dp=dp, seed=plan.seed, desc=desc, **hooks)
    scenario = plan.scenario
    pre = pretrained(plan, dp=dp if scenario.pretrain_private else None)
    model = plan.build_model()
    model.load_state_dict(pre.state)
    retrain_dp = dp if scenario.retrain_private else None
    result = train(
        model,
        x,
        y,
        optimizer_cfg=retrain_optimizer(plan.optimizer, scenario),
        dp=retrain_dp,
        seed=plan.seed,
        desc=desc,
        # composing with pretraining's steps makes epsilon cover every private phase
        accountant_history=pre.accountant_history if retrain_dp else None,
        **hooks,
    )
    offset = len(pre.history)
    for row in result.history:
        row["epoch"] += offset
        row["phase"] = "retrain"
    result.history = [{**row, "phase": "pretrain"} for row in pre.history] + result.history
    if retrain_dp is None:
        result.epsilon = pre.epsilon
    return result


@dataclass
class TrialRunner:
    """Retraining trials from one pretrained model, for targeted attacks (Poison Frogs).

    Each trial resumes the pretrained weights and retrains on the clean training
    set plus the trial's poisons, after the run's sanitisation ``defense`` (it sees
    the whole retraining set, as it would see any training set), with the retrain
    phase's DP setting and a DP noise stream of its own, derived from the run's
    noise seed and the trial's name.
    """

    plan: Plan
    pre: Pretrained
    dp: Any
    acc_ref: float | None
    noise_seed: int = 0
    n_removed: int = 0  # summed over trials: what the defense dropped, and how many of those were poisons
    n_poison_removed: int = 0
    n_poisons_offered: int = 0

    @property
    def pretrained_key(self) -> str:
        return self.pre.key

    def pretrained_model(self) -> nn.Module:
        model = self.plan.build_model()
        model.load_state_dict(self.pre.state)
        return model.eval()

    def trial_noise_seed(self, desc: str) -> int:
        return noise_seed(cache_key("trial", {"run": self.noise_seed, "trial": desc}))

    def retraining_set(self, x_extra: torch.Tensor, y_extra: torch.Tensor) -> tuple[PoisonedSet, dict]:
        """Clean training set + the trial's poisons, after the defense; and what the defense removed."""
        data = self.plan.data
        n = len(data.y_train)
        poisoned = PoisonedSet(
            x=torch.cat([data.x_train, x_extra.to(data.x_train.device)]),
            y=torch.cat([data.y_train, y_extra.to(data.y_train.device)]),
            is_poison=torch.arange(n + len(y_extra), device=data.y_train.device) >= n,
        )
        kept, info = self.plan.defense.apply(poisoned, data=data)
        self.n_removed += info["n_removed"]
        self.n_poison_removed += info["n_poison_removed"]
        self.n_poisons_offered += len(y_extra)
        return kept, info

    def retrain(
        self, x_extra: torch.Tensor, y_extra: torch.Tensor, *, evaluate=None, desc: str = "trial"
    ) -> TrainResult:
        kept, info = self.retraining_set(x_extra, y_extra)
        optimizer = retrain_optimizer(self.plan.optimizer, self.plan.scenario)
        history = self.pre.accountant_history if self.dp else None  # epsilon covers both private phases
        result = train(self.pretrained_model().train(), kept.x, kept.y, optimizer_cfg=optimizer, dp=self.dp,
                       seed=self.plan.seed, evaluate=evaluate, desc=desc, accountant_history=history,
                       noise_seed=self.trial_noise_seed(desc))  # fmt: skip
        result.defense_info = info
        return result

    def defense_metrics(self) -> dict[str, int]:
        return {"n_removed": self.n_removed, "n_poison_removed": self.n_poison_removed,
                "n_poisons_offered": self.n_poisons_offered}  # fmt: skip
