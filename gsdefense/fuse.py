"""Fused sweeps: the jobs of a multirun that differ only in ``dp.clip``, ``dp.noise`` (or ``dp.noise_std``),
``dp.delta`` or ``optimizer.lr`` train together in one process (``hydra/launcher=fused``).

``group_jobs`` sorts a sweep's configs into groups; ``run_group`` runs one group:
each member is validated, poisoned and evaluated exactly as ``run`` would do it,
but training (``training.fused.train_fused``) and the missing clean references
run once for the whole group. Every member writes its own metrics.json,
history.csv, model.pt and telemetry files, with the same content as its separate
run (to float rounding), plus ``fused_group_size``.
"""

from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from gsdefense.cache import cache_key, cached_json, json_path, noise_seed
from gsdefense.errors import ConfigError
from gsdefense.identity import Identity
from gsdefense.outputs import claim
from gsdefense.plan import Plan, prepare
from gsdefense.posttrain import detect
from gsdefense.references import reference_entry, reference_evaluate, reference_runs, reference_spec, references
from gsdefense.run import checkpointer_for, complete, finish, poison, record_failure, run
from gsdefense.runlock import release_all
from gsdefense.training.fused import FusedMember, train_fused
from gsdefense.training.per_sample import bk_unsupported

log = logging.getLogger(__name__)

FUSABLE = ("dp.clip", "dp.noise", "dp.noise_std", "dp.delta", "optimizer.lr")
OPACUS_ENGINES = ("hooks", "functorch")


def static_reason(cfg: DictConfig) -> str | None:
    """Why a job cannot join a fused group whatever the other jobs are, or None."""
    if cfg.dp.name not in ("dpsgd", "none"):
        return f"dp={cfg.dp.name} is not fused (only dpsgd and none are)"
    if cfg.dp.name == "dpsgd" and cfg.dp.get("grad_sample_mode") in OPACUS_ENGINES:
        return f"dp.grad_sample_mode={cfg.dp.grad_sample_mode} asks for Opacus' engine; fusing uses book-keeping"
    if cfg.scenario.name != "scratch":
        return f"scenario={cfg.scenario.name} is not fused (only scratch is)"
    if cfg.attack.name == "poison_frogs":
        return "targeted attacks (poison_frogs) run their own retraining trials"
    return None


def fusion_key(cfg: DictConfig, vary: tuple[str, ...] | list[str]) -> str:
    """Jobs with equal keys differ at most in ``vary``: everything else (execution settings too) is shared."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved.pop("hydra", None)
    for dotted in vary:
        group, _, key = dotted.partition(".")
        if isinstance(resolved.get(group), dict):
            resolved[group].pop(key, None)
    return cache_key("fusion", resolved)


def group_jobs(cfgs: list[DictConfig], *, vary, max_group_size: int) -> list[tuple[list[int], str | None]]:
    """Indices of ``cfgs`` per group, in order of first appearance; a singleton comes with the reason it is one."""
    groups: dict[str, list[int]] = {}
    singles: list[tuple[list[int], str | None]] = []
    for i, cfg in enumerate(cfgs):
        reason = static_reason(cfg)
        if reason is not None:
            singles.append(([i], reason))
        else:
            groups.setdefault(fusion_key(cfg, vary), []).append(i)
    out = []
    for members in groups.values():
        for start in range(0, len(members), max_group_size):
            chunk = members[start : start + max_group_size]
            alone = f"no other job of the sweep differs from it only in {', '.join(vary)}"
            out.append((chunk, alone if len(chunk) == 1 else None))
    return sorted(out + singles, key=lambda g: g[0][0])


def _same_data(a: DictConfig, b: DictConfig) -> bool:
    return a.dataset == b.dataset and a.seed == b.seed and a.device == b.device


@dataclass
class _Job:
    index: int
    cfg: DictConfig
    output_dir: Path
    ident: str
    noise_seed: int
    plan: Plan | None = None


def run_group(cfgs: list[DictConfig], output_dirs: list[Path]) -> list[dict]:
    """Run one group (see ``group_jobs``); returns each member's metrics, as ``run`` would."""
    start = time.perf_counter()
    metrics: list[dict | None] = [None] * len(cfgs)
    jobs: list[_Job] = []
    for i, (cfg, out) in enumerate(zip(cfgs, output_dirs)):
        out = Path(out)
        try:
            who = Identity.of(cfg)
            ident = who.run_id
            if (done := claim(out, ident, resume=bool(cfg.resume), config=who.config)) is not None:
                log.info("run %s is already complete in %s; skipping", ident, out)
                metrics[i] = done
                continue
            shared = jobs[0].plan.loaded if jobs and _same_data(cfg, jobs[0].cfg) else None  # load the data once
            jobs.append(_Job(i, cfg, out, ident, who.noise_seed, prepare(cfg, data=shared)))
        except Exception as err:  # noqa: BLE001 - a bad member is recorded, the others train
            metrics[i] = record_failure(out, err, cfg)
    if len(jobs) == 1:  # the others are complete or invalid
        jobs[0].plan = None
    for job in [j for j in jobs if j.plan is None]:
        metrics[job.index] = _separately(job)
    jobs = [j for j in jobs if j.plan is not None]
    if jobs:
        try:
            for job, m in zip(jobs, _train_group(jobs, start)):
                metrics[job.index] = m
        except Exception as err:  # noqa: BLE001 - one broken group must not stop the sweep
            log.error("fused group failed: %s\n%s", err, traceback.format_exc())
            for job in jobs:
                metrics[job.index] = record_failure(job.output_dir, err, job.cfg)
    release_all()  # the group's folders are complete: one descriptor per folder must not pile up over a sweep
    return metrics


def _train_group(jobs: list[_Job], start: float) -> list[dict]:
    first = jobs[0]
    if first.cfg.threads is not None:
        torch.set_num_threads(first.cfg.threads)
    poisoned = [poison(j.plan) for j in jobs]
    reason = bk_unsupported(first.plan.build_model())  # fusing stacks exactly the layers book-keeping handles
    for p in poisoned[1:]:
        if reason is None and not (torch.equal(p.x, poisoned[0].x) and torch.equal(p.y, poisoned[0].y)):
            reason = "the members' poisoned training sets differ (the attack depends on a fused key)"
        p.x, p.y, p.is_poison = poisoned[0].x, poisoned[0].y, poisoned[0].is_poison  # one copy in memory
    if reason is not None:
        log.info("fused group of %d runs separately: %s", len(jobs), reason)
        return [_separately(j) for j in jobs]
    group_tag = cache_key("group", sorted(j.ident for j in jobs))
    members = []
    for job, p in zip(jobs, poisoned):
        job.output_dir.mkdir(parents=True, exist_ok=True)
        checkpointer = checkpointer_for(job.cfg, job.output_dir, tag=f"fused-{group_tag}-{job.ident}")
        members.append(
            FusedMember(
                model=job.plan.build_model(), optimizer=job.plan.optimizer, dp=job.plan.dp,
                noise_seed=job.noise_seed, desc=f"train {job.output_dir.name}", evaluate=p.evaluate,
                probe=p.probe(job.plan), checkpointer=checkpointer,
            )
        )  # fmt: skip
    log.info("training %d runs fused: %s", len(jobs), ", ".join(str(j.output_dir) for j in jobs))
    results = train_fused(members, poisoned[0].x, poisoned[0].y, seed=first.plan.seed)
    train_references([j.plan for j in jobs])
    out = []
    for job, p, result, member in zip(jobs, poisoned, results, members):
        plan = job.plan
        ref, ref_dp = references(plan)
        m = finish(plan, p, result, job.output_dir, ref=ref, ref_dp=ref_dp, save_model=job.cfg.save_model)
        m |= detect(plan, p.evaluate, result, job.output_dir, acc_ref=ref.clean_acc, seed=member.noise_seed)
        m["fused_group_size"] = len(jobs)
        out.append(complete(m, ident=job.ident, start=start, plan=plan, output_dir=job.output_dir,
                            checkpointer=member.checkpointer))  # fmt: skip
    return out


def train_references(plans: list[Plan]) -> None:
    """Train the group's missing clean references fused and put them in the cache: vanilla and DP apart, and
    apart by schedule (a vanilla reference's ``reference.*`` schedule may differ from the runs')."""
    needed: dict[str, tuple[Plan, object, dict]] = {}
    for plan in plans:
        for ref_plan, dp in reference_runs(plan):
            spec = reference_spec(ref_plan, dp=dp)
            if not json_path(ref_plan.cache_dir, "reference", spec).exists():
                needed.setdefault(cache_key("reference", spec), (ref_plan, dp, spec))
    batches: dict[tuple, list] = {}
    for key, (plan, dp, spec) in needed.items():  # members share everything but the learning rate and DP
        shared = {k: v for k, v in spec["optimizer"].items() if k != "lr"}
        batches.setdefault((dp is not None, cache_key("schedule", shared)), []).append((key, (plan, dp, spec)))
    for todo in batches.values():
        if len(todo) < 2:
            continue  # reference_accuracy trains a lone one as a separate run would
        members = [FusedMember(model=plan.build_model(), optimizer=plan.optimizer, dp=dp, noise_seed=noise_seed(key),
                               desc="reference", evaluate=reference_evaluate(plan))
                   for key, (plan, dp, _) in todo]  # fmt: skip
        plan0 = todo[0][1][0]
        log.info("training %d clean references fused", len(todo))
        results = train_fused(members, plan0.data.x_train, plan0.data.y_train, seed=plan0.seed, desc="reference")
        for (_, (plan, _, spec)), result in zip(todo, results):
            cached_json(plan.cache_dir, "reference", spec, lambda p=plan, r=result: reference_entry(p, r))


def _separately(job: _Job) -> dict:
    try:
        return run(job.cfg, output_dir=job.output_dir)
    except ConfigError as err:
        return record_failure(job.output_dir, err, job.cfg)
    except Exception as err:  # noqa: BLE001 - as in a multirun: record the failure, go on
        log.error("run failed: %s\n%s", err, traceback.format_exc())
        return record_failure(job.output_dir, err, job.cfg)
