"""Poison crafting for Poison Frogs (Shafahi et al., NeurIPS 2018, §2.1 and Algorithm 1).

A poison ``p`` for target ``t`` and base ``b`` solves

    p = argmin_x  ‖f(x) − f(t)‖²  +  (β/2)·‖x − b‖²,   x in the data box,

where ``f`` is the victim's penultimate-layer feature map. Algorithm 1 alternates

    forward:   x̂ ← x − λ·∇_x ‖f(x) − f(t)‖²
    backward:  x  ← (x̂ + λβ·b) / (1 + λβ)

The backward step is the exact proximal map of λ·(β/2)‖x − b‖² (Shafahi print the objective with β and the
step with λβ; we keep the step and read β/2 in the objective). Clipping into the box afterwards keeps it
exact, because the penalty and the box are separable per coordinate. A step that raises the objective is
rejected and that candidate's λ halved (backtracking), so the objective never increases whatever ``step_size``.
All candidate bases of one target are optimised at once as one batch (``f`` treats samples independently).
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass

import torch
from torch import nn


def feature_space(model: nn.Module) -> str:
    """``logits`` for a model whose only parametric layer is its classifier (``lr``), else ``penultimate``.

    A linear model has no hidden representation: Hong et al.'s ``LinearRegression`` returns its logits as its
    "penultimate" output, and their poisons collide there. Colliding in its *input* instead would simply move
    the poison onto the target's pixels.
    """
    parametric = [m for m in model.modules() if any(True for _ in m.parameters(recurse=False))]
    return "logits" if len(parametric) == 1 and isinstance(parametric[0], nn.Linear) else "penultimate"


def feature_extractor(model: nn.Module) -> nn.Module:
    """A frozen copy of ``model`` that outputs its ``feature_space``.

    ``penultimate``: the last ``nn.Linear`` (for every model in ``gsdefense.models``, the classifier head) is
    replaced by the identity. ``logits``: the model itself (``lr``).
    """
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not names:
        raise ValueError(f"{type(model).__name__} has no Linear layer to strip")
    extractor = copy.deepcopy(model).eval().requires_grad_(False)
    if feature_space(model) == "logits":
        return extractor
    *path, leaf = names[-1].split(".")
    parent = extractor.get_submodule(".".join(path)) if path else extractor
    setattr(parent, leaf, nn.Identity())
    return extractor


@torch.no_grad()
def features(extractor: nn.Module, x: torch.Tensor, *, chunk: int = 4096) -> torch.Tensor:
    """``f(x)`` flattened to ``(n, d)``."""
    return torch.cat([extractor(part).flatten(1) for part in x.split(chunk)])


def nearest(query: torch.Tensor, pool: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the ``count`` rows of ``pool`` closest to ``query`` in ℓ2, nearest first."""
    dist = torch.cdist(query[None], pool)[0]
    return dist.topk(min(count, len(pool)), largest=False).indices


def feature_gain(extractor: nn.Module, target: torch.Tensor, bases: torch.Tensor) -> float:
    """``median_b ‖f(t) − f(b)‖² / ‖t − b‖²``: how strongly ``f`` stretches the way from a base to the target.

    For ``f(x) = γ·x + c`` (gain γ²) the objective ``‖f(p) − f(t)‖² + (β/2)‖p − b‖²`` is minimised at
    ``p = b + s·(t − b)`` with ``s = 2γ² / (2γ² + β)``: β = k·gain stops the poison ``2/(2 + k)`` of the way.
    """
    f_t = features(extractor, target[None])
    f_b = features(extractor, bases)
    moved = (f_b - f_t).pow(2).sum(1)
    span = (bases - target[None]).flatten(1).pow(2).sum(1).clamp_min(1e-12)
    return float((moved / span).median())


def proximal_step(x_hat: torch.Tensor, base: torch.Tensor, *, step: torch.Tensor | float, beta: float) -> torch.Tensor:
    """argmin_x (β/2)‖x − b‖² + ‖x − x̂‖²/(2λ)  =  (x̂ + λβ·b) / (1 + λβ)."""
    return (x_hat + step * beta * base) / (1 + step * beta)


def state_digest(model: nn.Module) -> str:
    """A hash of the model's weights and buffers: identifies a pretrained checkpoint for the poison cache."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:24]


def tensor_digest(*tensors: torch.Tensor) -> str:
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(tensor.detach().cpu().float().contiguous().numpy().tobytes())
    return digest.hexdigest()[:24]


@dataclass
class Crafted:
    poisons: torch.Tensor  # (n, *input_shape), in the box
    feature_distance: torch.Tensor  # (n,) ‖f(p) − f(t)‖
    perturbation: torch.Tensor  # (n,) ‖p − b‖
    iterations: int


def craft(
    extractor: nn.Module,
    target: torch.Tensor,
    bases: torch.Tensor,
    *,
    step_size: float,
    beta: float,
    max_iters: int,
    box: tuple[float, float],
    check_every: int = 50,
    rel_tol: float = 1e-4,
) -> Crafted:
    """Run forward-backward splitting from ``p = b`` for every base in ``bases`` (one batch).

    Stops after ``max_iters`` iterations, or earlier once no candidate's objective fell by more than
    ``rel_tol`` (relative) over the last ``check_every`` iterations.
    """
    bases = bases.detach()
    with torch.no_grad():
        target_feat = extractor(target[None]).flatten(1)
    shape = (-1,) + (1,) * (bases.dim() - 1)

    def objective(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = x.detach().requires_grad_(True)
        collision = (extractor(x).flatten(1) - target_feat).pow(2).sum(1)
        (grad,) = torch.autograd.grad(collision.sum(), x)  # rows are independent: per-candidate gradients
        penalty = 0.5 * beta * (x.detach() - bases).flatten(1).pow(2).sum(1)
        return collision.detach() + penalty, collision.detach(), grad

    p = bases.clone()
    step = torch.full((len(bases),), float(step_size), device=bases.device)
    obj, collision, grad = objective(p)
    checkpoint = obj.clone()
    it = 0
    for it in range(1, max_iters + 1):
        lam = step.view(shape)
        cand = proximal_step(p - lam * grad, bases, step=lam, beta=beta).clamp(*box)
        obj_c, collision_c, grad_c = objective(cand)
        better = obj_c <= obj
        keep = better.view(shape)
        p = torch.where(keep, cand, p)
        grad = torch.where(keep, grad_c, grad)
        obj, collision = torch.where(better, obj_c, obj), torch.where(better, collision_c, collision)
        step = torch.where(better, step, step * 0.5)
        if it % check_every == 0:
            if bool(((checkpoint - obj) <= rel_tol * checkpoint.clamp_min(1e-12)).all()):
                break
            checkpoint = obj.clone()
    return Crafted(
        poisons=p.detach(),
        feature_distance=collision.sqrt(),
        perturbation=(p - bases).flatten(1).norm(dim=1),
        iterations=it,
    )
