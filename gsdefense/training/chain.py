"""Chain models (``model=lr|mlp``) without autograd: per-sample gradients in closed form, a few GEMMs per step.

A chain is ``[input map] → Flatten → Linear → (ReLU → Linear)*``. With a_l the input of the l-th Linear (a_1 the
mapped, flattened input), z_l = a_l W_lᵀ + b_l, and cross-entropy ℓ_i = logsumexp(z_L,i) − z_L,i,y_i:

    δ_L = softmax(z_L) − e_y,     δ_l = (δ_{l+1} W_{l+1}) ⊙ [a_{l+1} > 0]     (per-sample output gradients)
    ∇_{W_l} ℓ_i = δ_l,i a_l,iᵀ,   ∇_{b_l} ℓ_i = δ_l,i,   ‖∇ℓ_i‖² = Σ_l ‖δ_l,i‖² (‖a_l,i‖² + 1)

(for logistic regression: ‖g_i‖² = ‖p_i − e_{y_i}‖² (‖x_i‖² + 1)). A vanilla step needs the batch mean
(1/B) Σ_i; a DP step book-keeping's clipped sum Σ_i s·c_i ∇ℓ_i, written into the noise already drawn for each
parameter (one GEMM each: ``noise.addmm_((c ⊙ δ_l)ᵀ, a_l)``). The first layer's ‖a_1,i‖² depend only on the
data, so ``bind`` computes them once per dataset and a step gathers them. It is what autograd and
``per_sample.BookKeepingClippedSum`` compute, to float rounding (``tests/test_chain.py``), in ~20 aten calls
per step instead of ~100 (vanilla) or ~200 (DP).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from gsdefense.models import Normalize
from gsdefense.training.per_sample import clip_factors

INPUT_MAPS = (nn.Identity, nn.Flatten, Normalize)  # parameter-free modules allowed before the first Linear


def _leaves(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if not isinstance(m, nn.Sequential)]


def chain_layers(model: nn.Module) -> tuple[list[nn.Module], list[nn.Linear], list[bool]] | None:
    """``(input map, Linears, relu_before)`` when ``model`` is a chain (``relu_before[l]``: a ReLU feeds Linear l),
    else None. Every Linear parameter must be trained, every Flatten flatten (B, …) to (B, features)."""
    if not isinstance(model, nn.Sequential) or any(not isinstance(m, nn.Sequential) and list(m.children())
                                                   for m in model.modules()):  # fmt: skip
        return None
    prefix: list[nn.Module] = []
    linears: list[nn.Linear] = []
    relu_before: list[bool] = []
    pending_relu = False
    for m in _leaves(model):
        if type(m) is nn.Linear:
            if not all(p.requires_grad for p in m.parameters()):
                return None
            linears.append(m)
            relu_before.append(pending_relu)
            pending_relu = False
        elif type(m) is nn.ReLU and linears and not pending_relu:
            pending_relu = True
        elif type(m) in INPUT_MAPS and not linears:
            if type(m) is nn.Flatten and (m.start_dim != 1 or m.end_dim != -1):
                return None
            prefix.append(m)
        else:
            return None
    if not linears or pending_relu or relu_before[0]:
        return None
    return prefix, linears, relu_before


class Chain:
    """Closed-form forward, backward and clipped sums of a chain model (see the module docstring)."""

    def __init__(self, model: nn.Module) -> None:
        layers = chain_layers(model)
        if layers is None:
            raise ValueError(f"{type(model).__name__} is not a chain of Linear and ReLU layers")
        self.model = model
        self.prefix, self.linears, self.relu_before = layers
        self.params = [p for m in self.linears for p in m.parameters()]
        self._bound: tuple[int, torch.Size] | None = None
        self._input_sq: torch.Tensor | None = None
        self._neg_one = torch.full((1, 1), -1.0, device=self.params[0].device, dtype=self.params[0].dtype)

    @classmethod
    def of(cls, model: nn.Module) -> Chain | None:
        """The chain of ``model``, or None when it is not one."""
        return cls(model) if chain_layers(model) is not None else None

    def _inputs(self, x: torch.Tensor) -> torch.Tensor:
        for m in self.prefix:
            x = x.flatten(1) if type(m) is nn.Flatten else x if type(m) is nn.Identity else m(x)
        return x.reshape(len(x), -1)

    @torch.no_grad()
    def bind(self, x: torch.Tensor, *, chunk: int = 8192) -> None:
        """Cache ‖a_1,i‖² (the first Linear's input norms) of every row of the dataset ``x``."""
        key = (x.data_ptr(), x.shape)
        if self._bound != key:
            self._input_sq = torch.cat([torch.linalg.vecdot(a, a) for a in map(self._inputs, x.split(chunk))])
            self._bound = key

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The Linears' inputs a_l and the logits z_L. Modules are called, so their forward hooks fire."""
        h = self._inputs(x)
        inputs = []
        for m, relu in zip(self.linears, self.relu_before):
            if relu:
                h = torch.relu(h)
            inputs.append(h)
            h = m(h)
        return inputs, h

    @torch.no_grad()
    def deltas(self, inputs: list[torch.Tensor], logits: torch.Tensor, y: torch.Tensor, *, first: float = 1.0):
        """Per-sample losses ℓ_i and output gradients δ_l (times ``first``) of every Linear, first to last."""
        logp = logits.log_softmax(1)
        losses = F.nll_loss(logp, y, reduction="none")
        d = logp.exp_().scatter_add_(1, y.unsqueeze(1), self._neg_one.expand(len(y), 1))  # softmax − e_y
        if first != 1.0:
            d.mul_(first)
        out = [d]
        for layer in range(len(self.linears) - 1, 0, -1):
            d = d.mm(self.linears[layer].weight)
            if self.relu_before[layer]:
                d = torch.ops.aten.threshold_backward(d, inputs[layer], 0)
            out.append(d)
        return losses, out[::-1]

    @torch.no_grad()
    def mean_gradients(self, x: torch.Tensor, y: torch.Tensor, *, lr: float | None = None) -> torch.Tensor:
        """Set every parameter's ``.grad`` to g = ∇ of the batch's mean cross-entropy, or (``lr``) apply plain
        SGD's step p ← p − lr·g in place (``optim.plain_sgd_lr``); returns the summed loss."""
        inputs, logits = self.forward(x)
        losses, deltas = self.deltas(inputs, logits, y, first=1.0 / len(y))
        for m, a, d in zip(self.linears, inputs, deltas):
            if lr is None:
                m.weight.grad = d.t().mm(a)
            else:
                m.weight.addmm_(d.t(), a, alpha=-lr)
            if m.bias is not None:
                if lr is None:
                    m.bias.grad = d.sum(0)
                else:
                    m.bias.add_(d.sum(0), alpha=-lr)
        return losses.sum()

    @torch.no_grad()
    def clipped_sums(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        out: list[torch.Tensor],
        *,
        clip: float,
        scale: float = 1.0,
        weight: torch.Tensor | None = None,
        rows: torch.Tensor | None = None,
        accumulate: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``out[k] (+)= s·Σ_i w_i c_i ∇_k ℓ_i`` per parameter k (``accumulate``: add to what ``out`` holds, the
        noise); returns Σ_i w_i ℓ_i and the norms ‖∇ℓ_i‖. ``rows``: the batch's rows in the ``bind``-ed dataset."""
        inputs, logits = self.forward(x)
        losses, deltas = self.deltas(inputs, logits, y)
        sq = None
        for layer, (m, a, d) in enumerate(zip(self.linears, inputs, deltas)):
            cached = layer == 0 and rows is not None and self._input_sq is not None
            a_sq = self._input_sq.index_select(0, rows) if cached else None
            a_sq = torch.linalg.vecdot(a, a) if a_sq is None else a_sq
            term = torch.linalg.vecdot(d, d) * (a_sq + 1.0 if m.bias is not None else a_sq)
            sq = term if sq is None else sq.add_(term)
        norms = sq.sqrt_()
        c = clip_factors(norms, clip, scale)
        if weight is not None:  # padding of a fixed-shape batch adds exactly zero
            c, losses = c * weight, losses * weight
        beta = 1.0 if accumulate else 0.0  # beta 0: out's old values are not read (BLAS semantics)
        k = 0
        for m, a, d in zip(self.linears, inputs, deltas):
            out[k].addmm_((d * c.unsqueeze(1)).t(), a, beta=beta)
            if m.bias is not None:
                out[k + 1].addmv_(d.t(), c, beta=beta)
            k += 2 if m.bias is not None else 1
        return losses.sum(), norms
