"""ε means what it says (issue 12): every engine validates the model, handles frozen parameters, and uses one q."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from gsdefense.errors import ConfigError
from gsdefense.training.dp import DPSGDConfig, private_training
from gsdefense.training.engine import poisson_rate
from gsdefense.training.fused import FusedMember, train_fused
from gsdefense.training.optim import SGDConfig
from gsdefense.training.per_sample import BookKeepingClippedSum, VmapClippedSum
from gsdefense.training.stacked import stack_models

ENGINES = ["auto", "bk", "vmap", "hooks", "functorch"]


def _batchnorm_model(affine: bool) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8, affine=affine), nn.ReLU(), nn.Linear(8, 3))


def _private(model: nn.Module, mode: str, *, n: int = 40, batch: int = 10):
    cfg = DPSGDConfig(clip=1.0, noise=1.0, grad_sample_mode=mode)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return private_training(model, opt, cfg=cfg, n_train=n, batch_size=batch, noise_generator=torch.Generator())


@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("mode", ENGINES)
def test_batchnorm_is_rejected_by_every_engine(mode: str, affine: bool):
    with pytest.raises(ConfigError, match=r"model: cannot be trained with DP-SGD: module '1' \(BatchNorm1d\)") as err:
        _private(_batchnorm_model(affine), mode)
    assert "GroupNorm" in str(err.value) and "\n" not in str(err.value)


def test_batchnorm_is_rejected_by_the_fused_engine():
    member = FusedMember(model=_batchnorm_model(False), optimizer=SGDConfig(epochs=1, batch_size=10),
                         dp=DPSGDConfig(grad_sample_mode="auto"), noise_seed=1)  # fmt: skip
    x, y = torch.randn(40, 5), torch.randint(0, 3, (40,))
    with pytest.raises(ConfigError, match="BatchNorm1d"):
        train_fused([member], x, y, seed=0)


def test_without_the_check_batchnorm_breaks_the_sensitivity_bound():
    """Why the check exists: with batch statistics, removing one sample moves the clipped sum by more than C."""
    model = _batchnorm_model(False).train()
    x, y = torch.randn(16, 5) * 3, torch.randint(0, 3, (16,))
    engine = BookKeepingClippedSum(model)  # what `auto` picked before: BatchNorm1d(affine=False) owns no parameter
    full, _, _ = engine(x, y, clip=1.0)
    minus, _, _ = engine(x[1:], y[1:], clip=1.0)
    change = torch.cat([(a - b).flatten() for a, b in zip(full, minus)]).norm()
    assert change > 1.0 + 1e-3


FROZEN = [(True, False), (False, True), (False, False)]  # (weight trains, bias trains) of the frozen layer


def _partly_frozen(kind: str, weight: bool, bias: bool, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    if kind == "conv":
        model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.GroupNorm(2, 4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
        frozen = [model[0], model[1]]
    else:
        model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
        frozen = [model[0]]
    for layer in frozen:
        layer.weight.requires_grad_(weight)
        layer.bias.requires_grad_(bias)
    return model


def _naive_clipped_sum(model: nn.Module, x, y, clip: float) -> list[torch.Tensor]:
    params = [p for p in model.parameters() if p.requires_grad]
    total = [torch.zeros_like(p) for p in params]
    for xi, yi in zip(x, y):
        grads = torch.autograd.grad(F.cross_entropy(model(xi[None]), yi[None]), params)
        norm = torch.cat([g.flatten() for g in grads]).norm()
        factor = min(1.0, clip / (float(norm) + 1e-6))
        total = [t + factor * g for t, g in zip(total, grads)]
    return total


@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize("weight, bias", FROZEN)
def test_partly_frozen_layers_equal_the_naive_loop(kind: str, weight: bool, bias: bool):
    model = _partly_frozen(kind, weight, bias)
    shape = (2, 6, 6) if kind == "conv" else (6,)
    x, y = torch.randn(12, *shape, generator=torch.Generator().manual_seed(3)) * 2, torch.randint(0, 3, (12,))
    expected = _naive_clipped_sum(model, x, y, clip=0.5)
    for engine in (BookKeepingClippedSum(model), VmapClippedSum(model)):
        got, _, _ = engine(x, y, clip=0.5)
        assert len(got) == len(expected)
        for a, b in zip(got, expected):
            torch.testing.assert_close(a.view_as(b), b, atol=1e-5, rtol=1e-4)
    stacked = stack_models([_partly_frozen(kind, weight, bias), _partly_frozen(kind, weight, bias, seed=1)])
    assert sum(p.numel() for p in stacked.parameters() if p.requires_grad) == 2 * sum(
        p.numel() for p in model.parameters() if p.requires_grad
    )
    sums, _, _ = BookKeepingClippedSum(stacked).members(x, y, clip=torch.tensor([[0.5], [0.5]]))
    for a, b in zip(sums, expected):
        torch.testing.assert_close(a[0].view_as(b), b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("weight, bias", FROZEN)
def test_frozen_parameters_stay_frozen_and_unnoised(weight: bool, bias: bool):
    model = _partly_frozen("linear", weight, bias)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    private = _private(model, "bk")
    private.optimizer.zero_grad()
    private.optimizer.private_step(torch.randn(10, 6), torch.randint(0, 3, (10,)))
    for name, p in model.named_parameters():
        if name in frozen:
            assert torch.equal(p, frozen[name]), name


@pytest.mark.parametrize("k", [93, 99, 105, 7])
def test_one_sampling_rate_for_every_engine(k: int):
    """Opacus' DPDataLoader gives 1/int(1/(1/k)) = 1/(k−1) for these k; every route must use q = 1/k."""
    n, batch = 10 * k, 10
    assert poisson_rate(n, batch) == (1 / k, 10)
    rates = {}
    for mode in ("bk", "vmap", "hooks", "functorch"):
        private = _private(nn.Sequential(nn.Linear(5, 3)), mode, n=n, batch=batch)
        private.optimizer.zero_grad()
        x, y = torch.randn(10, 5), torch.randint(0, 3, (10,))
        if hasattr(private.optimizer, "private_step"):
            private.optimizer.private_step(x, y)
        else:
            F.cross_entropy(private.module(x), y).backward()
            private.optimizer.step()
        rates[mode] = (private.sample_rate, private.optimizer.expected_batch_size, private.engine.accountant.history)
    assert all(r == (1 / k, 10, [(1.0, 1 / k, 1)]) for r in rates.values()), rates
