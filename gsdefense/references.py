"""The clean reference models RAD compares a run against, trained once per spec and shared through the cache.

- ``rad``, ``rad_best`` (and ``acc_ref``, ``acc_ref_best``): against the clean **vanilla** reference (no poison,
  no DP) trained at the **vanilla schedule**, the run's optimizer settings with the ``reference`` node's keys
  replaced (``training.optim.ReferenceConfig``; null: the run's own). A DP run's learning rate is often not one
  a vanilla model trains well at: Hong et al.'s Purchase-100 LR trains at lr 0.08 under DP and 0.04 vanilla, and a
  reference trained at a DP lr of 0.5 sits at chance (RAD −6.6).
- ``rad_early_stop = max(0, rad_best)``: Hong's ``do_ipoisoning.py`` stops training once the best test accuracy
  reaches the vanilla baseline, so its RAD is never below 0.
- ``rad_dp_matched``, ``rad_dp_matched_best``: against a clean reference with the run's own DP settings and
  schedule, which isolates the attack from DP's utility cost.

``RAD = (acc_ref − acc) / acc_ref``; a reference's cache key holds its own schedule, so references of different
schedules never share an entry.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from gsdefense import metrics as M
from gsdefense.cache import cache_key, cached_json, noise_seed
from gsdefense.identity import as_dict, dp_spec
from gsdefense.phases import fit
from gsdefense.plan import Plan
from gsdefense.training.loop import TrainResult

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reference:
    """Clean test accuracy of a reference model: at its final epoch, and at its best epoch (Hong's code)."""

    clean_acc: float | None
    best_clean_acc: float | None


def vanilla_schedule(plan: Plan) -> Plan:
    """``plan`` at the vanilla schedule (``reference.*``); ``plan`` itself when that is the run's own."""
    changes = plan.reference.overrides()
    if not changes:
        return plan
    optimizer = dataclasses.replace(plan.optimizer, **changes)
    return dataclasses.replace(plan, optimizer=optimizer, spec=dict(plan.spec, optimizer=as_dict(optimizer)))


def reference_spec(plan: Plan, *, dp) -> dict:
    """What determines a clean reference model (its cache key): the same setup, scenario and schedule included,
    unpoisoned."""
    return dict(plan.spec, dp=dp_spec(dp), scenario=dataclasses.asdict(plan.scenario))


def reference_evaluate(plan: Plan) -> Callable[[torch.nn.Module], dict]:
    """Per-epoch clean accuracy of a reference model (for its best epoch)."""
    return lambda model: {"clean_acc": M.accuracy(M.predict(model, plan.data.x_test), plan.data.y_test)}


def best(history: list[dict], key: str = "clean_acc") -> float | None:
    return max((r[key] for r in history if r.get(key) is not None), default=None)


def reference_entry(plan: Plan, result: TrainResult) -> dict:
    if result.status != "ok":
        return {"clean_acc": None, "best_clean_acc": None, "status": result.status}
    final = M.accuracy(M.predict(result.model, plan.data.x_test), plan.data.y_test)
    return {"clean_acc": final, "best_clean_acc": best(result.history), "status": "ok"}


def _check_reference(entry: dict) -> None:
    if not {"clean_acc", "best_clean_acc", "status"} <= set(entry):
        raise ValueError("it lacks clean_acc, best_clean_acc or status")


def reference_accuracy(plan: Plan, *, dp) -> Reference:
    """Clean test accuracy of ``plan``'s setup (scenario and schedule included) trained without poison; cached."""
    spec = reference_spec(plan, dp=dp)
    label = "reference" + ("-dp" if dp else "")

    def compute() -> dict:
        seed = noise_seed(cache_key("reference", spec))
        return reference_entry(plan, fit(plan, plan.data.x_train, plan.data.y_train, dp=dp, desc=label,
                                         noise_seed=seed, evaluate=reference_evaluate(plan)))  # fmt: skip

    entry, hit = cached_json(plan.cache_dir, "reference", spec, compute, check=_check_reference)
    acc = entry["clean_acc"]
    log.info("%s clean_acc %s (%s)", label, f"{acc:.4f}" if acc is not None else None, "cached" if hit else "trained")
    return Reference(entry["clean_acc"], entry["best_clean_acc"])


def reference_runs(plan: Plan) -> list[tuple[Plan, object]]:
    """The (plan, dp) of each clean reference a run needs: the vanilla one at the vanilla schedule, then the
    DP-matched one at the run's own schedule unless it is that same model (a vanilla run at its own schedule)."""
    vanilla = vanilla_schedule(plan)
    return [(vanilla, None)] + ([] if plan.dp is None and vanilla is plan else [(plan, plan.dp)])


def references(plan: Plan) -> tuple[Reference, Reference]:
    """(vanilla reference at the vanilla schedule, DP-matched reference at the run's own schedule)."""
    refs = [reference_accuracy(p, dp=dp) for p, dp in reference_runs(plan)]
    return refs[0], refs[-1]


def rad_metrics(ref: Reference, ref_dp: Reference, *, acc: float | None, best_acc: float | None) -> dict:
    """metrics.json's RAD keys for a run whose final and best clean accuracies are ``acc`` and ``best_acc``."""
    rad_best = M.rad(ref.best_clean_acc, best_acc)
    return {
        "rad": M.rad(ref.clean_acc, acc),
        "rad_best": rad_best,
        "rad_early_stop": max(0.0, rad_best) if rad_best is not None else None,
        "rad_dp_matched": M.rad(ref_dp.clean_acc, acc),
        "rad_dp_matched_best": M.rad(ref_dp.best_clean_acc, best_acc),
        "acc_ref": ref.clean_acc,
        "acc_ref_best": ref.best_clean_acc,
        "acc_ref_dp_matched": ref_dp.clean_acc,
        "acc_ref_dp_matched_best": ref_dp.best_clean_acc,
    }
