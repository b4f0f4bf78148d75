"""The hook-free DP engines (bk, vmap) perform exactly Opacus' DP-SGD step."""

from __future__ import annotations

import copy

import pytest
import torch
from omegaconf import OmegaConf
from torch.nn import functional as F

from gsdefense.errors import ConfigError
from gsdefense.models import build_model
from gsdefense.training.adaptive import AdaptiveDPConfig
from gsdefense.training.checkpoint import Checkpointer
from gsdefense.training.dp import DPSGDConfig, make_private, private_training
from gsdefense.training.engine import resolve_engine
from gsdefense.training.fast_dp import FastDPOptimizer
from gsdefense.training.loop import train
from gsdefense.training.optim import SGDConfig

SHAPES = {"lr": (6,), "mlp": (10,), "cnn": (1, 8, 8), "resnet18": (3, 32, 32)}


def _model(name: str, seed: int = 0):
    shape = SHAPES[name]
    torch.manual_seed(seed)
    channels = shape[0] if len(shape) == 3 else shape[0]
    return build_model(OmegaConf.create({"name": name}), input_shape=shape, num_classes=4,
                       mean=torch.zeros(channels), std=torch.ones(channels))  # fmt: skip


def _data(name: str, n: int):
    gen = torch.Generator().manual_seed(1)
    return torch.randn(n, *SHAPES[name], generator=gen) * 3, torch.randint(0, 4, (n,), generator=gen)


def _private(model, mode: str, *, clip: float, noise: float, n: int, batch: int, seed: int = 7, cfg_cls=DPSGDConfig):
    opt = torch.optim.SGD(model.parameters(), lr=1.0, momentum=0.5)
    cfg = cfg_cls(clip=clip, noise=noise, grad_sample_mode=mode)
    make = make_private if mode == "hooks" else private_training
    return make(model, opt, cfg=cfg, n_train=n, batch_size=batch, noise_generator=torch.Generator().manual_seed(seed))


def _step(private, x, y) -> None:
    private.optimizer.zero_grad()
    if isinstance(private.optimizer, FastDPOptimizer):
        private.optimizer.private_step(x, y)
    else:
        F.cross_entropy(private.module(x), y).backward()
        private.optimizer.step()


def _updates(name: str, mode: str, *, clip: float, noise: float, steps: int = 2):
    """Parameters after ``steps`` DP steps on fixed batches (momentum makes step 2 depend on step 1)."""
    model = _model(name)
    n, batch = (8, 4) if name == "resnet18" else (64, 16)
    x, y = _data(name, n)
    private = _private(model, mode, clip=clip, noise=noise, n=n, batch=batch)
    m = 3 if name == "resnet18" else 20
    for s in range(steps):
        _step(private, x[s : s + m], y[s : s + m])
    return torch.cat([p.detach().flatten() for p in model.parameters()]), private


@pytest.mark.parametrize("name", ["lr", "mlp", "cnn", "resnet18"])
@pytest.mark.parametrize("mode", ["bk", "vmap"])
def test_fast_step_equals_opacus_hooks_step_without_noise(name: str, mode: str):
    steps = 1 if name == "resnet18" else 2
    clip = 0.1 if name == "resnet18" else 0.5
    ref, _ = _updates(name, "hooks", clip=clip, noise=0.0, steps=steps)
    start = torch.cat([p.detach().flatten() for p in _model(name).parameters()])
    got, private = _updates(name, mode, clip=clip, noise=0.0, steps=steps)
    assert private.optimizer.mode == mode
    assert (ref - start).norm() > 1e-3, "the step must move the parameters"
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("mode", ["bk", "vmap"])
def test_same_generator_gives_opacus_noise_and_epsilon(mode: str):
    ref, ref_private = _updates("mlp", "hooks", clip=0.5, noise=1.3, steps=3)
    got, private = _updates("mlp", mode, clip=0.5, noise=1.3, steps=3)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)
    assert private.engine.accountant.history == ref_private.engine.accountant.history
    assert private.epsilon() == pytest.approx(ref_private.epsilon(), rel=1e-12)


def test_noise_std_is_noise_times_clip_and_streams_are_seeded():
    clip, noise = 0.3, 2.0
    model = _model("mlp")
    x, y = _data("mlp", 64)
    private = _private(model, "bk", clip=clip, noise=noise, n=64, batch=16)
    quiet_model = copy.deepcopy(model)
    quiet = _private(quiet_model, "bk", clip=clip, noise=0.0, n=64, batch=16)
    private.optimizer.original_optimizer.param_groups[0]["momentum"] = 0.0
    quiet.optimizer.original_optimizer.param_groups[0]["momentum"] = 0.0
    draws = []
    for _ in range(20):
        with torch.no_grad():
            for q, p in zip(quiet_model.parameters(), model.parameters()):
                q.copy_(p)
        start = [p.detach().clone() for p in model.parameters()]
        _step(private, x[:16], y[:16])
        _step(quiet, x[:16], y[:16])
        noisy = torch.cat([(s - p.detach()).flatten() for s, p in zip(start, model.parameters())])
        clean = torch.cat([(s - q.detach()).flatten() for s, q in zip(start, quiet_model.parameters())])
        draws.append((noisy - clean) * 16)
    draws = torch.cat(draws)
    assert len(draws) > 50_000
    assert draws.std().item() == pytest.approx(noise * clip, rel=0.02)
    assert abs(draws.mean().item()) < 0.02 * noise * clip
    a, _ = _updates("mlp", "bk", clip=clip, noise=noise)
    b, _ = _updates("mlp", "bk", clip=clip, noise=noise)
    assert torch.equal(a, b)


def test_auto_picks_bk_for_every_gsdefense_model_and_vmap_otherwise():
    assert all(resolve_engine("auto", _model(name)) == "bk" for name in SHAPES)
    odd = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    assert resolve_engine("auto", odd) == "vmap"
    with pytest.raises(ConfigError, match="LayerNorm"):
        resolve_engine("bk", odd)


def test_empty_batch_is_a_pure_noise_step_that_the_accountant_counts():
    model = _model("lr")
    before = torch.cat([p.detach().flatten() for p in model.parameters()])
    private = _private(model, "bk", clip=1.0, noise=1.0, n=64, batch=16)
    x, y = _data("lr", 4)
    _step(private, x[:0], y[:0])
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert not torch.equal(before, after)
    assert private.engine.accountant.history == [(1.0, 0.25, 1)]


@pytest.mark.parametrize("mode", ["bk", "vmap"])
def test_adaptive_noise_matches_opacus_adaptive_optimizer(mode: str):
    runs = {}
    for m in ("hooks", mode):
        model = _model("mlp")
        x, y = _data("mlp", 64)
        private = _private(model, m, clip=0.5, noise=2.0, n=64, batch=16, cfg_cls=AdaptiveDPConfig)
        for s in range(3):
            _step(private, x[16 * s : 16 * s + 16], y[16 * s : 16 * s + 16])
        private.optimizer.end_epoch()
        runs[m] = (private.optimizer.noise_std, torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert runs[mode][0] == pytest.approx(runs["hooks"][0], rel=1e-5)
    torch.testing.assert_close(runs[mode][1], runs["hooks"][1], atol=1e-5, rtol=1e-4)


def _loop(epochs: int, checkpointer: Checkpointer | None):
    model = _model("cnn")
    x, y = _data("cnn", 96)
    cfg = SGDConfig(epochs=epochs, batch_size=32)
    dp = DPSGDConfig(noise=1.0, grad_sample_mode="auto")
    return train(model, x, y, optimizer_cfg=cfg, dp=dp, seed=0, checkpointer=checkpointer), model


def test_fast_engine_checkpoint_round_trip_is_bit_identical(tmp_path):
    whole, whole_model = _loop(4, None)
    ckpt = Checkpointer(tmp_path / "c.pt", every_n_epochs=1, tag="t")
    _loop(2, ckpt)
    resumed, resumed_model = _loop(4, ckpt)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "elapsed_seconds"} for r in rows]  # noqa: E731
    assert strip(resumed.history) == strip(whole.history)
    assert resumed.epsilon == whole.epsilon and whole.epsilon > 0
    for a, b in zip(resumed_model.parameters(), whole_model.parameters()):
        assert torch.equal(a, b)


def test_cached_rdp_epsilon_equals_opacus_bit_for_bit():
    from opacus.accountants import RDPAccountant

    from gsdefense.training.dp import rdp_epsilon

    acc = RDPAccountant()
    for sigma, q, k in [(1.0, 1 / 22, 44), (0.5, 0.01, 7), (1.0, 1 / 22, 3)]:
        for _ in range(k):
            acc.step(noise_multiplier=sigma, sample_rate=q)
        assert rdp_epsilon(acc.history, delta=1e-5) == acc.get_epsilon(1e-5)


def test_fused_optimizers_get_contiguous_gradients():
    """torch 2.14's fused SGD reads a transposed gradient wrongly; the DP step hands over contiguous ones."""
    from gsdefense.training.optim import OPTIMIZERS

    model = _model("cnn")
    opt_cfg = SGDConfig(lr=0.1, batch_size=16)
    private = private_training(model, OPTIMIZERS.builder(opt_cfg)(opt_cfg, model.parameters()),
                               cfg=DPSGDConfig(clip=1.0, noise=0.0, grad_sample_mode="vmap"), n_train=64,
                               batch_size=16, noise_generator=torch.Generator().manual_seed(0))  # fmt: skip
    x, y = _data("cnn", 16)
    private.optimizer.private_step(x, y)
    assert all(p.grad.is_contiguous() for p in model.parameters())
