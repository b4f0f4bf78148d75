"""Training per the scenario: pretraining (cached), ``fit`` on a training set, and retraining trials.

See ``gsdefense.scenario`` for the scenarios themselves and what ε covers.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gsdefense.attacks.base import PoisonedSet
from gsdefense.cache import StaleEntry, cache_key, cached_entry, load_tensor_entry, noise_seed, save_tensor_entry
from gsdefense.identity import dp_spec
from gsdefense.plan import Plan
from gsdefense.scenario import retrain_optimizer
from gsdefense.training.loop import TrainResult, train
from gsdefense.training.trials import Trial, TrialSpec, train_trials

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
    spec = dict(plan.spec, pretrain_epochs=scenario.pretrain_epochs, dp=dp_spec(dp))
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


def kept_rows(poisoned: PoisonedSet, kept: PoisonedSet) -> torch.Tensor:
    """Which rows of ``poisoned`` a defense kept: ``Defense.apply`` returns them in order (``defenses.keep``), with
    their mask in ``kept.kept``.

    A set without that mask (a defense that builds its own) is matched row by row on the exact (x, y, is_poison)
    values; either way the result is checked: a defense that reorders, alters, or keeps one of two identical rows
    but not the other cannot be told apart row by row, and is refused with a RuntimeError.
    """
    n = len(poisoned.y)
    if kept is poisoned or len(kept.y) == n:
        mask = torch.ones(n, dtype=torch.bool, device=poisoned.y.device)
    elif kept.kept is not None and len(kept.kept) == n:
        mask = kept.kept.to(device=poisoned.y.device, dtype=torch.bool)
    else:
        # Exact values, not a projection: a matmul's rounding depends on the matrix's shape (BLAS blocking), so the
        # same row can project differently inside the full set and inside the kept subset.
        def key(s: PoisonedSet) -> torch.Tensor:
            return torch.cat([s.x.flatten(1).double(), s.y.double()[:, None], s.is_poison.double()[:, None]], 1)

        _, ids = torch.unique(torch.cat([key(poisoned), key(kept)]), dim=0, return_inverse=True)
        mask = torch.isin(ids[:n], ids[n:])
    same = int(mask.sum()) == len(kept.y) and all(
        torch.equal(getattr(poisoned, f)[mask], getattr(kept, f)) for f in ("x", "y", "is_poison")
    )
    if not same:
        raise RuntimeError("the defense did not return an ordered subset of its rows; trials need which it kept")
    return mask


@dataclass
class TrialRunner:
    """Retraining trials from one pretrained model, for targeted attacks (Poison Frogs).

    Each trial resumes the pretrained weights and retrains on the clean training
    set plus the trial's poisons, after the run's sanitisation ``defense`` (it sees
    the whole retraining set, as it would see any training set), with the retrain
    phase's DP setting, a DP noise stream and a batch stream of its own, derived from
    the run's noise seed (the sampler's: ``plan.seed``) and the trial's name. Batches
    are defined per trial (``gsdefense.training.trials``): the clean rows' Poisson
    (DP, q = 1/⌈n_clean/B⌉) or shuffled (vanilla) batches are the run's, shared by
    every trial; each of the trial's own rows joins them from the trial's batch
    stream. So a trial computes the same alone (``retrain``) as batched with others
    (``retrain_sequences``, up to ``max_members`` at once). Any ``dp.grad_sample_mode``
    trains by book-keeping (the same update; Opacus' hooks cannot stack models).
    """

    plan: Plan
    pre: Pretrained
    dp: Any
    acc_ref: float | None
    noise_seed: int = 0
    max_members: int = 64  # trials trained at once (fewer if memory is short)
    n_removed: int = 0  # summed over trials: what the defense dropped, and how many of those were poisons
    n_poison_removed: int = 0
    n_poisons_offered: int = 0
    n_epochs_trained: int = 0  # retraining epochs run by retrain_sequences, speculative trials included

    def __post_init__(self) -> None:
        mode = getattr(self.dp, "grad_sample_mode", None)
        if mode in ("hooks", "functorch"):
            log.warning("dp.grad_sample_mode=%s: retraining trials train stacked, by book-keeping (the same update)",
                        mode)  # fmt: skip

    @property
    def pretrained_key(self) -> str:
        return self.pre.key

    def pretrained_model(self) -> nn.Module:
        model = self.plan.build_model()
        model.load_state_dict(self.pre.state)
        return model.eval()

    def trial_noise_seed(self, desc: str) -> int:
        return noise_seed(cache_key("trial", {"run": self.noise_seed, "trial": desc}))

    def trial_batch_seed(self, desc: str) -> int:
        """Seeds the trial's own rows' batch draws; like the clean sampler, it depends on the seed, not on dp."""
        return noise_seed(cache_key("trial-batches", {"seed": self.plan.seed, "trial": desc}))

    def _spec(self, trial: Trial, *, until, sequence: int | None) -> tuple[TrialSpec, dict]:
        """The trial after the defense (which sees clean set + poisons), and what the defense removed."""
        data = self.plan.data
        n = len(data.y_train)
        x_extra, y_extra = trial.x.to(data.x_train.device), trial.y.to(data.y_train.device)
        poisoned = PoisonedSet(x=torch.cat([data.x_train, x_extra]), y=torch.cat([data.y_train, y_extra]),
                               is_poison=torch.arange(n + len(y_extra), device=data.y_train.device) >= n)  # fmt: skip
        kept, info = self.plan.defense.apply(poisoned, data=data)
        mask = kept_rows(poisoned, kept)
        clean_keep = None if bool(mask[:n].all()) else mask[:n]
        extra = mask[n:]
        spec = TrialSpec(x_extra=x_extra[extra], y_extra=y_extra[extra], noise_seed=self.trial_noise_seed(trial.desc),
                         batch_seed=self.trial_batch_seed(trial.desc), clean_keep=clean_keep, desc=trial.desc,
                         evaluate=trial.evaluate, until=until, sequence=sequence)  # fmt: skip
        return spec, info

    def _train(self, specs: list[TrialSpec], *, keep_models: bool = False) -> list[TrainResult]:
        optimizer = retrain_optimizer(self.plan.optimizer, self.plan.scenario)
        history = self.pre.accountant_history if self.dp else None  # epsilon covers both private phases
        return train_trials(self.pretrained_model().train(), self.plan.data.x_train, self.plan.data.y_train, specs,
                            optimizer_cfg=optimizer, dp=self.dp, seed=self.plan.seed, accountant_history=history,
                            keep_models=keep_models)  # fmt: skip

    def _count(self, info: dict, offered: int) -> None:
        self.n_removed += info["n_removed"]
        self.n_poison_removed += info["n_poison_removed"]
        self.n_poisons_offered += offered

    def retrain(self, x_extra: torch.Tensor, y_extra: torch.Tensor, *, evaluate=None, desc: str = "trial",
                until=None) -> TrainResult:  # fmt: skip
        """One trial, alone; it stops after the first epoch row where ``until(row)`` holds (if given)."""
        spec, info = self._spec(Trial(x_extra, y_extra, desc, evaluate), until=until, sequence=None)
        [result] = self._train([spec], keep_models=True)
        self._count(info, len(y_extra))
        result.defense_info = info
        return result

    def retrain_sequences(self, sequences: list[list[Trial]], *, until=None) -> list[list[TrainResult]]:
        """Per sequence, its trials' results up to its first trial that reached ``until`` (all if none did).

        That is what calling ``retrain`` on each sequence's trials in order, stopping at the first that reached
        ``until``, returns (and what the defense counters add up); here the trials train in rounds of up to
        ``max_members`` (memory permitting), filled round-robin with each undecided sequence's next trials. A
        trial leaves its round once decided, and later trials of a sequence stop once an earlier one succeeded.
        """
        limit = min(self.max_members, self._memory_limit())
        out: list[list[TrainResult]] = [[] for _ in sequences]
        tried, done = [0] * len(sequences), [False] * len(sequences)
        while True:
            batch: list[tuple[int, Trial]] = []
            while len(batch) < limit:
                ready = [s for s, seq in enumerate(sequences) if not done[s] and tried[s] < len(seq)]
                for s in ready[: limit - len(batch)]:
                    batch.append((s, sequences[s][tried[s]]))
                    tried[s] += 1
                if not ready:
                    break
            if not batch:
                return out
            prepared = [self._spec(trial, until=until, sequence=s) for s, trial in batch]
            results = self._train([spec for spec, _ in prepared])
            self.n_epochs_trained += sum(len(r.history) for r in results)
            for (s, trial), (_, info), result in zip(batch, prepared, results):
                if done[s]:
                    continue  # after the sequence's first success: never run one after another
                result.defense_info = info
                self._count(info, len(trial.y))
                out[s].append(result)
                done[s] = result.stopped_epoch is not None

    def defense_metrics(self) -> dict[str, int]:
        return {"n_removed": self.n_removed, "n_poison_removed": self.n_poison_removed,
                "n_poisons_offered": self.n_poisons_offered}  # fmt: skip

    def _memory_limit(self) -> int:
        batch = retrain_optimizer(self.plan.optimizer, self.plan.scenario).batch_size
        return group_limit(self.pretrained_model(), self.plan.data.x_train, rows=2 * batch, private=self.dp is not None)


def group_limit(model: nn.Module, x: torch.Tensor, *, rows: int, private: bool, fraction: float = 0.25) -> int:
    """How many members fit in ``fraction`` of the free memory, for steps of ``rows`` rows per member.

    Per member: 4 copies of the parameters (weights, gradients, optimizer state, noise), and per row its
    layer outputs thrice (forward, output gradients, book-keeping) plus, with DP, its conv per-sample gradients.
    """
    acts: list[int] = []
    leaves = [m for m in model.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(lambda m, i, o: acts.append(o.numel())) for m in leaves]
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for h in hooks:
            h.remove()
    conv = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Conv2d)) if private else 0
    per_row = 4 * (3 * sum(acts) + conv)
    per_member = 16 * sum(p.numel() for p in model.parameters()) + rows * per_row
    if x.device.type == "cuda":
        free = torch.cuda.mem_get_info(x.device)[0]
    else:
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):  # macOS/BSD/Windows have no available-pages query
            free = 4 * 2**30  # assume 4 GiB free: a modest batch of trials, never an oversized one
    return max(1, int(fraction * free // per_member))
