"""Steinhardt, Koh & Liang's indiscriminate attack (NeurIPS 2017) — Hong et al.'s "SOTA" attack (§6.2).

Binary task, linear model ``f(x) = ⟨w, x⟩ + b`` on flattened pixels, labels ``y ∈ {−1, +1}`` (0 ↦ −1, 1 ↦ +1).
Two methods, both appending their poisons ``D_p`` to the clean set:

- ``method: slab`` (default) — the attack on the *data-dependent* sphere + slab defense (§5), as the authors'
  released ``slabAttack.m`` runs it (``gsdefense.attacks.slab_attack``). It is what produced Hong et al.'s
  ``fmnist_34_attack_eps<k>_quantile65_rho_slab_v7.mat`` (same name pattern; Hong's ``do_ipoisoning.py`` loads
  ``bestX(1,:,:)`` and clips it to [0, 1]): copies of four points, the defense's centroids taken from the poisoned
  data, the point masses chosen by retraining. Defaults as the released ``go_slab.py`` runs MNIST-1-7 (quantile
  0.65, η = 0.005, ρ² = 0.8, 200 iterations, SeDuMi) — Hong's FashionMNIST-3/4 files share its quantile.
- ``method: online`` — Algorithm 1 against the *oracle* sphere ∩ slab (clean centroids) ∩ box: for ``t = 1 … εn``
  (after ``burn_in`` iterations), ``(x_t, y_t) = argmax_{F} ℓ(θ; x, y)`` (solved exactly per label by
  ``FeasibleSet.argmax_linear``), ``U* = min(U*, L(θ; D_c)/n + ε ℓ(θ; x_t, y_t))``, a dual-averaging step on
  ``∇L(θ; D_c)/n + ε ∇ℓ``, ``λ = max(λ, ‖z‖/ρ)``, ``θ = z/λ``; hinge or logistic ``loss``.

The poisons depend only on the clean data, the config and (``slab``) the seed: they are cached
(``gsdefense.cache``, kind ``steinhardt_poisons``) and checked on read (shape, labels, count, finiteness, box,
and that they lie in the set they were crafted for), so a clip × noise sweep crafts them once per ratio and seed.
``extra_metrics``: ``certified_upper_bound`` (U*; for ``slab`` the released code's estimate), ``slab_lower_bound``
(``slab``: the chosen check's clean hinge loss) and ``poisons_cached``.

Simplified (docs/deviations.md): the victim is the run's model trained with cross-entropy, not the hinge model
the attack optimises against; ``slab`` clips its poisons into the box after crafting, as Hong did, so they may
leave the data-dependent set slightly; see ``slab_attack`` for the rest.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any

import torch

from gsdefense.attacks import slab_attack
from gsdefense.attacks.base import Attack, PoisonedSet, RunContext, check_budget, poison_count
from gsdefense.attacks.feasible import FeasibleSet
from gsdefense.attacks.narcissus import fingerprint
from gsdefense.attacks.steinhardt_online import online_attack
from gsdefense.cache import StaleEntry, cached_tensors
from gsdefense.data.bundle import DataBundle
from gsdefense.errors import ConfigError

log = logging.getLogger(__name__)

LOSSES = ("hinge", "logistic")
METHODS = ("slab", "online")
DEFAULTS = {"slab": {"eta": 0.005, "rho": math.sqrt(0.8)}, "online": {"eta": 2.0, "rho": 50.0}}
FEASIBLE_TOL = 1e-4  # relative excess over a radius a stored poison may have (solver tolerance, float32)
CRAFTS = {"count": 0}  # poison sets crafted (not read from the cache) in this process
VERSION = 1  # bump when the crafting code changes what an entry would hold


@dataclass
class SteinhardtConfig:
    name: str = "steinhardt"
    poison_ratio: float | None = 0.1  # poisons per clean training sample (ε)
    n_poisons: int | None = None  # alternative to poison_ratio
    method: str = "slab"  # slab: data-dependent defense (Hong's poisons) | online: Algorithm 1, oracle defense
    percentile: float = 65.0  # sphere/slab radii: percentile of the clean distances
    loss: str = "hinge"  # online: hinge | logistic (slab is hinge, as the released code)
    eta: float | None = None  # step size η (λ starts at 1/η); null: 0.005 (slab) / 2.0 (online)
    rho: float | None = None  # radius ρ of the ball ‖(w, b)‖ ≤ ρ; null: √0.8 (slab) / 50 (online)
    iterations: int = 200  # slab: online-learning iterations
    random_splits: int = 10  # slab: random point-mass splits tried per iteration (besides the heuristic one)
    retrain_epochs: int = 10  # slab: epochs of trainRDA2 in each lower-bound check
    burn_in: int = 500  # online: iterations before the εn that produce poisons


def setting(cfg: SteinhardtConfig, field: str) -> float:
    value = getattr(cfg, field)
    return DEFAULTS[cfg.method][field] if value is None else value


class Steinhardt(Attack):
    def __init__(self, cfg: SteinhardtConfig) -> None:
        self.cfg = cfg
        self.bounds: list[float] = []  # online: U* after each iteration; slab: [lower bound, upper bound]
        self.feasible: FeasibleSet | None = None  # the clean (oracle) set
        self.cache_hit: bool | None = None

    def validate(self, data: DataBundle, *, context: RunContext | None = None) -> None:
        cfg = self.cfg
        check_budget(poison_ratio=cfg.poison_ratio, n_poisons=cfg.n_poisons)
        if context is not None and context.model_name != "lr":
            raise ConfigError(
                "model.name",
                f"the Steinhardt attack is defined for binary linear models; got model={context.model_name}.",
                "use model=lr.",
            )
        if data.num_classes != 2:
            raise ConfigError(
                "dataset.classes",
                f"the Steinhardt attack is defined for binary linear models; {data.name} has {data.num_classes} "
                "classes.",
                "pick two classes, e.g. dataset.classes=[3,8] or dataset=breast_cancer.",
            )
        if cfg.method not in METHODS:
            raise ConfigError("attack.method", f"unknown method {cfg.method!r}.", f"use one of {', '.join(METHODS)}.")
        if not 0.0 < cfg.percentile <= 100.0:
            raise ConfigError("attack.percentile", f"must be in (0, 100] (got {cfg.percentile}).")
        if cfg.loss not in LOSSES:
            raise ConfigError("attack.loss", f"unknown loss {cfg.loss!r}.", f"use one of {', '.join(LOSSES)}.")
        if cfg.method == "slab" and cfg.loss != "hinge":
            raise ConfigError("attack.loss", "method slab is defined for the hinge loss.", "use attack.loss=hinge.")
        for field in ("eta", "rho"):
            if not setting(cfg, field) > 0:
                raise ConfigError(f"attack.{field}", f"must be > 0 or null (got {getattr(cfg, field)}).")
        for field, low in (("burn_in", 0), ("iterations", 1), ("random_splits", 0), ("retrain_epochs", 1)):
            if getattr(cfg, field) < low:
                raise ConfigError(f"attack.{field}", f"must be >= {low} (got {getattr(cfg, field)}).")

    def poison(self, data: DataBundle, *, generator: torch.Generator, context: RunContext | None = None) -> PoisonedSet:
        n = len(data.y_train)
        count = poison_count(poison_ratio=self.cfg.poison_ratio, n_poisons=self.cfg.n_poisons, n_train=n)
        self.feasible = FeasibleSet.fit(
            data.x_train, data.y_train, num_classes=2, percentile=self.cfg.percentile, box=data.box
        )
        seed = generator.initial_seed()
        entry = self._poisons(data, count=count, seed=seed, context=context)
        self.bounds = entry["bounds"].tolist()
        x_p, y_p = final_poisons(entry, box=data.box)
        clean = torch.zeros(n, dtype=torch.bool, device=data.y_train.device)
        return PoisonedSet(
            x=torch.cat([data.x_train, x_p.reshape(count, *data.input_shape).to(data.x_train)]),
            y=torch.cat([data.y_train, y_p.to(data.y_train)]),
            is_poison=torch.cat([clean, torch.ones(count, dtype=torch.bool, device=clean.device)]),
        )

    def _poisons(self, data: DataBundle, *, count: int, seed: int, context: RunContext | None) -> dict:
        """The stored poisons: ``points`` (k, d) before clipping, ``labels``, ``counts`` (copies), ``bounds``."""

        def compute() -> dict[str, torch.Tensor]:
            CRAFTS["count"] += 1
            return self.craft(data.x_train, data.y_train, count=count, seed=seed)

        def check(entry: dict[str, torch.Tensor]) -> None:
            check_entry(entry, feasible=self.feasible, method=self.cfg.method, count=count, dim=data.x_train[0].numel())

        if context is None:  # unit use without a run: no cache
            self.cache_hit = False
            return compute()
        cfg = dataclasses.asdict(self.cfg) | {"eta": setting(self.cfg, "eta"), "rho": setting(self.cfg, "rho")}
        for key in ("poison_ratio", "n_poisons"):  # the count below is what they determine
            cfg.pop(key)
        spec = {
            "data": fingerprint(data.x_train, data.y_train),
            "box": list(data.box),
            "attack": cfg,
            "count": count,
            "seed": seed if self.cfg.method == "slab" else None,  # online is deterministic
            "device": context.device.type,
            "version": VERSION,
        }
        entry, self.cache_hit = cached_tensors(context.cache_dir, "steinhardt_poisons", spec, compute, check=check)
        log.info("steinhardt poisons %s", "read from the cache" if self.cache_hit else "crafted and cached")
        return {k: v.to(data.x_train.device) for k, v in entry.items()}

    def craft(self, x: torch.Tensor, y: torch.Tensor, *, count: int, seed: int) -> dict[str, torch.Tensor]:
        """The poisons of ``self.cfg.method`` as a cache entry (``self.feasible`` must be fitted)."""
        cfg = self.cfg
        eta, rho = setting(cfg, "eta"), setting(cfg, "rho")
        if cfg.method == "online":
            xs, ys, bounds = online_attack(
                x, y, count=count, feasible=self.feasible, loss=cfg.loss, eta=eta, rho=rho, burn_in=cfg.burn_in
            )
            ones = torch.ones(count, dtype=torch.int64, device=ys.device)
            return {"points": xs.double(), "labels": ys, "counts": ones, "bounds": torch.tensor(bounds).double()}
        res = slab_attack.craft(
            x, y, count=count, feasible=self.feasible, eta=eta, rho=rho, iterations=cfg.iterations,
            random_splits=cfg.random_splits, retrain_epochs=cfg.retrain_epochs,
            generator=torch.Generator().manual_seed(seed),
        )  # fmt: skip
        bounds = torch.tensor([res.lower_bound, res.upper_bound], dtype=torch.float64)
        return {"points": res.points, "labels": res.labels, "counts": res.counts, "bounds": bounds}

    def extra_metrics(self) -> dict[str, Any]:
        out: dict[str, Any] = {"certified_upper_bound": self.bounds[-1] if self.bounds else None}
        if self.cfg.method == "slab" and self.bounds:
            out["slab_lower_bound"] = self.bounds[0]
        return out | {"poisons_cached": self.cache_hit}


def final_poisons(entry: dict[str, torch.Tensor], *, box: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Each stored point clipped into ``box`` (Hong's ``np.clip(x_poison, 0, 1)``) and repeated ``counts`` times."""
    counts = entry["counts"]
    x = entry["points"].float().clamp(*box).repeat_interleave(counts, dim=0)
    return x, entry["labels"].repeat_interleave(counts)


def check_entry(entry: dict, *, feasible: FeasibleSet, method: str, count: int, dim: int) -> None:
    """Raise StaleEntry unless ``entry`` holds ``count`` poisons of this data, inside the set they target."""
    if not {"points", "labels", "counts", "bounds"} <= set(entry):
        raise StaleEntry("it lacks points, labels, counts or bounds")
    points, labels, counts = entry["points"], entry["labels"], entry["counts"]
    if points.ndim != 2 or points.shape[1] != dim or not len(points) == len(labels) == len(counts):
        raise StaleEntry(f"its points are not (k, {dim}) with one label and count each")
    if labels.is_floating_point() or not bool(((labels == 0) | (labels == 1)).all()):
        raise StaleEntry("its labels are not all 0 or 1")
    if counts.is_floating_point() or bool((counts < 0).any()) or int(counts.sum()) != count:
        raise StaleEntry(f"its counts do not add up to {count} poisons")
    used = counts > 0
    points, labels, counts = points[used], labels[used].to(feasible.centroids.device), counts[used]
    lo, hi = feasible.box
    if method == "online":
        target = feasible  # crafted inside the box and the oracle set
        if bool(((points < lo - 1e-6) | (points > hi + 1e-6)).any()):
            raise StaleEntry(f"its poisons leave the box [{lo}, {hi}]")
    else:  # crafted before clipping, inside the defense built on the poisoned data
        target = feasible.with_poisons(points, labels, counts.to(labels.device))
    if len(points) and not bool(target.contains(points.to(feasible.centroids), labels, tol=FEASIBLE_TOL).all()):
        raise StaleEntry("its poisons leave the sphere ∩ slab they were crafted for")
