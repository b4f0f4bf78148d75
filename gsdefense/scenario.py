"""The ``scenario`` group: when poisons enter training (Hong et al. §6.3–6.5, Table 3), and what ε covers.

- ``scratch``: train on the poisoned set from random initialisation.
- ``retrain``: the paper's threat model. Pretrain on clean data for
  ``pretrain_epochs`` (cached: a whole grid pretrains once), then retrain on
  the poisoned set for ``retrain_epochs``. ``pretrain_private`` and
  ``retrain_private`` say which phases use the ``dp`` group's settings, which
  covers Table 3's four cells.

Both phases see the same training set, so a model has an (ε, δ) guarantee only
when every phase was private: ``privacy_report`` reports ``epsilon: null`` with a
note naming the phase otherwise, and keeps the private phases' composed figure
as ``epsilon_private_phases`` (what Table 3 tabulates). The training itself
lives in ``gsdefense.phases``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from gsdefense.errors import ConfigError
from gsdefense.registry import Registry


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
    retrain_lr: float | None = None  # the retrain phase's learning rate; null = optimizer.lr (both phases)


SCENARIOS: Registry[Any] = Registry("scenario")


@SCENARIOS.register("scratch", ScratchConfig)
def _scratch(cfg: ScratchConfig) -> ScratchConfig:
    return cfg


@SCENARIOS.register("retrain", RetrainConfig)
def _retrain(cfg: RetrainConfig) -> RetrainConfig:
    for field in ("pretrain_epochs", "retrain_epochs"):
        if getattr(cfg, field) <= 0:
            raise ConfigError(f"scenario.{field}", f"must be > 0 (got {getattr(cfg, field)}).")
    if cfg.retrain_lr is not None and not cfg.retrain_lr > 0:
        raise ConfigError("scenario.retrain_lr", f"must be > 0 or null (got {cfg.retrain_lr}).", "null = optimizer.lr.")
    return cfg


def retrain_optimizer(optimizer, scenario: RetrainConfig):
    """The retrain phase's optimizer settings: its own epochs, and ``retrain_lr`` when set."""
    lr = scenario.retrain_lr if scenario.retrain_lr is not None else optimizer.lr
    return dataclasses.replace(optimizer, epochs=scenario.retrain_epochs, lr=lr)


def scenario_config(node) -> ScratchConfig | RetrainConfig:
    """The validated scenario settings."""
    return SCENARIOS.builder(node)(SCENARIOS.config(node))


def private_phases(scenario: ScratchConfig | RetrainConfig) -> tuple[list[str], list[str]]:
    """(phases trained with DP, phases trained without) — for ``dp`` other than none."""
    if scenario.name == "scratch":
        return ["train"], []
    phases = ("pretrain", "retrain")
    private = [p for p in phases if getattr(scenario, f"{p}_private")]
    return private, [p for p in phases if p not in private]


def privacy_report(*, dp, scenario, epsilon_private: float | None, extra_phases: tuple[str, ...] = ()) -> dict:
    """``epsilon``, ``epsilon_private_phases`` and ``epsilon_note`` for metrics.json.

    ``epsilon_private`` is the accountant's ε composed over the private phases.
    ``epsilon`` bounds the evaluated model only when every phase that saw the training
    data was private; otherwise it is null and the note names the non-private phase.
    ``extra_phases`` names further non-private phases on the training data (e.g. mitigation).
    """
    from gsdefense.training.adaptive import EPSILON_NOTE

    if dp is None:
        return {"epsilon": None, "epsilon_private_phases": None,
                "epsilon_note": "no DP: vanilla training has no privacy guarantee"}  # fmt: skip
    if dp.name == "adaptive":
        return {"epsilon": None, "epsilon_private_phases": None, "epsilon_note": EPSILON_NOTE}
    private, public = private_phases(scenario)
    public = public + list(extra_phases)
    if not private:
        note = "no private phase (scenario.pretrain_private and scenario.retrain_private are both false)"
        return {"epsilon": None, "epsilon_private_phases": None, "epsilon_note": note}
    if dp.noise == 0 or (epsilon_private is not None and not math.isfinite(epsilon_private)):
        note = "dp.noise=0: clipping without noise gives no privacy (epsilon = infinity)"
        return {"epsilon": None, "epsilon_private_phases": None, "epsilon_note": note}
    if epsilon_private is None:
        note = "no private training step was taken, so there is no epsilon to report"
        return {"epsilon": None, "epsilon_private_phases": None, "epsilon_note": note}
    if public:
        note = (
            f"the {' and '.join(public)} phase trained on the training data without DP, so the final model has no "
            f"(epsilon, delta) guarantee; epsilon_private_phases covers the {' and '.join(private)} phase only"
        )
        return {"epsilon": None, "epsilon_private_phases": epsilon_private, "epsilon_note": note}
    return {"epsilon": epsilon_private, "epsilon_private_phases": epsilon_private, "epsilon_note": None}
