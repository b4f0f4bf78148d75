"""The ``scenario`` group: when poisons enter training (Hong et al. §6.3–6.5, Table 3).

- ``scratch``: train on the poisoned set from random initialisation.
- ``retrain``: the paper's threat model. Pretrain on clean data for
  ``pretrain_epochs`` (cached: a whole grid pretrains once), then retrain on
  the poisoned set for ``retrain_epochs``. ``pretrain_private`` and
  ``retrain_private`` say which phases use the ``dp`` group's settings, which
  covers Table 3's four cells. Privacy accounting composes the private phases
  only.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from gsdefense.cache import StaleEntry, cache_key, cached_entry, load_tensor_entry, save_tensor_entry
from gsdefense.errors import ConfigError
from gsdefense.registry import Registry
from gsdefense.training.loop import TrainResult, train

if TYPE_CHECKING:
    from gsdefense.plan import Plan

log = logging.getLogger(__name__)


@dataclass
class ScratchConfig:
    name: str = "scratch"


@dataclass
class RetrainConfig:
    name: str = "retrain"
    pretrain_epochs: int = 20
    retrain_epochs: int = 10
    pretrain_private: bool = False
    retrain_private: bool = True


SCENARIOS: Registry[Any] = Registry("scenario")


@SCENARIOS.register("scratch", ScratchConfig)
def _scratch(cfg: ScratchConfig) -> ScratchConfig:
    return cfg


@SCENARIOS.register("retrain", RetrainConfig)
def _retrain(cfg: RetrainConfig) -> RetrainConfig:
    for field in ("pretrain_epochs", "retrain_epochs"):
        if getattr(cfg, field) <= 0:
            raise ConfigError(f"scenario.{field}", f"must be > 0 (got {getattr(cfg, field)}).")
    return cfg


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
                       seed=plan.seed, desc="pretrain", keep_accountant=True)  # fmt: skip
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
        optimizer_cfg=dataclasses.replace(plan.optimizer, epochs=scenario.retrain_epochs),
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


def epsilon_note(plan: Plan) -> str | None:
    """Why epsilon is what it is, when that is not plain DP-SGD on every phase."""
    if plan.dp is None:
        return "no DP: vanilla training has no privacy guarantee"
    if plan.dp.name == "adaptive":
        from gsdefense.training.adaptive import EPSILON_NOTE

        return EPSILON_NOTE
    if plan.scenario.name == "retrain":
        private = [p for p in ("pretrain", "retrain") if getattr(plan.scenario, f"{p}_private")]
        if not private:
            return "no DP phase: pretrain_private and retrain_private are both false"
        return f"epsilon covers the private phase(s) only: {', '.join(private)}"
    return None


@dataclass
class TrialRunner:
    """Retraining trials from one pretrained model, for targeted attacks (Poison Frogs).

    Each trial resumes the pretrained weights and retrains on the clean training
    set plus the trial's poisons, with the retrain phase's DP setting.
    """

    plan: Plan
    pre: Pretrained
    dp: Any
    acc_ref: float | None
    epsilon_note: str | None = None

    @property
    def pretrained_key(self) -> str:
        return self.pre.key

    def pretrained_model(self) -> nn.Module:
        model = self.plan.build_model()
        model.load_state_dict(self.pre.state)
        return model.eval()

    def retrain(
        self, x_extra: torch.Tensor, y_extra: torch.Tensor, *, evaluate=None, desc: str = "trial"
    ) -> TrainResult:
        data = self.plan.data
        x = torch.cat([data.x_train, x_extra.to(data.x_train.device)])
        y = torch.cat([data.y_train, y_extra.to(data.y_train.device)])
        optimizer = dataclasses.replace(self.plan.optimizer, epochs=self.plan.scenario.retrain_epochs)
        history = self.pre.accountant_history if self.dp else None  # epsilon covers both private phases
        return train(self.pretrained_model().train(), x, y, optimizer_cfg=optimizer, dp=self.dp, seed=self.plan.seed,
                     evaluate=evaluate, desc=desc, accountant_history=history)  # fmt: skip
