"""The inner maximisation of Steinhardt, Koh & Liang's data-dependent sphere + slab attack (2017 §5).

Four poisons ``x_a⁺, x_b⁺, x_a⁻, x_b⁻`` (labels +1, +1, −1, −1) with masses ``q = (q_a⁺, q_b⁺, q_a⁻, q_b⁻)``
(fractions of the n clean points, Σq = ε) move the class centroids the defender estimates from the poisoned data::

    m₊ = (p₊ μ₊ + q_a⁺ x_a⁺ + q_b⁺ x_b⁺) / (p₊ + q_a⁺ + q_b⁺)      (m₋ likewise; Δ = m₊ − m₋)

and must pass the defense built around them, with the clean radii ``r_y`` and slab half-widths ``h_y`` (the clean
slab radius over ‖μ₊ − μ₋‖, a distance along Δ/‖Δ‖)::

    max   q_a⁺ (1 − ⟨x_a⁺, θ⟩ − b) + q_a⁻ (1 + ⟨x_a⁻, θ⟩ + b)          # hinge loss of the "a" (support) points
    s.t.  ‖x − m_y‖ ≤ r_y,   ⟨x − m_y, Δ⟩² ≤ h_y² ‖Δ‖²               # for each of the four points
          ⟨x_a⁺, θ⟩ + b ≤ 1,   ⟨x_a⁻, θ⟩ + b ≥ −1                     # the a points are support vectors

Everything depends on the points only through inner products with ``μ₊, μ₋, θ`` and each other. The released
code (``slabAttack.m`` / ``upperBoundTrue.m``) solves it as an SDP over the 7×7 Gram matrix of the four points
and ``μ₊, μ₋, θ`` (SeDuMi through YALMIP), exact for d ≥ 7, and completes the points with random directions
orthogonal to that span. Here SciPy's SLSQP (analytic Jacobians, a local method) solves it in the coordinates of
span(μ₊, μ₋, θ) from the clean centroids: directions orthogonal to the span are stationary there (the iterates of
a 7-dimensional version never leave the span), and random restarts off the span found no better value on
FashionMNIST-3/4 (docs/deviations.md); the tests compare it with random feasible configurations.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize

CLASS = np.array([0, 0, 1, 1])  # x_a⁺, x_b⁺ → class +1 (row 0); x_a⁻, x_b⁻ → class −1 (row 1)
SIGN = np.array([1.0, 1.0, -1.0, -1.0])
FEASIBLE_TOL = 1e-7  # relative slack a returned solution may violate a constraint by


def solve(
    *,
    centroids: np.ndarray,
    theta: np.ndarray,
    bias: float,
    priors: np.ndarray,
    masses: np.ndarray,
    radii: np.ndarray,
    half_widths: np.ndarray,
) -> tuple[float, np.ndarray]:
    """``(value, points)`` for one mass split (any number k of coordinates); ``value = −inf`` if none is feasible.

    Call it under ``threadpoolctl.threadpool_limits(1)``: BLAS threads only contend on these tiny problems.

    ``centroids``: (2, k) coordinates of μ₊, μ₋; ``theta``: (k,); ``priors``: (p₊, p₋); ``masses``: q (4,);
    ``radii``, ``half_widths``: (2,) for classes (+1, −1). Returns the four points' coordinates (4, k).
    """
    k = centroids.shape[1]
    total = np.array([priors[0] + masses[0] + masses[1], priors[1] + masses[2] + masses[3]])
    w = masses / total[CLASS]  # each point's share of its class's poisoned centroid
    same = (CLASS[:, None] == CLASS[None, :]) * w[None, :]  # ∂m_{y(i)}/∂x_j
    dE = np.eye(4) - same  # ∂(x_i − m_{y(i)})/∂x_j
    sw = SIGN * w  # ∂Δ/∂x_j
    base = priors[:, None] * centroids / total[:, None]
    r2, h2 = radii[CLASS] ** 2, half_widths[CLASS] ** 2
    scale = float(np.abs(centroids).max()) or 1.0  # constraints in units where the data is O(1)

    memo: dict[str, tuple] = {}

    def parts(z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Points, their offsets from their poisoned centroids, Δ; memoised (SLSQP asks for each twice)."""
        if "z" in memo and np.array_equal(memo["z"], z):
            return memo["parts"]
        u = z.reshape(4, k)
        m_plus = base[0] + w[0] * u[0] + w[1] * u[1]
        m_minus = base[1] + w[2] * u[2] + w[3] * u[3]
        e = u.copy()
        e[:2] -= m_plus
        e[2:] -= m_minus
        memo["z"], memo["parts"] = z.copy(), (u, e, m_plus - m_minus)
        return memo["parts"]

    def objective(z: np.ndarray) -> tuple[float, np.ndarray]:
        u = z.reshape(4, k)
        value = masses[0] * (1 - u[0] @ theta - bias) + masses[2] * (1 + u[2] @ theta + bias)
        grad = np.zeros((4, k))
        grad[0], grad[2] = masses[0] * theta, -masses[2] * theta
        return -value, grad.ravel()

    def constraints(z: np.ndarray) -> np.ndarray:
        u, e, delta = parts(z)
        along = e @ delta
        sphere = (r2 - (e * e).sum(1)) / scale**2
        slab = (h2 * (delta @ delta) - along**2) / scale**4
        margin = np.array([1 - u[0] @ theta - bias, 1 + u[2] @ theta + bias])
        return np.concatenate([sphere, slab, margin])

    def jacobian(z: np.ndarray) -> np.ndarray:
        u, e, delta = parts(z)
        along = e @ delta
        sphere = -2 * dE[:, :, None] * e[:, None, :] / scale**2
        slab = (
            2 * h2[:, None, None] * sw[None, :, None] * delta[None, None, :]
            - 2 * along[:, None, None] * (dE[:, :, None] * delta[None, None, :] + sw[None, :, None] * e[:, None, :])
        ) / scale**4
        margin = np.zeros((2, 4, k))
        margin[0, 0], margin[1, 2] = -theta, theta
        return np.concatenate([sphere, slab, margin]).reshape(10, 4 * k)

    start = centroids[CLASS].ravel()  # every point at its clean centroid: inside both sets
    res = minimize(
        objective,
        start,
        jac=True,
        method="SLSQP",
        constraints=[{"type": "ineq", "fun": constraints, "jac": jacobian}],
        options={"maxiter": 300, "ftol": 1e-10},
    )
    points = res.x.reshape(4, k)
    if not np.isfinite(res.x).all() or constraints(res.x).min() < -FEASIBLE_TOL:
        return -np.inf, points
    return -float(res.fun), points


def slab_violation(
    points: np.ndarray, *, centroids: np.ndarray, priors: np.ndarray, masses: np.ndarray, radii: np.ndarray,
    half_widths: np.ndarray,
) -> np.ndarray:  # fmt: skip
    """Per point, max(sphere, slab) excess over its bound, relative (≤ 0: inside); any dimension, for tests."""
    total = np.array([priors[0] + masses[0] + masses[1], priors[1] + masses[2] + masses[3]])
    m = np.stack(
        [(priors[y] * centroids[y] + sum(masses[i] * points[i] for i in range(4) if CLASS[i] == y)) / total[y]
         for y in (0, 1)]
    )  # fmt: skip
    delta = m[0] - m[1]
    e = points - m[CLASS]
    sphere = np.linalg.norm(e, axis=1) / radii[CLASS] - 1
    slab = np.abs(e @ delta) / (half_widths[CLASS] * np.linalg.norm(delta)) - 1
    return np.maximum(sphere, slab)
