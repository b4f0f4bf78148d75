"""Steinhardt, Koh & Liang's attack on the data-dependent sphere + slab defense (2017 §5), as their released
``slabAttack.m`` runs it — the code that wrote Hong et al.'s ``fmnist_34_attack_eps<k>_quantile65_rho_slab_v7.mat``.

Hinge loss on ``f(x) = ⟨θ, x⟩ + b``, labels ±1 (label 1 ↦ +1). Online learning by dual averaging on the ball
``‖(θ, b)‖ ≤ ρ``: ``z = −∇L_c(0)``, ``λ = max(1/η, ‖z‖/ρ)``, ``θ = z/λ``; then for ``t = 1 … iterations``:

1. For the heuristic split ``q = ε (p₊, 0, p₋, 0)`` and ``random_splits`` draws ``q = ε·Dirichlet(p₊, p₊, p₋, p₋)``,
   solve the inner problem (``slab_inner``: four points, masses q, the defense built on the poisoned centroids);
   keep the split with the largest value.
2. ``z −= ∇L_c(θ) + Σᵢ qᵢ ∇ℓ(θ; xᵢ, yᵢ)``;  ``λ = max(λ, ‖z‖/ρ)``;  ``θ = z/λ``.
3. At t ∈ {3, 6, …, 48} ∪ {50, 60, …} ∪ {last} ("lower-bound check"): ``count`` poisons are copies of the four
   points in proportion to q; a hinge model is trained on clean + poisons (``retrain``, ``trainRDA2.m``: per-sample
   dual averaging, ``retrain_epochs`` passes) and its clean hinge loss scored. The poisons of the highest-scoring
   check are the attack (``bestX(1,:,:)`` in the .mat).

The result is a handful of distinct points (Hong et al. §7.1: 3,970 copies of one coat image and 350 dresses of
two kinds at ε = 0.4), which the caller clips into the data's box as Hong's ``do_ipoisoning.py`` does.
``upper_bound`` is min_t [L_c(θ_t) + best split value]: the released code's upper-bound estimate, from the splits
tried (it samples 200 fresh ones every ⌈0.126·T⌉ iterations), not a certificate.

Simplified (docs/deviations.md): copies are allotted by largest-remainder rounding of ``count·q/ε`` (the original
draws them from a multinomial); the checks run after the last iteration, all candidates in one per-sample pass
sharing one order (the original trains each at its iteration with a fresh order); radii are the
percentiles of all clean points of a class (``computeTau.m`` uses its first 1,000); the inner problem is solved
in span(μ₊, μ₋, θ) (see ``slab_inner``), where the original's SDP may also use four random directions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from gsdefense.attacks import slab_inner
from gsdefense.attacks.feasible import FeasibleSet


@dataclass
class SlabResult:
    points: torch.Tensor  # (4, d) float64, before clipping: x_a⁺, x_b⁺, x_a⁻, x_b⁻
    labels: torch.Tensor  # (4,) 0/1 labels: 1, 1, 0, 0
    counts: torch.Tensor  # (4,) copies of each point
    masses: np.ndarray  # (4,) the split q (fractions of n, Σ = ε)
    lower_bound: float  # clean hinge loss of the best check's retrained model
    upper_bound: float


def hinge(x: torch.Tensor, sign: torch.Tensor, w: torch.Tensor, b: torch.Tensor, weight: torch.Tensor):
    """``Σ weightᵢ max(0, 1 − sᵢ(⟨w, xᵢ⟩ + b))`` and its (sub)gradient in w and b."""
    margin = sign * (x @ w.to(x.dtype) + b).to(sign.dtype)
    coef = -weight * (margin < 1).to(weight.dtype) * sign
    loss = (weight * (1 - margin).clamp_min(0)).sum()
    return loss, coef.to(x.dtype) @ x, coef.sum()


def check_schedule(iterations: int) -> set[int]:
    """Iterations at which ``slabAttack.m`` trains against the current attack."""
    early = {t for t in range(3, min(50, iterations + 1), 3)}
    return early | {t for t in range(50, iterations + 1, 10)} | {iterations}


def allot(masses: np.ndarray, count: int) -> np.ndarray:
    """``count`` copies split in proportion to ``masses`` (largest remainders)."""
    raw = masses / masses.sum() * count
    out = np.floor(raw).astype(np.int64)
    out[np.argsort(-(raw - out), kind="stable")[: count - int(out.sum())]] += 1
    return out


def retrain(x, sign, points, point_sign, counts, *, eta: float, rho: float, epochs: int, rng) -> tuple[np.ndarray, ...]:
    """``trainRDA2.m`` for m candidate attacks at once: clean hinge loss and accuracy of each trained model.

    Candidate j trains on the clean ``(x, sign)`` plus ``counts[j, k]`` copies of ``points[j, k]`` (labels
    ``point_sign``): ``epochs`` passes in one random order (shared by the candidates); at each sample with margin
    ``y(⟨θ, x⟩ + b) < 1``: ``z += y(x, 1)``, ``λ = max(λ, ‖z‖/ρ)``, ``θ = z/λ``, regret ``R += ½‖(x, 1)‖²/λ``;
    whenever ``R > ½ρ²/η``, η halves and ``λ = max(λ, 1/η)`` (θ waits for the next update). Per-sample, so on
    the host in float64; one (m, d) product per sample. Arrays: x (n, d), points (m, 4, d), counts (m, 4).
    """
    (n, d), m = x.shape, len(points)
    pidx = np.stack([np.repeat(np.arange(4), c) for c in counts])  # (m, count): the point each copy is
    rows, x_sq, p_sq = np.arange(m), (x * x).sum(1) + 1.0, (points * points).sum(2) + 1.0
    z, z_b, z_sq = np.zeros((m, d)), np.zeros(m), np.zeros(m)  # z_sq = ‖(z, z_b)‖², kept incrementally
    lam, eta_j, regret = np.full(m, 1.0 / eta), np.full(m, eta), np.zeros(m)
    lam_theta = lam.copy()  # the λ of the current θ = z / λ_θ
    for _ in range(epochs):
        for s in rng.permutation(n + pidx.shape[1]):
            if s < n:
                xs, ys, g_sq = x[s], sign[s], x_sq[s]
                dot = z @ xs + z_b
            else:
                k = pidx[:, s - n]
                xs, ys, g_sq = points[rows, k], point_sign[k], p_sq[rows, k]
                dot = np.einsum("md,md->m", z, xs) + z_b
            active = ys * dot < lam_theta  # margin y(⟨θ, x⟩ + b) < 1
            if active.any():
                z_sq = np.where(active, z_sq + 2 * ys * dot + g_sq, z_sq)
                z[active] += (ys * xs.T).T[active] if s >= n else ys * xs
                z_b = np.where(active, z_b + ys, z_b)
                lam = np.where(active, np.maximum(lam, np.sqrt(z_sq) / rho), lam)
                lam_theta = np.where(active, lam, lam_theta)
                regret = np.where(active, regret + 0.5 * g_sq / lam, regret)
            halve = regret > 0.5 * rho**2 / eta_j
            if halve.any():
                eta_j = np.where(halve, eta_j / 2, eta_j)
                lam = np.maximum(lam, 1.0 / eta_j)
    margins = sign[:, None] * (x @ z.T + z_b) / lam_theta
    return np.clip(1 - margins, 0, None).mean(0), (margins > 0).mean(0)


def craft(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    count: int,
    feasible: FeasibleSet,
    eta: float,
    rho: float,
    iterations: int,
    random_splits: int,
    retrain_epochs: int,
    generator: torch.Generator,
) -> SlabResult:
    """The attack of the module docstring on clean ``(x, y)`` (y in {0, 1}); ``feasible`` holds the clean radii."""
    with threadpool_limits(1):  # the inner problems are tiny: BLAS threads only contend
        return _craft(x, y, count=count, feasible=feasible, eta=eta, rho=rho, iterations=iterations,
                      random_splits=random_splits, retrain_epochs=retrain_epochs, generator=generator)  # fmt: skip


def _craft(x, y, *, count, feasible, eta, rho, iterations, random_splits, retrain_epochs, generator) -> SlabResult:
    x = x.reshape(len(x), -1).float()
    dev, d, n = x.device, x.shape[1], len(y)
    sign = y.to(torch.float64) * 2 - 1
    eps = count / n
    rng = np.random.default_rng(int(torch.randint(2**62, (1,), generator=generator)))
    # classes in the released code's order: row 0 = +1 (label 1), row 1 = −1 (label 0)
    mu = feasible.centroids.flip(0).to(dev)
    priors = np.array([float((y == 1).double().mean()), float((y == 0).double().mean())])
    radii = feasible.radii.flip(0).cpu().numpy()
    half = (feasible.slab_radii / feasible.slab_dirs.norm(dim=1)).flip(0).cpu().numpy()
    mu_host = mu.cpu().numpy()
    point_sign = torch.tensor(slab_inner.SIGN, dtype=torch.float64, device=dev)
    labels = torch.tensor([1, 1, 0, 0], device=dev)
    ones = torch.full((n,), 1.0 / n, dtype=torch.float64, device=dev)

    _, g_w, g_b = hinge(x, sign, torch.zeros(d, device=dev), torch.zeros((), device=dev), ones)
    z_w, z_b = -g_w.double(), -g_b
    lam = max(1.0 / eta, float(torch.sqrt(z_w.square().sum() + z_b.square())) / rho)
    w, b = z_w / lam, z_b / lam
    checks = check_schedule(iterations)
    candidates: list[tuple[torch.Tensor, np.ndarray]] = []  # (points, copies) of each lower-bound check
    upper = float("inf")
    for t in range(1, iterations + 1):
        w_host = w.cpu().numpy()
        basis, _ = np.linalg.qr(np.concatenate([mu_host.T, w_host[:, None]], 1)[:, : min(d, 3)])
        cent, theta = mu_host @ basis, w_host @ basis
        splits = [eps * np.array([priors[0], 0.0, priors[1], 0.0])]
        splits += [eps * g / g.sum() for g in (rng.gamma(priors[[0, 0, 1, 1]]) for _ in range(random_splits))]
        solved = [
            slab_inner.solve(
                centroids=cent, theta=theta, bias=float(b), priors=priors, masses=q, radii=radii, half_widths=half
            )  # fmt: skip
            for q in splits
        ]
        k = int(np.argmax([v for v, _ in solved]))
        value, coords = solved[k]
        masses = splits[k]
        if not np.isfinite(value):  # no split feasible: the released code falls back to the clean centroids
            coords, masses = cent[slab_inner.CLASS], splits[0]
        points = torch.from_numpy(coords @ basis.T).to(dev)
        clean_loss, g_w, g_b = hinge(x, sign, w, b, ones)
        _, p_w, p_b = hinge(points, point_sign, w, b, torch.from_numpy(masses).to(dev))
        # no feasible split: no poison can be a support vector, so the poisons add no hinge loss to the bound
        upper = min(upper, float(clean_loss) + (value if np.isfinite(value) else 0.0))
        if t in checks and count > 0 and np.isfinite(value):
            # whole copies: re-solve at the rounded masses, so that the stored points pass the defense those
            # copies build (at εn in the thousands this barely moves them)
            counts = allot(masses, count)
            exact, coords = slab_inner.solve(centroids=cent, theta=theta, bias=float(b), priors=priors,
                                             masses=counts / n, radii=radii, half_widths=half)  # fmt: skip
            if np.isfinite(exact):
                candidates.append((torch.from_numpy(coords @ basis.T).to(dev), counts))
        z_w, z_b = z_w - g_w.double() - p_w, z_b - g_b - p_b
        lam = max(lam, float(torch.sqrt(z_w.square().sum() + z_b.square())) / rho)
        w, b = z_w / lam, z_b / lam
    if not candidates:  # count == 0, or no check was feasible: the clean centroids, as the released fallback
        copies = allot(np.array([priors[0], 0.0, priors[1], 0.0]), count) if count else np.zeros(4, np.int64)
        points = mu[torch.from_numpy(slab_inner.CLASS).to(dev)].double()
        return SlabResult(points, labels, torch.from_numpy(copies).to(dev), copies / n, 0.0, upper)
    # the checks train against each candidate (all at once: they are independent); the best clean loss wins
    copies = np.stack([k for _, k in candidates])
    stacked = torch.stack([c for c, _ in candidates]).cpu().numpy()
    host_x, host_sign = x.double().cpu().numpy(), sign.cpu().numpy()
    scores, _ = retrain(host_x, host_sign, stacked, slab_inner.SIGN, copies, eta=eta / (1 + eps), rho=rho,
                        epochs=retrain_epochs, rng=rng)  # fmt: skip
    j = int(np.argmax(scores))  # the first of equal scores, as the released code's strict ">"
    points = candidates[j][0]
    return SlabResult(points, labels, torch.from_numpy(copies[j]).to(dev), copies[j] / n, float(scores[j]), upper)
