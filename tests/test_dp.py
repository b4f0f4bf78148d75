"""DP-SGD does what Abadi et al. / Hong et al. Alg. 1 say, checked against a naive per-sample loop."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from gsdefense.training.dp import DPSGDConfig, make_private
from gsdefense.training.loop import poisson_batches

N, D, K = 64, 6, 3


def _setup(*, clip: float, noise: float, seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Linear(D, K)
    x = torch.randn(N, D) * 3
    y = torch.randint(0, K, (N,))
    reference = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    private = make_private(
        model,
        opt,
        cfg=DPSGDConfig(clip=clip, noise=noise, grad_sample_mode="hooks"),
        n_train=N,
        batch_size=16,
        noise_generator=torch.Generator().manual_seed(seed + 1),
    )
    return model, private, x, y, reference


def _naive_per_sample(model_params: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Flattened per-sample gradients, one backward per sample."""
    weight, bias = (p.detach().clone().requires_grad_() for p in model_params)
    rows = []
    for xi, yi in zip(x, y):
        loss = F.cross_entropy((xi @ weight.T + bias)[None], yi[None])
        gw, gb = torch.autograd.grad(loss, [weight, bias])
        rows.append(torch.cat([gw.flatten(), gb.flatten()]))
    return torch.stack(rows)


def _step(private, x, y) -> None:
    private.optimizer.zero_grad()
    F.cross_entropy(private.module(x), y).backward()
    private.optimizer.step()


def test_update_is_mean_of_clipped_per_sample_gradients_when_noise_is_zero():
    clip = 0.5
    model, private, x, y, before = _setup(clip=clip, noise=0.0)
    batch = torch.arange(20)  # a fixed "sampled" batch
    per_sample = _naive_per_sample(before, x[batch], y[batch])
    norms = per_sample.norm(dim=1)
    assert (norms > clip).sum() >= 10, "test needs samples that are actually clipped"

    clipped = per_sample * (clip / (norms + 1e-6)).clamp(max=1.0)[:, None]
    assert (clipped.norm(dim=1) <= clip + 1e-6).all()

    _step(private, x[batch], y[batch])
    update = torch.cat([(b - p.detach()).flatten() for b, p in zip(before, model.parameters())])
    # Opacus divides the clipped sum by the *expected* batch size q·n, not the realised one.
    expected = clipped.sum(0) / private.optimizer.expected_batch_size
    assert private.optimizer.expected_batch_size == 16
    torch.testing.assert_close(update, expected, atol=1e-5, rtol=1e-5)


def test_each_per_sample_gradient_is_clipped_to_clip():
    clip = 0.1
    model, private, x, y, before = _setup(clip=clip, noise=0.0)
    _step(private, x, y)
    per_sample = torch.cat([p.grad_sample.flatten(1) for p in model.parameters() if p.grad_sample is not None], 1)
    naive = _naive_per_sample(before, x, y)
    torch.testing.assert_close(per_sample, naive, atol=1e-5, rtol=1e-4)
    factors = (clip / (per_sample.norm(dim=1) + 1e-6)).clamp(max=1.0)
    assert ((per_sample * factors[:, None]).norm(dim=1) <= clip + 1e-6).all()


@pytest.mark.parametrize("clip, noise", [(1.0, 1.0), (0.2, 4.0)])
def test_noise_std_is_noise_times_clip(clip: float, noise: float):
    """Update minus its noiseless value, times the expected batch size, is N(0, (σC)²)."""
    model, private, x, y, _ = _setup(clip=clip, noise=noise)
    quiet_model, quiet, *_ = _setup(clip=clip, noise=0.0)
    samples = []
    for _ in range(300):
        start = [p.detach().clone() for p in model.parameters()]
        with torch.no_grad():
            for q, p in zip(quiet_model.parameters(), model.parameters()):
                q.copy_(p)
        _step(private, x[:16], y[:16])
        _step(quiet, x[:16], y[:16])
        noisy = torch.cat([(s - p.detach()).flatten() for s, p in zip(start, model.parameters())])
        clean = torch.cat([(s - q.detach()).flatten() for s, q in zip(start, quiet_model.parameters())])
        samples.append((noisy - clean) * private.optimizer.expected_batch_size)
    noise_draws = torch.cat(samples)
    assert len(noise_draws) == 300 * (D * K + K)
    assert abs(noise_draws.mean().item()) < 0.05 * noise * clip
    assert noise_draws.std().item() == pytest.approx(noise * clip, rel=0.04)


def test_poisson_batches_have_rate_q_and_one_epoch_is_one_over_q_steps():
    gen = torch.Generator().manual_seed(0)
    sizes = [len(b) for _ in range(50) for b in poisson_batches(1000, 0.05, generator=gen, device=torch.device("cpu"))]
    assert len(sizes) == 50 * 20
    assert sum(sizes) / len(sizes) == pytest.approx(50, rel=0.03)
    # Poisson sampling: the batch size is Binomial(n, q), so it must vary.
    assert math.sqrt(torch.tensor(sizes, dtype=torch.float).var().item()) == pytest.approx(
        math.sqrt(1000 * 0.05 * 0.95), rel=0.15
    )


def test_epsilon_grows_with_steps_and_falls_with_noise():
    eps = {}
    for noise in (0.8, 2.0):
        model, private, x, y, _ = _setup(clip=1.0, noise=noise)
        values = []
        for _ in range(3):
            _step(private, x[:16], y[:16])
            values.append(private.epsilon())
        assert values[0] < values[1] < values[2]
        eps[noise] = values[-1]
    assert eps[2.0] < eps[0.8]
