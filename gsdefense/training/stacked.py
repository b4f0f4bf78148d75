"""M copies of one architecture as one module: the members of a fused grid (``hydra/launcher=fused``).

``stack_models`` stacks the members' parameters (``torch.func.stack_module_state``:
every parameter gains a leading member axis of size M) into a copy of the
architecture whose Linear, Conv2d and GroupNorm layers are swapped for
``Stacked*`` twins. Activations keep the members folded into the batch axis,
member-major: a batch of B inputs runs as M·B rows, rows m·B … m·B+B-1 belonging
to member m. Everything between the parametric layers (ReLU, pooling, Flatten,
residual adds, ``Normalize``) is per-sample already and works unchanged; each
parametric layer applies member m's weights to member m's rows:

    Linear:    one batched matmul  (M, B, in) @ (M, in, out)
    Conv2d:    one grouped convolution with groups = M over (B, M·C, H, W)
    GroupNorm: F.group_norm without affine, then member m's γ, β

so one forward and one backward serve the whole grid, and the book-keeping
engine (``per_sample``) gets every member's per-sample gradients from them.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.func import stack_module_state
from torch.nn import functional as F


def _parameter(stacked: torch.Tensor | None, like: torch.Tensor | None) -> nn.Parameter | None:
    """The stacked tensor as a parameter that is trained exactly when the original is (frozen stays frozen)."""
    return None if stacked is None else nn.Parameter(stacked, requires_grad=like.requires_grad)


class StackedLinear(nn.Module):
    def __init__(self, linear: nn.Linear, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.members = weight.shape[0]
        self.weight = _parameter(weight, linear.weight)
        self.bias = _parameter(bias, linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(self.members, -1, x.shape[-1])  # (M, rows per member, in)
        wt = self.weight.transpose(1, 2)
        out = torch.baddbmm(self.bias[:, None, :], rows, wt) if self.bias is not None else torch.bmm(rows, wt)
        return out.reshape(*x.shape[:-1], out.shape[-1])


class StackedConv2d(nn.Module):
    def __init__(self, conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.members = weight.shape[0]
        self.kernel_size, self.stride, self.padding, self.dilation = (
            conv.kernel_size, conv.stride, conv.padding, conv.dilation
        )  # fmt: skip
        self.groups, self.padding_mode = conv.groups, conv.padding_mode
        self.weight = _parameter(weight, conv.weight)
        self.bias = _parameter(bias, conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m, (n, c, h, w) = self.members, x.shape
        grouped = x.view(m, n // m, c, h, w).transpose(0, 1).reshape(n // m, m * c, h, w)
        weight = self.weight.reshape(-1, *self.weight.shape[2:])
        bias = self.bias.reshape(-1) if self.bias is not None else None
        out = F.conv2d(grouped, weight, bias, self.stride, self.padding, self.dilation, groups=m)
        _, _, oh, ow = out.shape
        return out.view(n // m, m, -1, oh, ow).transpose(0, 1).reshape(n, -1, oh, ow)


class StackedGroupNorm(nn.Module):
    def __init__(self, norm: nn.GroupNorm, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.members = weight.shape[0]
        self.num_groups, self.eps, self.affine = norm.num_groups, norm.eps, True
        self.weight, self.bias = _parameter(weight, norm.weight), _parameter(bias, norm.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m, n = self.members, len(x)
        xhat = F.group_norm(x, self.num_groups, eps=self.eps).view(m, n // m, *x.shape[1:])
        shape = (m, 1, -1) + (1,) * (x.dim() - 2)
        return (xhat * self.weight.view(shape) + self.bias.view(shape)).view_as(x)


class StackedModel(nn.Module):
    """``forward(x)`` of a batch (B, …) shared by all members → logits (M, B, classes)."""

    def __init__(self, body: nn.Module, members: int) -> None:
        super().__init__()
        self.body, self.members = body, members

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x.repeat(self.members, *([1] * (x.dim() - 1))))
        return out.view(self.members, len(x), -1)


def stack_models(models: list[nn.Module]) -> StackedModel:
    """One ``StackedModel`` holding the (trainable) parameters of ``models``, which share an architecture."""
    params, _ = stack_module_state(models)
    body = copy.deepcopy(models[0])
    for name, module in list(body.named_modules()):
        if not any(p.requires_grad for p in module.parameters(recurse=False)):
            continue
        w = params[f"{name}.weight"].detach().clone()
        b = params[f"{name}.bias"].detach().clone() if f"{name}.bias" in params else None
        if isinstance(module, nn.Linear):
            twin: nn.Module = StackedLinear(module, w, b)
        elif isinstance(module, nn.Conv2d) and module.groups == 1 and module.padding_mode == "zeros":
            twin = StackedConv2d(module, w, b)
        elif isinstance(module, nn.GroupNorm) and module.affine:
            twin = StackedGroupNorm(module, w, b)
        else:
            raise ValueError(f"cannot fuse {name or 'model'}: a {type(module).__name__} has no stacked twin")
        parent, _, attr = name.rpartition(".")
        setattr(body.get_submodule(parent) if parent else body, attr, twin)
    return StackedModel(body, len(models))


@torch.no_grad()
def load_member(stacked: StackedModel, member: int, model: nn.Module) -> nn.Module:
    """Copy member ``member``'s parameters into ``model`` (same architecture, unstacked)."""
    mine = dict(stacked.body.named_parameters())
    for name, p in model.named_parameters():
        p.copy_(mine[name][member])
    return model
