"""Fixed-shape DP steps (dp.fixed_shape): Poisson batches padded to buckets give the unpadded update exactly."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from gsdefense.models import build_model
from gsdefense.telemetry import GradientProbe, TelemetryConfig
from gsdefense.training.adaptive import AdaptiveDPConfig
from gsdefense.training.batches import BUCKET, poisson_batches, poisson_plan
from gsdefense.training.dp import DPSGDConfig
from gsdefense.training.fused import FusedMember, train_fused
from gsdefense.training.loop import train
from gsdefense.training.optim import AdamConfig, SGDConfig

SHAPES = {"lr": (6,), "mlp": (10,), "cnn": (1, 8, 8)}


def _model(name: str):
    torch.manual_seed(0)
    return build_model(OmegaConf.create({"name": name}), input_shape=SHAPES[name], num_classes=4, mean=None, std=None)


def _data(name: str, n: int):
    gen = torch.Generator().manual_seed(1)
    x, y = torch.rand(n, *SHAPES[name], generator=gen), torch.randint(0, 4, (n,), generator=gen)
    return x, y, torch.arange(n) < n // 5


@pytest.mark.parametrize("n, rate", [(300, 1 / 6), (40, 1 / 40), (1000, 0.3)])
def test_plan_draws_the_unpadded_batches_padded_to_buckets(n, rate):
    a, b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    plain = list(poisson_batches(n, rate, generator=a, device=torch.device("cpu")))
    planned = list(poisson_plan(n, rate, generator=b, device=torch.device("cpu")))
    assert len(plain) == len(planned) and torch.equal(a.get_state(), b.get_state())
    for idx, batch in zip(plain, planned):
        assert batch.size == len(idx) and torch.equal(batch.idx[: batch.size], idx)
        assert len(batch.idx) % BUCKET == 0 or len(batch.idx) == n
        assert len(batch.idx) - batch.size < BUCKET or batch.size == 0
        assert batch.weight.tolist() == [1.0] * batch.size + [0.0] * (len(batch.idx) - batch.size)
    assert any(batch.size == 0 for batch in planned) == any(len(idx) == 0 for idx in plain)


def _flat(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


CASES = [
    ("lr", SGDConfig(lr=0.5, batch_size=16, epochs=2), DPSGDConfig(clip=0.5, noise=0.7, grad_sample_mode="bk")),
    ("mlp", SGDConfig(lr=0.3, batch_size=16, epochs=2), DPSGDConfig(clip=0.5, noise=0.7, grad_sample_mode="bk")),
    ("mlp", AdamConfig(lr=0.01, batch_size=16, epochs=2), DPSGDConfig(clip=1.0, noise=0.3, grad_sample_mode="vmap")),
    ("cnn", SGDConfig(lr=0.3, batch_size=16, epochs=2), DPSGDConfig(clip=0.5, noise=0.7, grad_sample_mode="bk")),
    ("mlp", SGDConfig(lr=0.3, batch_size=16, epochs=3), AdaptiveDPConfig(clip=0.5, noise=0.7, grad_sample_mode="bk")),
    ("mlp", SGDConfig(lr=0.3, batch_size=1, epochs=1), DPSGDConfig(clip=0.5, noise=0.7, grad_sample_mode="bk")),
]  # the last: q = 1/n, so many batches are empty (padded to one bucket of weight 0: noise-only steps)


@pytest.mark.parametrize("name, opt, dp", CASES, ids=[f"{c[0]}-{type(c[2]).__name__}-{i}" for i, c in enumerate(CASES)])
def test_fixed_shape_training_equals_unpadded_training(name, opt, dp):
    n = 40 if opt.batch_size == 1 else 96
    x, y, is_poison = _data(name, n)
    results = {}
    for fixed in (False, True):
        cfg = type(dp)(**{**dp.__dict__, "fixed_shape": fixed})
        probe = GradientProbe(TelemetryConfig(mode="batches"), x=x, y=y, is_poison=is_poison, clip=cfg.clip,
                              noise=cfg.noise)  # fmt: skip
        results[fixed] = train(_model(name), x, y, optimizer_cfg=opt, dp=cfg, seed=2, noise_seed=5, probe=probe)
    plain, fixed = results[False], results[True]
    assert (_flat(plain.model) - _flat(_model(name))).norm() > 1e-3, "training must move the parameters"
    torch.testing.assert_close(_flat(fixed.model), _flat(plain.model), rtol=1e-6, atol=1e-6)
    for a, b in zip(plain.history, fixed.history):
        assert a.keys() == b.keys() and a["epsilon"] == b["epsilon"]
        for key in (
            "train_loss",
            "noise_std",
            "mean_grad_norm_clean",
            "shaped_mean_grad_norm_poison",
            "mean_grad_cosine",
        ):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), key


def test_fixed_shape_fused_group_equals_unpadded_group():
    x, y, _ = _data("mlp", 96)
    opt = SGDConfig(lr=0.3, batch_size=16, epochs=2)
    out = {}
    for fixed in (False, True):
        members = [FusedMember(model=_model("mlp"), optimizer=opt, noise_seed=s,
                               dp=DPSGDConfig(clip=c, noise=0.5, grad_sample_mode="bk", fixed_shape=fixed))
                   for s, c in ((1, 0.5), (2, 2.0))]  # fmt: skip
        out[fixed] = [_flat(r.model) for r in train_fused(members, x, y, seed=4)]
    for a, b in zip(out[False], out[True]):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6)


def test_fixed_shape_is_on_for_cuda_only_by_default():
    from gsdefense.training.batches import use_fixed_shape

    assert use_fixed_shape(None, torch.device("cuda")) and not use_fixed_shape(None, torch.device("cpu"))
    assert use_fixed_shape(True, torch.device("cpu")) and not use_fixed_shape(False, torch.device("cuda"))


def test_fixed_shape_does_not_change_a_runs_references():
    """fixed_shape is left out of run_id; the clean reference and pretrained model (their cache keys and noise
    seeds) must ignore it too, or one run_id would pair with references trained on different noise."""
    import dataclasses

    from gsdefense.identity import dp_spec
    from gsdefense.plan import prepare
    from gsdefense.references import reference_spec
    from tests.conftest import compose_cfg

    plan = prepare(compose_cfg("dataset=moons", "attack=label_flip", "dp.fixed_shape=true"))
    off = dataclasses.replace(plan.dp, fixed_shape=False)
    assert reference_spec(plan, dp=plan.dp) == reference_spec(plan, dp=off)
    assert dp_spec(plan.dp) == dp_spec(off) and "fixed_shape" not in dp_spec(plan.dp)
    assert dp_spec(None) is None
