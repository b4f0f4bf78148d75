"""Clipped sums of per-sample gradients without Opacus: ``vmap`` and book-keeping (``bk``).

Both return, for a batch of B samples with losses ℓ_i and whole-model per-sample
gradients g_i = ∇_θ ℓ_i, and a scale s (the DP step passes s = 1/(q·n)),

    S = s · Σ_i c_i · g_i        with  c_i = min(1, C / (‖g_i‖₂ + 1e-6))

per parameter (c_i is exactly Opacus' clip factor: flat, whole-model norm), with
Σ_i ℓ_i and the norms ‖g_i‖.

* ``vmap``: ``torch.func.vmap(grad(ℓ))`` materialises every g_i; works for any model.
* ``bk`` (book-keeping, Bu et al. 2023): one forward and one backward to the layer
  outputs only (``autograd.grad`` w.r.t. activations, no parameter gradients), then,
  per layer with input a_i and output gradient b_i,

      Linear:    ‖g_i^W‖² = ‖a_i‖²·‖b_i‖² (ghost norm),      S^W = (c⊙b)ᵀ a
      Conv2d:    g_i^W = b_i · unfold(a_i)ᵀ (or the ghost norm Σ_{l,l'} (AᵢᵀAᵢ)∘(BᵢᵀBᵢ)
                 when that is cheaper), S^W = Σ_i c_i g_i^W
      GroupNorm: g_i^γ = Σ_spatial x̂_i ⊙ b_i,  g_i^β = Σ_spatial b_i

  Works for models whose trainable parameters all sit in those layers, each called once.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap
from torch.nn import functional as F

from gsdefense.training.stacked import StackedConv2d, StackedGroupNorm, StackedLinear, StackedModel

Result = tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]  # s·Σ c_i g_i per parameter, Σ ℓ_i, ‖g_i‖
ClippedSum = Callable[..., Result]


def clip_factors(norms: torch.Tensor, clip: float | torch.Tensor, scale: float) -> torch.Tensor:
    """s · c_i = s · min(1, C / (‖g_i‖ + 1e-6)), c_i as Opacus computes it."""
    c = (clip / (norms + 1e-6)).clamp_(max=1.0)
    return c if scale == 1.0 else c.mul_(scale)


class VmapClippedSum:
    """``vmap(grad)`` per-sample gradients of a hook-free model, clipped and summed."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.names = [k for k, p in model.named_parameters() if p.requires_grad]

        def loss(params, buffers, x, y):
            out = functional_call(model, (params, buffers), (x[None],))
            return F.cross_entropy(out, y[None])

        self._per_sample = vmap(grad_and_value(loss), in_dims=(None, None, 0, 0))

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, *, clip: float, scale: float = 1.0, weight: torch.Tensor | None = None
    ) -> Result:
        named = dict(self.model.named_parameters())
        params = {k: named[k].detach() for k in self.names}
        buffers = {k: v for k, v in self.model.named_buffers()}
        grads, losses = self._per_sample(params, buffers, x, y)
        flat = [grads[k].reshape(len(x), -1) for k in self.names]
        norms = torch.stack([g.pow(2).sum(1) for g in flat], 1).sum(1).sqrt()
        c = clip_factors(norms, clip, scale)
        losses = losses.detach()
        if weight is not None:  # padding of a fixed-shape batch adds exactly zero
            c, losses = c * weight, losses * weight
        return [torch.einsum("b,b...->...", c, grads[k]) for k in self.names], losses.sum(), norms


def _member_sum(c: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Σ_i c_mi · g_mi per member: c (M, B), g (M·B, …) member-major → (M, …)."""
    m, b = c.shape
    if m == 1:  # one model: a plain matrix-vector product (fewer dispatches than bmm and its views)
        return torch.mv(g.reshape(b, -1).t(), c[0]).view(1, *g.shape[1:])
    return torch.bmm(c.unsqueeze(1), g.reshape(m, b, -1)).view(m, *g.shape[1:])


def _trains(m: nn.Module) -> tuple[bool, bool]:
    """Whether the layer's weight and bias are trained (frozen parameters get no gradient, no norm, no noise)."""
    weight, bias = getattr(m, "weight", None), getattr(m, "bias", None)
    return weight is not None and weight.requires_grad, bias is not None and bias.requires_grad


def _linear(m: nn.Linear, a: torch.Tensor, b: torch.Tensor):
    w_on, b_on = _trains(m)
    if a.dim() == 2:  # ghost norm: ‖b aᵀ‖² = ‖a‖²‖b‖², and ‖bias grad‖² = ‖b‖²
        b_sq = (b * b).sum(1)
        if w_on:
            a_sq = (a * a).sum(1)
            sq = b_sq * (a_sq + 1.0) if b_on else b_sq * a_sq
        else:
            sq = b_sq

        def ghost_weighted(c):
            members = len(c)
            if members == 1:  # one model: plain matrix products
                cb = b * c.reshape(-1, 1)
                w = [torch.mm(cb.t(), a)[None]] if w_on else []
                return w + ([cb.sum(0, keepdim=True)] if b_on else [])
            cb = (b * c.reshape(-1, 1)).view(members, -1, b.shape[-1])
            w = [torch.bmm(cb.transpose(1, 2), a.view(members, -1, a.shape[-1]))] if w_on else []
            return w + ([cb.sum(1)] if b_on else [])

        return sq, ghost_weighted
    a, b = a.reshape(len(a), -1, a.shape[-1]), b.reshape(len(b), -1, b.shape[-1])  # (B, T, in), (B, T, out)
    gw = torch.einsum("bto,bti->boi", b, a) if w_on else None
    gb = b.sum(1) if b_on else None
    sq = (gw.pow(2).sum((1, 2)) if gw is not None else 0.0) + (gb.pow(2).sum(1) if gb is not None else 0.0)

    def weighted(c):
        return [_member_sum(c, g) for g in (gw, gb) if g is not None]

    return sq, weighted


def _unfold(x: torch.Tensor, m: nn.Conv2d) -> torch.Tensor:
    """``F.unfold(x)`` for ``m``'s geometry as one strided view + one copy (im2col loops over the batch)."""
    (ph, pw), (sh, sw), (dh, dw), (kh, kw) = m.padding, m.stride, m.dilation, m.kernel_size
    if ph or pw:
        x = F.pad(x, (pw, pw, ph, ph))
    n, ch, h, w = x.shape
    oh, ow = (h - dh * (kh - 1) - 1) // sh + 1, (w - dw * (kw - 1) - 1) // sw + 1
    s_n, s_c, s_h, s_w = x.stride()
    view = x.as_strided((n, ch, kh, kw, oh, ow), (s_n, s_c, s_h * dh, s_w * dw, s_h * sh, s_w * sw), x.storage_offset())
    return view.reshape(n, ch * kh * kw, oh * ow)


def _conv2d(m: nn.Conv2d, x: torch.Tensor, out_grad: torch.Tensor):
    w_on, b_on = _trains(m)
    n = len(x)
    b = out_grad.reshape(n, out_grad.shape[1], -1)  # (B, o, L)
    gb = b.sum(2) if b_on else None
    sq = (gb * gb).sum(1) if gb is not None else torch.zeros(n, device=x.device, dtype=x.dtype)
    weight_sum = None
    if w_on:
        a = _unfold(x, m)  # (B, k, L)
        k, o, length = a.shape[1], b.shape[1], a.shape[2]
        # Materialising g_i costs B·o·k memory; the ghost norm B·L² and, per sample, fewer flops when L(k+o) < k·o.
        if k * o >= 1 << 16 and length * (k + o) < k * o:
            sq = sq + (torch.bmm(a.transpose(1, 2), a) * torch.bmm(b.transpose(1, 2), b)).sum((1, 2))

            def weight_sum(c):
                members = len(c)
                cb = (b * c.reshape(-1, 1, 1)).view(members, -1, o, length)
                return torch.einsum("mbol,mbkl->mok", cb, a.view(members, -1, k, length))

        else:
            gw = torch.bmm(b, a.transpose(1, 2)).view(n, -1)  # (B, o·k)
            sq = sq + (gw * gw).sum(1)

            def weight_sum(c):
                return _member_sum(c, gw)

    def weighted(c):
        w = [weight_sum(c).reshape(len(c), *m.weight.shape[-4:])] if weight_sum is not None else []
        return w + ([_member_sum(c, gb)] if gb is not None else [])

    return sq, weighted


def _group_norm(m: nn.GroupNorm, x: torch.Tensor, out_grad: torch.Tensor):
    w_on, b_on = _trains(m)
    dims = tuple(range(2, x.dim()))
    gw = (F.group_norm(x.detach(), m.num_groups, eps=m.eps) * out_grad).sum(dims) if w_on else None
    gb = out_grad.sum(dims) if b_on else None
    sq = sum(g.pow(2).sum(1) for g in (gw, gb) if g is not None)
    return sq, lambda c: [_member_sum(c, g) for g in (gw, gb) if g is not None]


LAYERS = {
    nn.Linear: _linear,
    nn.Conv2d: _conv2d,
    nn.GroupNorm: _group_norm,
    StackedLinear: _linear,
    StackedConv2d: _conv2d,
    StackedGroupNorm: _group_norm,
}


def bk_unsupported(model: nn.Module) -> str | None:
    """Why ``bk`` cannot handle ``model``, or None if it can."""
    for name, m in model.named_modules():
        own = [p for p in m.parameters(recurse=False) if p.requires_grad]
        if not own:
            continue
        if type(m) not in LAYERS:
            return f"{name or 'model'} is a {type(m).__name__}, not one of Linear, Conv2d, GroupNorm"
        if isinstance(m, nn.Conv2d) and (m.groups != 1 or m.padding_mode != "zeros" or isinstance(m.padding, str)):
            return f"{name} is a grouped, non-zero-padded or 'same'-padded Conv2d"
        if isinstance(m, nn.GroupNorm) and not m.affine:
            return f"{name} is a GroupNorm without affine parameters"
    return None


class BookKeepingClippedSum:
    """Clipped per-sample-gradient sums from layer inputs and output gradients (one backward).

    For a ``StackedModel`` of M members, ``members`` gives every member's clipped sums at
    once, each member with its own clip C_m: the layers' outputs carry all members, and
    ∂(Σ_m L_m)/∂z_m = ∂L_m/∂z_m because members share no parameters.
    """

    def __init__(self, model: nn.Module) -> None:
        reason = bk_unsupported(model)
        if reason is not None:
            raise ValueError(f"grad_sample_mode=bk cannot handle this model: {reason}")
        self.model = model
        self.layers = [m for m in model.modules() if any(p.requires_grad for p in m.parameters(recurse=False))]
        order = {id(p): i for i, p in enumerate(p for p in model.parameters() if p.requires_grad)}
        self.order = [order[id(p)] for m in self.layers for p in m.parameters(recurse=False) if p.requires_grad]

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, *, clip: float, scale: float = 1.0, weight: torch.Tensor | None = None
    ) -> Result:
        sums, losses, norms = self.members(x, y, clip=clip, scale=scale, weight=weight)
        return [s[0] for s in sums], losses.sum(), norms[0]

    def _forward(self, x: torch.Tensor, *, own_rows: bool, weight: torch.Tensor | None) -> torch.Tensor:
        """Logits (M, B, classes): every member on the shared batch, or (``own_rows``) on its own rows."""
        if own_rows:
            out = self.model.body(x)  # M·W rows, member-major: member m's weights meet member m's rows
            return out.view(len(weight), -1, out.shape[-1])
        out = self.model(x)
        return out if isinstance(self.model, StackedModel) else out[None]

    def members(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        clip: float | torch.Tensor,
        scale: float = 1.0,
        weight: torch.Tensor | None = None,
        loss_weight: torch.Tensor | None = None,
        own_rows: bool = False,
    ) -> Result:
        """Per member m: s·Σ_i w_i c_mi g_mi (M, …) per parameter, Σ_i w_i ℓ_mi (M,), ‖g_mi‖ (M, B).

        ``weight`` (B,) is 1 for a batch's examples and 0 for the padding of a fixed-shape batch
        (``batches.poisson_plan``): a padded row then adds exactly zero to the sums and the loss.
        ``own_rows``: every member of a ``StackedModel`` sees rows of its own (``x``, ``y``: M·W rows,
        member-major; ``weight`` (M, W)) instead of one batch shared by all (retraining trials);
        ``loss_weight`` then weighs the losses when it differs from ``weight``.
        """
        seen: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}

        def capture(module, inputs, output):
            if module in seen:
                raise RuntimeError("grad_sample_mode=bk: a layer is called twice in one forward pass")
            seen[module] = (inputs[0], output)

        handles = [m.register_forward_hook(capture) for m in self.layers]
        try:
            out = self._forward(x, own_rows=own_rows, weight=weight)
        finally:
            for h in handles:
                h.remove()
        members = len(out)
        labels = y if members == 1 or own_rows else y.repeat(members)
        losses = F.cross_entropy(out.reshape(-1, out.shape[-1]), labels, reduction="none")
        out_grads = torch.autograd.grad(losses.sum(), [seen[m][1] for m in self.layers])
        parts = [LAYERS[type(m)](m, seen[m][0].detach(), g) for m, g in zip(self.layers, out_grads)]
        norms = sum(sq for sq, _ in parts).sqrt().view(members, -1)
        c = clip_factors(norms, clip, scale)
        losses = losses.detach().view(members, -1)
        if weight is not None:
            c, losses = c * weight, losses * (weight if loss_weight is None else loss_weight)
        sums = [s for _, weighted in parts for s in weighted(c)]
        ordered: list[torch.Tensor] = [torch.empty(0)] * len(sums)
        for i, s in zip(self.order, sums):
            ordered[i] = s
        return ordered, losses.sum(1), norms
