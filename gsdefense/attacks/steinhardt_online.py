"""Algorithm 1 of Steinhardt, Koh & Liang (2017) against the oracle sphere ∩ slab ∩ box (``method: online``).

With ``n`` clean points and ``ε = count/n``, start ``z = 0, λ = 1/η, θ = (w, b) = 0`` and for
``t = 1 … burn_in + εn``::

    (x_t, y_t) = argmax_{(x, y) ∈ F} ℓ(θ; x, y)        # = argmin of the margin: a linear objective over F
    U* = min(U*, L(θ; D_c)/n + ε·ℓ(θ; x_t, y_t))
    g = ∇L(θ; D_c)/n + ε·∇ℓ(θ; x_t, y_t);  z -= g;  λ = max(λ, ‖z‖/ρ);  θ = z/λ

and the last εn points ``(x_t, y_t)`` are the poisons. ``F`` is the clean data's sphere ∩ slab ∩ box
(``FeasibleSet``); ℓ is the hinge ``max(0, 1 − m)`` or the logistic ``log(1 + e^{−m})`` of the margin ``m``.
The released code likewise runs extra iterations and throws the first ones out (``burn_in``; 0 is Algorithm 1
verbatim), so that small data sets still get poisons aimed at a converged θ.
"""

from __future__ import annotations

import torch

from gsdefense.attacks.feasible import FeasibleSet


def margin_loss(margin: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """φ(m) and dφ/dm for the hinge or logistic loss."""
    if kind == "hinge":
        return (1 - margin).clamp_min(0), -(margin < 1).to(margin)
    return torch.nn.functional.softplus(-margin), -torch.sigmoid(-margin)


def online_attack(
    x: torch.Tensor, y: torch.Tensor, *, count: int, feasible: FeasibleSet, loss: str, eta: float, rho: float,
    burn_in: int,
) -> tuple[torch.Tensor, torch.Tensor, list[float]]:  # fmt: skip
    """``count`` poisons (flat x in the box, 0/1 labels) and U* after each iteration."""
    x = x.reshape(len(x), -1).double()
    sign = y.double() * 2 - 1  # 0/1 -> −1/+1
    n, eps = len(y), count / len(y)
    w = torch.zeros(x.shape[1], dtype=x.dtype, device=x.device)
    b = torch.zeros((), dtype=x.dtype, device=x.device)
    z_w, z_b, lam = torch.zeros_like(w), torch.zeros_like(b), 1.0 / eta
    labels = torch.tensor([0, 1], device=y.device)
    best = float("inf")
    bounds, poisons_x, poisons_y = [], [], []
    for t in range(burn_in + count):
        clean_loss, dclean = margin_loss(sign * (x @ w + b), loss)
        # Lowest margin y·(⟨w, x⟩ + b) per label: maximise ⟨−y·w, x⟩ over F_y, then keep the worse label.
        cand = feasible.argmax_linear(torch.stack([w, -w]), labels)
        cand_loss, dcand = margin_loss(torch.tensor([-1.0, 1.0]).to(w) * (cand @ w + b), loss)
        k = int(cand_loss.argmax())
        best = min(best, float(clean_loss.mean() + eps * cand_loss[k]))
        bounds.append(best)
        coef = dclean * sign / n  # ∇ of the mean clean loss: Σ φ'(m_i)·y_i·(x_i, 1) / n
        y_k = 2.0 * k - 1
        g_w = coef @ x + eps * dcand[k] * y_k * cand[k]
        g_b = coef.sum() + eps * dcand[k] * y_k
        z_w, z_b = z_w - g_w, z_b - g_b
        lam = max(lam, float(torch.sqrt(z_w.square().sum() + z_b.square())) / rho)
        w, b = z_w / lam, z_b / lam
        if t >= burn_in:
            poisons_x.append(cand[k])
            poisons_y.append(k)
    xs = torch.stack(poisons_x).float() if poisons_x else x.new_zeros((0, x.shape[1])).float()
    return xs.clamp(*feasible.box), torch.tensor(poisons_y, dtype=torch.int64, device=y.device), bounds
