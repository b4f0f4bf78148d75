"""Sphere and slab sets of Steinhardt, Koh & Liang (NeurIPS 2017), shared by their attack and the defenses.

For class ``y`` with centroid ``μ_y`` (of the data the set is fitted on)::

    sphere:  ‖x − μ_y‖₂ ≤ r_y
    slab:    |⟨x − μ_y, v_y⟩| ≤ s_y,   v_y = μ_y − μ_{−y}   (binary tasks only)

``r_y`` and ``s_y`` are the ``percentile``-th percentiles of those distances over class ``y`` of the fitting
data (Steinhardt et al. show the 70th; the original gradient-shaping code used the 65th). Inputs are flattened.
``with_poisons`` gives the data-dependent set of eq. 7: centroids of the poisoned data, the clean radii.

``maximize_linear`` solves ``max ⟨c, x⟩`` over sphere ∩ slab ∩ box — the inner step of the online attack for
any margin-based loss — to a bisection tolerance (the tests compare it with SciPy's SLSQP): Lagrangian duality
on the slab (one multiplier β, found by K-ary search on the monotone ⟨v, x(β)⟩) around a closed-form
ball ∩ box maximiser (sorted breakpoints), then the convex combination of the two bracketing maximisers that
lies on the slab's face.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gsdefense.errors import ConfigError

_GRID = 16  # points per round of the K-ary search for β
_ROUNDS = 9  # the bracket on β shrinks 16**9 ≈ 7e10-fold


@dataclass
class FeasibleSet:
    """Per-class centroids and radii; ``slab_dirs``/``slab_radii`` are None for more than two classes."""

    centroids: torch.Tensor  # (k, d)
    radii: torch.Tensor  # (k,)
    slab_dirs: torch.Tensor | None  # (k, d): v_y = μ_y − μ_{−y}
    slab_radii: torch.Tensor | None  # (k,)
    box: tuple[float, float]
    sizes: torch.Tensor | None = None  # (k,) points per class the set was fitted on

    @classmethod
    def fit(
        cls, x: torch.Tensor, y: torch.Tensor, *, num_classes: int, percentile: float, box: tuple[float, float]
    ) -> FeasibleSet:
        """Centroids and ``percentile``-th percentile radii of ``(x, y)``, computed in float64."""
        flat = x.reshape(len(x), -1).double()
        counts = torch.bincount(y, minlength=num_classes)
        if (counts == 0).any():
            missing = (counts == 0).nonzero().squeeze(1).tolist()
            raise ConfigError("dataset.classes", f"classes {missing} have no training samples; no centroid exists.")
        centroids = torch.zeros(num_classes, flat.shape[1], dtype=flat.dtype, device=flat.device)
        centroids.index_add_(0, y, flat)
        centroids /= counts[:, None]
        q = percentile / 100.0
        sphere = (flat - centroids[y]).norm(dim=1)
        radii = torch.stack([sphere[y == c].quantile(q) for c in range(num_classes)])
        slab_dirs = slab_radii = None
        if num_classes == 2:
            slab_dirs = centroids - centroids.flip(0)
            slab = ((flat - centroids[y]) * slab_dirs[y]).sum(1).abs()
            slab_radii = torch.stack([slab[y == c].quantile(q) for c in range(2)])
        return cls(centroids, radii, slab_dirs, slab_radii, box, counts)

    def with_poisons(self, x: torch.Tensor, y: torch.Tensor, counts: torch.Tensor) -> FeasibleSet:
        """The data-dependent set (eq. 7) once ``counts[i]`` copies of each ``(x_i, y_i)`` join the fitted data.

        Centroids move to the poisoned data's; radii stay; slab half-widths stay the same *distance* along the
        new direction ``m_y − m_{−y}`` (``s_y ‖m_y − m_{−y}‖ / ‖μ_y − μ_{−y}‖``, as ``upperBoundTrue.m``).
        """
        if self.sizes is None or self.slab_dirs is None:
            raise ValueError("with_poisons needs a binary set fitted by FeasibleSet.fit")
        flat = x.reshape(len(x), -1).to(self.centroids)
        mass = torch.zeros_like(self.centroids).index_add_(0, y, flat * counts.to(flat)[:, None])
        weight = self.sizes.to(flat) + torch.zeros(2, dtype=flat.dtype, device=flat.device).index_add_(
            0, y, counts.to(flat)
        )
        centroids = (self.centroids * self.sizes.to(flat)[:, None] + mass) / weight[:, None]
        dirs = centroids - centroids.flip(0)
        slab_radii = self.slab_radii * dirs.norm(dim=1) / self.slab_dirs.norm(dim=1)
        return FeasibleSet(centroids, self.radii, dirs, slab_radii, self.box, weight)

    def sphere_distance(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """‖x − μ_y‖₂ per sample."""
        return (x.reshape(len(x), -1).to(self.centroids) - self.centroids[y]).norm(dim=1)

    def slab_distance(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """|⟨x − μ_y, μ_y − μ_{−y}⟩| per sample (binary tasks)."""
        if self.slab_dirs is None:
            raise ValueError("the slab is defined for binary tasks only")
        return ((x.reshape(len(x), -1).to(self.centroids) - self.centroids[y]) * self.slab_dirs[y]).sum(1).abs()

    def contains(
        self, x: torch.Tensor, y: torch.Tensor, *, sphere: bool = True, slab: bool = True, tol: float = 0.0
    ) -> torch.Tensor:
        """Which samples lie inside the sphere and/or slab of their class (up to relative ``tol``)."""
        inside = torch.ones(len(y), dtype=torch.bool, device=y.device)
        if sphere:
            inside &= self.sphere_distance(x, y) <= self.radii[y] * (1 + tol)
        if slab:
            inside &= self.slab_distance(x, y) <= self.slab_radii[y] * (1 + tol)
        return inside

    def argmax_linear(self, c: torch.Tensor, y: torch.Tensor, *, margin: float = 1e-5) -> torch.Tensor:
        """Row ``i``: argmax of ``⟨c_i, x⟩`` over sphere ∩ slab (binary) ∩ box of class ``y_i``.

        Radii shrink by the relative ``margin`` so that the solution, once rounded to float32, is still inside.
        """
        lo, hi = self.box
        mu = self.centroids[y]
        shrink = 1.0 - margin
        slab = None if self.slab_dirs is None else (self.slab_dirs[y], self.slab_radii[y] * shrink)
        return mu + maximize_linear(c.to(mu), radius=self.radii[y] * shrink, lower=lo - mu, upper=hi - mu, slab=slab)


def _ball_box_argmax(w: torch.Tensor, r: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per row, argmax ⟨w, u⟩ s.t. ‖u‖ ≤ r and a ≤ u ≤ b (with a ≤ 0 ≤ b), in closed form.

    KKT: ``u_i = clip(w_i/ν, a_i, b_i)`` with ν ≥ 0 the smallest value giving ‖u‖ ≤ r. Coordinate i is
    saturated at its face ``cap_i`` iff ν ≤ t_i = |w_i|/|cap_i|; between sorted breakpoints
    ‖u(ν)‖² = S_j + W_j/ν² (S: saturated caps², W: free w²), which is solved for ν.
    """
    cap = torch.where(w > 0, b, a)
    cap = torch.where(w == 0, torch.zeros_like(cap), cap)
    t = torch.where(w == 0, torch.zeros_like(w), w.abs() / cap.abs())  # cap = 0, w ≠ 0: inf (always saturated)
    t_sorted, order = t.sort(dim=1, descending=True)
    cap2 = cap.gather(1, order).square()
    w2 = w.gather(1, order).square()
    sat = cap2.cumsum(1)  # S_j for j = 1..d
    free = w2.flip(1).cumsum(1).flip(1)[:, 1:]  # W_j as suffix sums: exactly 0 once every w_i ≠ 0 is saturated
    free = torch.cat([free, torch.zeros_like(free[:, :1])], 1)
    with torch.no_grad():
        at_break = torch.where(t_sorted > 0, sat + free / t_sorted.square(), torch.full_like(sat, float("inf")))
    r2 = r.square()[:, None]
    j = (at_break <= r2).sum(1, keepdim=True)  # number of saturated coordinates at the solution
    sat_j = torch.cat([torch.zeros_like(sat[:, :1]), sat], 1).gather(1, j)
    free_j = torch.cat([w2.sum(1, keepdim=True), free], 1).gather(1, j)
    nu = torch.where(free_j > 0, (free_j / (r2 - sat_j).clamp_min(1e-300)).sqrt(), torch.zeros_like(free_j))
    return torch.where(t >= nu, cap, w / nu.clamp_min(1e-300))


def maximize_linear(
    c: torch.Tensor,
    *,
    radius: torch.Tensor,
    lower: torch.Tensor,
    upper: torch.Tensor,
    slab: tuple[torch.Tensor, torch.Tensor] | None,
) -> torch.Tensor:
    """Per row, argmax ⟨c, u⟩ s.t. ‖u‖ ≤ radius, lower ≤ u ≤ upper, and |⟨v, u⟩| ≤ s for ``slab = (v, s)``.

    ``u`` is relative to the centre (``lower ≤ 0 ≤ upper``). Rows are independent problems.
    """
    u0 = _ball_box_argmax(c, radius, lower, upper)
    if slab is None:
        return u0
    v, s = slab
    p0 = (u0 * v).sum(1)
    sign = torch.where(p0 < 0, -1.0, 1.0).to(c)[:, None]
    v = v * sign  # now only ⟨v, u⟩ ≤ s can be violated
    bad = (p0.abs() > s).nonzero().squeeze(1)
    if len(bad) == 0:
        return u0
    cb, vb, sb, rb, ab, bb = c[bad], v[bad], s[bad], radius[bad], lower[bad], upper[bad]

    def proj(beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x(β) for each β in ``beta`` (m, G) and ⟨v, x(β)⟩; x(β) maximises ⟨c − βv, u⟩ on ball ∩ box."""
        m, g = beta.shape
        rep = lambda t: t.repeat_interleave(g, 0)  # noqa: E731
        u = _ball_box_argmax(rep(cb) - beta.reshape(-1, 1) * rep(vb), rep(rb), rep(ab), rep(bb))
        return u, (u * rep(vb)).sum(1).reshape(m, g)

    lo = torch.zeros_like(sb)
    hi = cb.norm(dim=1) / vb.norm(dim=1).clamp_min(1e-300)
    for _ in range(200):  # ⟨v, x(β)⟩ falls to min over ball ∩ box ≤ 0 < s as β → ∞
        _, p_hi = proj(hi[:, None])
        grow = p_hi[:, 0] > sb
        if not grow.any():
            break
        lo, hi = torch.where(grow, hi, lo), torch.where(grow, 2 * hi, hi)
    steps = torch.linspace(0, 1, _GRID + 1, dtype=c.dtype, device=c.device)[1:-1]
    for _ in range(_ROUNDS):
        grid = lo[:, None] + (hi - lo)[:, None] * steps
        _, p = proj(grid)
        k = (p > sb[:, None]).sum(1)  # p is non-increasing in β
        edges = torch.cat([lo[:, None], grid, hi[:, None]], 1)
        lo, hi = edges.gather(1, k[:, None]).squeeze(1), edges.gather(1, k[:, None] + 1).squeeze(1)
    u_lo, p_lo = proj(lo[:, None])
    u_hi, p_hi = proj(hi[:, None])
    p_lo, p_hi = p_lo[:, 0], p_hi[:, 0]
    mix = ((sb - p_hi) / (p_lo - p_hi).clamp_min(1e-300)).clamp(0, 1)[:, None]
    out = u0.clone()
    out[bad] = mix * u_lo + (1 - mix) * u_hi
    return out
