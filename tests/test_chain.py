"""The closed-form chain engine (training.chain) computes what autograd and generic book-keeping compute."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn
from torch.nn import functional as F

from gsdefense.models import build_model
from gsdefense.telemetry import GradientProbe, TelemetryConfig
from gsdefense.training import fast_dp
from gsdefense.training.chain import Chain, chain_layers
from gsdefense.training.dp import DPSGDConfig
from gsdefense.training.loop import train
from gsdefense.training.optim import AdamConfig, SGDConfig, plain_sgd_lr
from gsdefense.training.per_sample import BookKeepingClippedSum

SHAPE = (1, 6, 6)


def _model(name: str, depth: int = 1, standardize: bool = False) -> nn.Module:
    torch.manual_seed(0)
    node = {"name": name} if name != "mlp" else {"name": name, "hidden": 16, "depth": depth}
    norm = dict(mean=torch.full((1,), 0.3), std=torch.full((1,), 0.2)) if standardize else dict(mean=None, std=None)
    return build_model(OmegaConf.create(node), input_shape=SHAPE, num_classes=4, **norm)


def _data(n: int = 120):
    gen = torch.Generator().manual_seed(1)
    return torch.rand(n, *SHAPE, generator=gen), torch.randint(0, 4, (n,), generator=gen)


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


MODELS = [("lr", 1, False), ("mlp", 1, False), ("mlp", 2, True)]


def test_chains_are_recognised():
    assert all(chain_layers(_model(*m)) is not None for m in MODELS)
    assert chain_layers(_model("cnn")) is None
    frozen = _model("mlp")
    frozen[1][1].bias.requires_grad_(False)
    assert chain_layers(frozen) is None
    assert chain_layers(nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))) is None
    assert chain_layers(nn.Sequential(nn.Linear(4, 3), nn.ReLU())) is None


@pytest.mark.parametrize("model", MODELS, ids=lambda m: f"{m[0]}{m[1]}")
def test_mean_gradients_equal_autograd(model):
    x, y = _data(32)
    a, b = _model(*model), _model(*model)
    F.cross_entropy(a(x), y).backward()
    loss = Chain(b).mean_gradients(x, y)
    assert loss.item() == pytest.approx(F.cross_entropy(a(x), y).item() * len(y), rel=1e-6)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-6, atol=1e-7)
    lr = 0.3
    before = _flat(b)
    Chain(b).mean_gradients(x, y, lr=lr)  # in place: p − lr·g
    torch.testing.assert_close(_flat(b), before - lr * torch.cat([p.grad.flatten() for p in a.parameters()]),
                               rtol=1e-6, atol=1e-7)  # fmt: skip


@pytest.mark.parametrize("model", MODELS, ids=lambda m: f"{m[0]}{m[1]}")
@pytest.mark.parametrize("padded", [False, True])
def test_clipped_sums_equal_book_keeping(model, padded):
    x, y = _data(40)
    net = _model(*model)
    rows = torch.tensor([3, 5, 8, 13, 21, 34, 0, 0])
    weight = torch.tensor([1.0] * 6 + [0.0] * 2) if padded else None
    if not padded:
        rows = rows[:6]
    ref, ref_loss, ref_norms = BookKeepingClippedSum(net)(x[rows], y[rows], clip=0.05, scale=0.25, weight=weight)
    chain = Chain(net)
    chain.bind(x)  # the first layer's input norms come from the cache
    noise = [torch.randn_like(p) for p in chain.params]
    out = [t.clone() for t in noise]
    loss, norms = chain.clipped_sums(x[rows], y[rows], out, clip=0.05, scale=0.25, weight=weight, rows=rows)
    torch.testing.assert_close(norms, ref_norms, rtol=1e-6, atol=1e-7)
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-6)
    for o, z, r in zip(out, noise, ref):
        torch.testing.assert_close(o, z + r, rtol=1e-6, atol=1e-6)
    fresh = [torch.full_like(p, float("nan")) for p in chain.params]  # accumulate=False never reads out
    chain.clipped_sums(x[rows], y[rows], fresh, clip=0.05, scale=0.25, weight=weight, accumulate=False)
    for o, r in zip(fresh, ref):
        torch.testing.assert_close(o, r, rtol=1e-5, atol=1e-7)


OPTIMIZERS = [SGDConfig(lr=0.2, momentum=0.0, batch_size=16, epochs=2),  # plain SGD: the step applied in place
              SGDConfig(lr=0.1, momentum=0.9, batch_size=16, epochs=2),
              AdamConfig(lr=0.01, batch_size=16, epochs=2)]  # fmt: skip
DPS = [None, DPSGDConfig(clip=0.5, noise=0.7), DPSGDConfig(clip=0.5, noise=0.0),
       DPSGDConfig(clip=0.5, noise=0.7, fixed_shape=True)]  # fmt: skip


@pytest.mark.parametrize("model", MODELS, ids=lambda m: f"{m[0]}{m[1]}")
@pytest.mark.parametrize("opt", OPTIMIZERS, ids=["sgd", "momentum", "adam"])
@pytest.mark.parametrize("dp", DPS, ids=["vanilla", "dp", "clip-only", "dp-fixed-shape"])
def test_training_equals_the_generic_routes(monkeypatch, model, opt, dp):
    """Whole runs (2 epochs, same batches): the chain route against autograd (vanilla) or generic bk (DP)."""
    x, y = _data()
    is_poison = torch.arange(len(y)) < 20
    runs = []
    for chain in (True, False):
        monkeypatch.setattr(fast_dp, "CHAIN", chain)
        probe = GradientProbe(TelemetryConfig(mode="batches"), x=x, y=y, is_poison=is_poison,
                              clip=dp.clip if dp else None, noise=dp.noise if dp else None)  # fmt: skip
        runs.append(train(_model(*model), x, y, optimizer_cfg=opt, dp=dp, seed=2, noise_seed=5, probe=probe))
    fast, generic = runs
    assert (_flat(generic.model) - _flat(_model(*model))).norm() > 1e-3, "training must move the parameters"
    torch.testing.assert_close(_flat(fast.model), _flat(generic.model), rtol=1e-6, atol=1e-6)
    for a, b in zip(fast.history, generic.history):  # the loss and the telemetry the training forward feeds
        for key in ("train_loss", "mean_grad_norm_clean", "shaped_mean_grad_norm_poison", "grad_norm_clean"):
            if key in a:
                assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), key


def test_plain_sgd_is_recognised():
    p = [nn.Parameter(torch.zeros(2))]
    assert plain_sgd_lr(torch.optim.SGD(p, lr=0.3)) == 0.3
    assert plain_sgd_lr(torch.optim.SGD(p, lr=0.3, momentum=0.9)) is None
    assert plain_sgd_lr(torch.optim.SGD(p, lr=0.3, weight_decay=1e-4)) is None
    assert plain_sgd_lr(torch.optim.Adam(p, lr=0.3)) is None
