"""``run(cfg)``: one poisoning × defense experiment, from config to metrics.json.

1. Validate every config node and load the data (``plan.prepare``): bad input
   fails here, before any training.
2. Poison the training set, apply the sanitisation defense, and train per the
   scenario with or without DP-SGD (targeted attacks run their own trials).
3. Train (or load from the shared cache) the clean references RAD needs.
4. Write ``history.csv`` and ``model.pt``, then ``metrics.json`` last, atomically.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from gsdefense import metrics as M
from gsdefense.console import epsilon_text
from gsdefense.errors import ConfigError
from gsdefense.identity import Identity, run_id
from gsdefense.io import atomic_write, write_csv, write_json
from gsdefense.outputs import claim, claim_for_failure
from gsdefense.phases import TrialRunner, fit, pretrained
from gsdefense.plan import Plan, prepare
from gsdefense.posttrain import detect
from gsdefense.references import Reference, best, rad_metrics, reference_accuracy, references, vanilla_schedule
from gsdefense.scenario import privacy_report
from gsdefense.telemetry import GradientProbe, original_exports
from gsdefense.training.checkpoint import Checkpointer, checkpoint_config
from gsdefense.training.dp import dp_metrics
from gsdefense.training.loop import TrainResult
from gsdefense.training.loss_trend import run_warnings

log = logging.getLogger(__name__)


def run(cfg: DictConfig, *, output_dir: str | Path) -> dict[str, Any]:
    """Run one experiment; returns (and writes) its metrics.

    The output folder is claimed first (``gsdefense.outputs``): outputs of another config are moved aside,
    never overwritten. With ``resume: true`` a run whose complete ``status: ok`` result is already there (or
    in ``superseded/``) is skipped, and an interrupted run continues from its last checkpoint.
    """
    start = time.perf_counter()
    output_dir = Path(output_dir)
    who = Identity.of(cfg)  # validated once; its id names the folder's outputs and seeds the noise
    ident = who.run_id
    if (done := claim(output_dir, ident, resume=bool(cfg.resume), config=who.config)) is not None:
        log.info("run %s is already complete in %s; skipping (resume=false recomputes)", ident, output_dir)
        return done
    checkpointer = checkpointer_for(cfg, output_dir, tag=ident)
    plan = prepare(cfg)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    if getattr(plan.attack, "targeted", False):
        metrics = _run_targeted(plan, output_dir, noise_seed=who.noise_seed)
    else:
        poisoned = poison(plan)
        result = fit(plan, poisoned.x, poisoned.y, dp=plan.dp, desc="train", evaluate=poisoned.evaluate,
                     probe=poisoned.probe(plan), checkpointer=checkpointer, noise_seed=who.noise_seed)  # fmt: skip
        ref, ref_dp = references(plan)
        metrics = finish(plan, poisoned, result, output_dir, ref=ref, ref_dp=ref_dp, save_model=cfg.save_model)
        metrics |= detect(plan, poisoned.evaluate, result, output_dir, acc_ref=ref.clean_acc, seed=who.noise_seed)
    return complete(metrics, ident=ident, start=start, plan=plan, output_dir=output_dir, checkpointer=checkpointer)


def complete(metrics: dict, *, ident: str, start: float, plan: Plan, output_dir: Path, checkpointer) -> dict:
    """Write metrics.json last (atomically) and drop the checkpoint: the run is complete."""
    metrics = {"run_id": ident, **metrics, "seconds": time.perf_counter() - start, "device": str(plan.device)}
    write_json(output_dir / "metrics.json", metrics)
    if checkpointer is not None:
        checkpointer.clear()  # model.pt keeps the weights
    log.info("%s", summary_line(metrics, output_dir))
    return metrics


def summary_line(metrics: dict, output_dir: Path) -> str:
    """One line for the console: where, status, and the headline numbers."""

    def num(key: str) -> str:
        value = metrics.get(key)
        return f"{value:.3f}" if isinstance(value, float) else "—"

    return (f"{output_dir}: {metrics.get('status')} | clean_acc {num('clean_acc')} | ASR {num('asr')} | "
            f"RAD {num('rad')} | ε {epsilon_text(metrics)}")  # fmt: skip


def checkpointer_for(cfg: DictConfig, output_dir: Path, *, tag: str) -> Checkpointer | None:
    """The run's per-epoch checkpointer (None when off); ``resume: false`` discards an old checkpoint."""
    checkpoint = checkpoint_config(cfg.checkpoint)
    if not checkpoint.every_n_epochs:
        return None
    checkpointer = Checkpointer(output_dir / "checkpoint.pt", every_n_epochs=checkpoint.every_n_epochs, tag=tag,
                                min_seconds=checkpoint.min_seconds)  # fmt: skip
    if not cfg.resume:
        checkpointer.clear()
    return checkpointer


@dataclass
class Poisoned:
    """The training set a run sees (poisoned, then sanitised) and how the run is evaluated."""

    x: torch.Tensor
    y: torch.Tensor
    is_poison: torch.Tensor
    n_poison: int
    defense_info: dict
    evaluate: Callable[[torch.nn.Module], dict]

    def probe(self, plan: Plan) -> GradientProbe | None:
        if not plan.telemetry.enabled:
            return None
        clip, noise = (plan.dp.clip, plan.dp.noise) if plan.dp else (None, None)
        return GradientProbe(plan.telemetry, x=self.x, y=self.y, is_poison=self.is_poison, clip=clip, noise=noise)


def poison(plan: Plan) -> Poisoned:
    """Poison the training set, apply the sanitisation defense, prepare the evaluation."""
    data = plan.data
    poisoned = plan.attack.poison(data, generator=torch.Generator().manual_seed(plan.seed), context=plan.context)
    poisoned, defense_info = plan.defense.apply(poisoned, data=data)
    triggered = M.backdoor_test_set(plan.attack, data.x_test, data.y_test) if plan.attack.is_backdoor else None

    def evaluate(model: torch.nn.Module) -> dict:
        return M.evaluate(model, data.x_test, data.y_test, attack=plan.attack, triggered=triggered)

    return Poisoned(poisoned.x, poisoned.y, poisoned.is_poison, poisoned.n_poison, defense_info, evaluate)


def finish(plan: Plan, poisoned: Poisoned, result: TrainResult, output_dir: Path, *, ref: Reference,
           ref_dp: Reference, save_model: bool) -> dict:  # fmt: skip
    """Evaluate a trained run against its references (``gsdefense.references``: ``ref`` the vanilla one at the
    vanilla schedule, ``ref_dp`` the DP-matched one); write model.pt, history.csv and telemetry exports.

    ``rad`` compares final epochs; ``rad_best`` the run's best epoch with its reference's best epoch, as Hong et
    al.'s ``do_ipoisoning.py`` reports it; ``rad_early_stop`` is ``rad_best`` floored at 0, as that script stops
    once the baseline is reached.
    """
    ok = result.status == "ok"
    final = result.history[-1] if ok else {}
    model, clean = result.model, ~poisoned.is_poison
    losses = {"train_loss": None, "clean_train_loss": None, "poison_train_loss": None, "test_loss": None}
    if ok:
        losses = {
            "train_loss": M.mean_loss(model, poisoned.x, poisoned.y),
            "clean_train_loss": M.mean_loss(model, poisoned.x[clean], poisoned.y[clean]),
            "poison_train_loss": M.mean_loss(model, poisoned.x[~clean], poisoned.y[~clean]),
            "test_loss": M.mean_loss(model, plan.data.x_test, plan.data.y_test),
        }
    if save_model:
        atomic_write(output_dir / "model.pt", lambda fh: torch.save(model.state_dict(), fh), mode="wb")
    write_csv(output_dir / "history.csv", result.history)
    if plan.telemetry.enabled:
        write_original_exports(output_dir, result, original_format=plan.telemetry.original_format)
    return {
        "status": result.status,
        "error": None if ok else f"loss became non-finite at epoch {result.diverged_epoch}",
        "diverged_epoch": result.diverged_epoch,
        "clean_acc": final.get("clean_acc"),
        "best_clean_acc": best(result.history) if ok else None,
        "target_class_acc": final.get("target_class_acc"),
        "asr": final.get("asr"),
        "robust_acc": final.get("robust_acc"),
        **rad_metrics(ref, ref_dp, acc=final.get("clean_acc"), best_acc=best(result.history) if ok else None),
        **losses,
        **privacy_report(dp=plan.dp, scenario=plan.scenario, epsilon_private=result.epsilon),
        **dp_metrics(plan.dp),
        "n_train": len(poisoned.y),
        "n_poison": poisoned.n_poison,
        # the poisons' share of the final training set (attack.poison_ratio, in append mode, is a fraction of
        # the clean set: 0.1 there is 0.0909 here)
        "poison_fraction_of_train": poisoned.n_poison / len(poisoned.y),
        **poisoned.defense_info,
        **plan.attack.extra_metrics(),
        "warnings": run_warnings(result.history if ok else [], dp=plan.dp, optimizer=plan.optimizer, spec=plan.spec),
    }


def _run_targeted(plan: Plan, output_dir: Path, *, noise_seed: int) -> dict:
    """Targeted attacks (Poison Frogs) run many retraining trials from one pretrained model."""
    scenario = plan.scenario
    dp = plan.dp
    pre = pretrained(plan, dp=dp if scenario.pretrain_private else None)
    acc_ref = reference_accuracy(vanilla_schedule(plan), dp=None).clean_acc  # the vanilla reference, as rad's
    trials = TrialRunner(plan=plan, pre=pre, dp=dp if scenario.retrain_private else None,
                         acc_ref=acc_ref, noise_seed=noise_seed)  # fmt: skip
    extra = plan.attack.evaluate(data=plan.data, context=plan.context, trials=trials, output_dir=output_dir)
    # ε of the private phases: every trial composes its steps after pretraining's, and the worst one bounds all;
    # without any trial (no poison kept) only pretraining trained
    epsilon = extra.pop("epsilon", None) if trials.dp is not None else pre.epsilon
    if epsilon is None and scenario.pretrain_private:
        epsilon = pre.epsilon
    return {"status": "ok", "error": None, **extra, **trials.defense_metrics(),
            **privacy_report(dp=dp, scenario=scenario, epsilon_private=epsilon), **dp_metrics(dp)}  # fmt: skip


def write_original_exports(output_dir: Path, result: TrainResult, *, original_format: bool = False) -> None:
    """Telemetry in the original tool's formats, beside history.csv (and per-step rows if asked); with a header
    row unless ``original_format`` (``telemetry.original_format``: headerless, as the original's files)."""
    mextracts, aextracts = original_exports(result.history, header=not original_format)
    if mextracts:
        atomic_write(output_dir / "mextracts_epoch.csv", lambda fh: fh.write("".join(f"{r}\n" for r in mextracts)))
        atomic_write(output_dir / "aextracts_epoch.csv", lambda fh: fh.write("".join(f"{r}\n" for r in aextracts)))
    if result.step_telemetry:
        write_csv(output_dir / "telemetry.csv", result.step_telemetry)


def failure_metrics(error: BaseException, cfg: DictConfig | None = None) -> dict[str, Any]:
    """The metrics.json of a run that did not finish: status failed, and why (one line)."""
    ident = None
    if cfg is not None:
        try:
            ident = run_id(cfg)
        except Exception:  # noqa: BLE001 - an invalid config still deserves its failure record
            ident = None
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return {"run_id": ident, "status": "failed", "error": f"{type(error).__name__}: {text}".rstrip(": ")}


def record_failure(output_dir: str | Path, error: BaseException, cfg: DictConfig | None) -> dict[str, Any]:
    """Write a failed run's metrics.json; outputs of another config in the folder are moved aside first."""
    metrics = failure_metrics(error, cfg)
    output_dir = Path(output_dir)
    try:
        if claim_for_failure(output_dir, metrics["run_id"]):
            write_json(output_dir / "metrics.json", metrics)
        else:
            log.error("%s keeps its finished result; this rerun failed: %s", output_dir, metrics["error"])
    except (OSError, ConfigError) as err:
        log.error("could not record the failure in %s: %s", output_dir, err)
    return metrics
