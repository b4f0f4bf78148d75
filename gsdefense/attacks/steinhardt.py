"""The online attack of Steinhardt, Koh & Liang (NeurIPS 2017, Algorithm 1) — Hong et al.'s "SOTA" attack (§6.2).

Binary task, linear model ``f(x) = ⟨w, x⟩ + b`` on flattened pixels, labels ``y ∈ {−1, +1}`` (0 ↦ −1, 1 ↦ +1),
``θ = (w, b)``, margin loss ``ℓ(θ; x, y) = φ(y·f(x))`` with φ the hinge ``max(0, 1 − m)`` (the paper's SVM loss;
``loss: logistic`` uses ``log(1 + e^{−m})``). With ``n`` clean points and ``ε = count/n``, start ``z = 0, λ = 1/η,
θ = 0`` and for ``t = 1 … εn``::

    (x_t, y_t) = argmax_{(x, y) ∈ F} ℓ(θ; x, y)        # = argmin of the margin: a linear objective over F
    U* = min(U*, L(θ; D_c)/n + ε·ℓ(θ; x_t, y_t))
    g = ∇L(θ; D_c)/n + ε·∇ℓ(θ; x_t, y_t);  z -= g;  λ = max(λ, ‖z‖/ρ);  θ = z/λ

``F`` is sphere ∩ slab of the *clean* data (oracle centroids, radii at ``percentile``) ∩ the data's box; the
argmax is solved exactly per label by ``feasible.FeasibleSet.argmax_linear``. The poisons ``D_p = {(x_t, y_t)}``
are appended; ``extra_metrics`` reports ``certified_upper_bound`` = U*.

Simplifications (all in docs/deviations.md): the victim is trained with softmax cross-entropy on the
dataset's ``input_norm`` inputs (raw pixels for FashionMNIST-3/4, as Hong et al.), not the hinge model the
attack optimises against; U* bounds the attack's hinge (or logistic) loss in pixel space, not the victim's.
Steinhardt et al.'s released code runs extra iterations and throws the first ones out; likewise ``burn_in``
(default 500; 0 is Algorithm 1 verbatim) iterations run before the εn that produce poisons, so that small
data sets (εn of a few dozen) still get poisons aimed at a converged θ. η and ρ are not given in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from gsdefense.attacks.base import Attack, PoisonedSet, RunContext, check_budget, poison_count
from gsdefense.attacks.feasible import FeasibleSet
from gsdefense.data.bundle import DataBundle
from gsdefense.errors import ConfigError

LOSSES = ("hinge", "logistic")


@dataclass
class SteinhardtConfig:
    name: str = "steinhardt"
    poison_ratio: float | None = 0.1  # poisons per clean training sample (ε)
    n_poisons: int | None = None  # alternative to poison_ratio
    percentile: float = 70.0  # sphere/slab radii (the paper shows 70; the original gradient-shaping code used 65)
    loss: str = "hinge"
    eta: float = 2.0  # step size η: λ starts at 1/η
    rho: float = 50.0  # radius ρ of the parameter ball ‖θ‖ ≤ ρ
    burn_in: int = 500  # iterations before the εn that produce poisons


def margin_loss(margin: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """φ(m) and dφ/dm for the hinge or logistic loss."""
    if kind == "hinge":
        return (1 - margin).clamp_min(0), -(margin < 1).to(margin)
    return torch.nn.functional.softplus(-margin), -torch.sigmoid(-margin)


class Steinhardt(Attack):
    def __init__(self, cfg: SteinhardtConfig) -> None:
        self.cfg = cfg
        self.bounds: list[float] = []  # U* after each iteration
        self.feasible: FeasibleSet | None = None

    def validate(self, data: DataBundle, *, context: RunContext | None = None) -> None:
        check_budget(poison_ratio=self.cfg.poison_ratio, n_poisons=self.cfg.n_poisons)
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
        if not 0.0 < self.cfg.percentile <= 100.0:
            raise ConfigError("attack.percentile", f"must be in (0, 100] (got {self.cfg.percentile}).")
        if self.cfg.loss not in LOSSES:
            raise ConfigError("attack.loss", f"unknown loss {self.cfg.loss!r}.", f"use one of {', '.join(LOSSES)}.")
        for field in ("eta", "rho"):
            if not getattr(self.cfg, field) > 0:
                raise ConfigError(f"attack.{field}", f"must be > 0 (got {getattr(self.cfg, field)}).")
        if self.cfg.burn_in < 0:
            raise ConfigError("attack.burn_in", f"must be >= 0 (got {self.cfg.burn_in}).")

    def poison(self, data: DataBundle, *, generator: torch.Generator, context: RunContext | None = None) -> PoisonedSet:
        n = len(data.y_train)
        count = poison_count(poison_ratio=self.cfg.poison_ratio, n_poisons=self.cfg.n_poisons, n_train=n)
        self.feasible = FeasibleSet.fit(
            data.x_train, data.y_train, num_classes=2, percentile=self.cfg.percentile, box=data.box
        )
        x_p, y_p = self.craft(data.x_train, data.y_train, count=count)
        clean = torch.zeros(n, dtype=torch.bool, device=data.y_train.device)
        return PoisonedSet(
            x=torch.cat([data.x_train, x_p.reshape(count, *data.input_shape).to(data.x_train)]),
            y=torch.cat([data.y_train, y_p.to(data.y_train)]),
            is_poison=torch.cat([clean, torch.ones(count, dtype=torch.bool, device=clean.device)]),
        )

    def craft(self, x: torch.Tensor, y: torch.Tensor, *, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Algorithm 1: ``count`` poisons (flat x, 0/1 labels); fills ``self.bounds``."""
        feasible, cfg = self.feasible, self.cfg
        x = x.reshape(len(x), -1).double()
        sign = y.double() * 2 - 1  # 0/1 -> −1/+1
        n, eps = len(y), count / len(y)
        w = torch.zeros(x.shape[1], dtype=x.dtype, device=x.device)
        b = torch.zeros((), dtype=x.dtype, device=x.device)
        z_w, z_b, lam = torch.zeros_like(w), torch.zeros_like(b), 1.0 / cfg.eta
        labels = torch.tensor([0, 1], device=y.device)
        best = float("inf")
        self.bounds, poisons_x, poisons_y = [], [], []
        for t in range(cfg.burn_in + count):
            clean_loss, dclean = margin_loss(sign * (x @ w + b), cfg.loss)
            # Lowest margin y·(⟨w, x⟩ + b) per label: maximise ⟨−y·w, x⟩ over F_y, then keep the worse label.
            cand = feasible.argmax_linear(torch.stack([w, -w]), labels)
            cand_loss, dcand = margin_loss(torch.tensor([-1.0, 1.0]).to(w) * (cand @ w + b), cfg.loss)
            k = int(cand_loss.argmax())
            best = min(best, float(clean_loss.mean() + eps * cand_loss[k]))
            self.bounds.append(best)
            coef = dclean * sign / n  # ∇ of the mean clean loss: Σ φ'(m_i)·y_i·(x_i, 1) / n
            y_k = 2.0 * k - 1
            g_w = coef @ x + eps * dcand[k] * y_k * cand[k]
            g_b = coef.sum() + eps * dcand[k] * y_k
            z_w, z_b = z_w - g_w, z_b - g_b
            lam = max(lam, float(torch.sqrt(z_w.square().sum() + z_b.square())) / cfg.rho)
            w, b = z_w / lam, z_b / lam
            if t >= cfg.burn_in:
                poisons_x.append(cand[k])
                poisons_y.append(k)
        xs = torch.stack(poisons_x).float() if poisons_x else x.new_zeros((0, x.shape[1])).float()
        return xs.clamp(*feasible.box), torch.tensor(poisons_y, dtype=torch.int64, device=y.device)

    def extra_metrics(self) -> dict[str, Any]:
        return {"certified_upper_bound": self.bounds[-1] if self.bounds else None}
