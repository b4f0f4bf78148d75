"""Gradient telemetry matches a naive per-sample loop and respects the run's shaping."""

from __future__ import annotations

import csv

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from gsdefense.run import run
from gsdefense.telemetry import COLUMNS, GradientProbe, TelemetryConfig
from gsdefense.training.dp import DPSGDConfig
from gsdefense.training.engine import poisson_rate
from gsdefense.training.fused import FusedMember, train_fused
from gsdefense.training.loop import poisson_batches, train, vanilla_batches
from gsdefense.training.optim import SGDConfig
from tests.conftest import TINY, compose_cfg


def _data(n_poison: int = 6):
    torch.manual_seed(0)
    x = torch.randn(30, 5)
    y = torch.randint(0, 3, (30,))
    is_poison = torch.zeros(30, dtype=torch.bool)
    is_poison[:n_poison] = True
    x[is_poison] *= 4  # poisons with larger gradients, as in the paper
    return x, y, is_poison


def _naive(model: nn.Module, x: torch.Tensor, y: torch.Tensor, scope: str = "all") -> torch.Tensor:
    """Per-sample gradients, one backward per sample: every parameter, or the last Linear kernel."""
    params = list(model.parameters())
    if scope == "last_layer":
        params = [[m for m in model.modules() if isinstance(m, nn.Linear)][-1].weight]
    rows = []
    for xi, yi in zip(x, y):
        grads = torch.autograd.grad(F.cross_entropy(model(xi[None]), yi[None]), params)
        rows.append(torch.cat([g.flatten() for g in grads]))
    return torch.stack(rows)


@pytest.mark.parametrize("scope", ["last_layer", "all"])
def test_raw_statistics_match_a_naive_loop(scope):
    x, y, is_poison = _data()
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
    cfg = TelemetryConfig(mode="probe", probe_size=50, scope=scope)
    probe = GradientProbe(cfg, x=x, y=y, is_poison=is_poison, clip=None, noise=None)
    out = probe.measure(model)
    g_c, g_p = _naive(model, x[~is_poison], y[~is_poison], scope), _naive(model, x[is_poison], y[is_poison], scope)
    m_c, m_p = g_c.mean(0), g_p.mean(0)
    assert out["mean_grad_norm_clean"] == pytest.approx(m_c.norm().item(), rel=1e-4)
    assert out["mean_grad_norm_poison"] == pytest.approx(m_p.norm().item(), rel=1e-4)
    assert out["mean_grad_ratio"] == pytest.approx((m_p.norm() / m_c.norm()).item(), rel=1e-4)
    assert out["mean_grad_cosine"] == pytest.approx(F.cosine_similarity(m_c, m_p, dim=0).item(), abs=1e-4)
    assert out["sample_norm_ratio"] == pytest.approx((g_p.norm(dim=1).mean() / g_c.norm(dim=1).mean()).item(), rel=1e-4)
    # vanilla: shaping is the identity
    assert out["shaped_mean_grad_ratio"] == pytest.approx(out["mean_grad_ratio"], rel=1e-5)
    assert out["shaped_mean_grad_cosine"] == pytest.approx(out["mean_grad_cosine"], abs=1e-5)


@pytest.mark.parametrize("scope", ["last_layer", "all"])
def test_shaped_means_are_means_of_clipped_gradients_bounded_by_clip(scope):
    x, y, is_poison = _data()
    model = nn.Sequential(nn.Linear(5, 3))
    clip = 1e-3
    cfg = TelemetryConfig(mode="probe", probe_size=50, scope=scope)
    probe = GradientProbe(cfg, x=x, y=y, is_poison=is_poison, clip=clip, noise=0.0)
    out = probe.measure(model)
    g_p = _naive(model, x[is_poison], y[is_poison], scope)
    assert (g_p.norm(dim=1) > clip).all(), "every sample is clipped at this clip"
    clipped = g_p * (clip / g_p.norm(dim=1, keepdim=True))
    assert (clipped.norm(dim=1) <= clip * (1 + 1e-5)).all()
    assert out["shaped_mean_grad_norm_poison"] == pytest.approx(clipped.mean(0).norm().item(), rel=1e-3)
    assert out["shaped_mean_grad_norm_poison"] <= clip + 1e-9 and out["shaped_mean_grad_norm_clean"] <= clip + 1e-9
    # clipping equalises magnitudes: the poison/clean gap shrinks
    assert out["shaped_mean_grad_ratio"] < out["mean_grad_ratio"]


def test_noise_has_std_noise_times_clip_over_subset_size():
    x, y, is_poison = _data(n_poison=0)
    model = nn.Linear(5, 3)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.zero_()
    cfg = TelemetryConfig(mode="probe", probe_size=30, scope="all")
    quiet = GradientProbe(cfg, x=x, y=y, is_poison=is_poison, clip=0.5, noise=0.0)
    noisy = GradientProbe(cfg, x=x, y=y, is_poison=is_poison, clip=0.5, noise=2.0)
    g, n = quiet._per_sample(model, quiet.clean_idx)
    draws = torch.stack([noisy._shaped_mean(g, n) - quiet._shaped_mean(g, n) for _ in range(400)])
    assert draws.std().item() == pytest.approx(2.0 * 0.5 / 30, rel=0.06)


def test_poison_columns_are_empty_without_poisons(tmp_path):
    run(compose_cfg(*TINY, "attack=none", "dp=none"), output_dir=tmp_path)
    rows = list(csv.DictReader((tmp_path / "history.csv").open()))
    assert set(COLUMNS) <= rows[0].keys()
    for row in rows:
        assert row["mean_grad_norm_poison"] == "" and row["mean_grad_ratio"] == "" and row["poison_train_acc"] == ""
        assert float(row["mean_grad_norm_clean"]) > 0
    assert not (tmp_path / "mextracts_epoch.csv").exists()


def test_run_writes_history_columns_and_original_exports(tmp_path):
    metrics = run(compose_cfg(*TINY, "telemetry.every_n_steps=5"), output_dir=tmp_path)
    rows = list(csv.DictReader((tmp_path / "history.csv").open()))
    mextracts = list(csv.DictReader((tmp_path / "mextracts_epoch.csv").open()))  # with a header row
    aextracts = list(csv.DictReader((tmp_path / "aextracts_epoch.csv").open()))
    assert len(rows) == len(mextracts) == len(aextracts) == 2
    for key in ("shaped_mean_grad_norm_clean", "shaped_mean_grad_norm_poison"):
        assert float(mextracts[0][key]) == pytest.approx(float(rows[0][key]))
    assert float(aextracts[1]["shaped_mean_grad_cosine"]) == pytest.approx(float(rows[1]["shaped_mean_grad_cosine"]))
    steps = list(csv.DictReader((tmp_path / "telemetry.csv").open()))
    assert [int(r["step"]) for r in steps] == list(range(5, 5 * len(steps) + 1, 5)) and len(steps) >= 2
    assert metrics["status"] == "ok"


def test_telemetry_does_not_change_training(tmp_path):
    on = run(compose_cfg(*TINY), output_dir=tmp_path / "on")
    off = run(compose_cfg(*TINY, "telemetry.enabled=false"), output_dir=tmp_path / "off")
    assert on["clean_acc"] == off["clean_acc"] and on["train_loss"] == off["train_loss"]


def _frozen_training(dp: DPSGDConfig | None, *, fused: bool = False):
    """One epoch with lr 0 (parameters stay at their start, so every batch sees the same weights)."""
    x, y, is_poison = _data(n_poison=8)
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
    start = [p.detach().clone() for p in model.parameters()]
    probe = GradientProbe(TelemetryConfig(mode="batches"), x=x, y=y, is_poison=is_poison,
                          clip=dp.clip if dp else None, noise=dp.noise if dp else None)  # fmt: skip
    opt = SGDConfig(lr=0.0, momentum=0.0, batch_size=8, epochs=1)
    if fused:
        (result,) = train_fused([FusedMember(model=model, optimizer=opt, dp=dp, noise_seed=3, probe=probe)], x, y,
                                seed=4)  # fmt: skip
    else:
        result = train(model, x, y, optimizer_cfg=opt, dp=dp, seed=4, probe=probe, noise_seed=3)
    assert all(torch.equal(a, b) for a, b in zip(start, model.parameters()))
    return result.history[-1], model, (x, y, is_poison)


def _naive_batches(model, x, y, is_poison, *, clip: float | None, batches) -> dict[str, float]:
    """Hong's analysis, naively: per batch, the clean and the poison mean gradient of the last kernel, clipped
    (DP) on the whole-model per-sample norm as the update and the original's analysis clip; and the per-sample
    statistics over every (sample, batch) occurrence."""
    sums = {"clean": [], "poison": []}
    norms, clipped, cosines = {"clean": [], "poison": []}, {"clean": [], "poison": []}, {"clean": [], "poison": []}
    for idx in batches:
        clean_sel = idx[~is_poison[idx]]
        clean_mean = _naive(model, x[clean_sel], y[clean_sel], "last_layer").mean(0) if len(clean_sel) else None
        for name, mask in (("clean", ~is_poison[idx]), ("poison", is_poison[idx])):
            sel = idx[mask]
            if len(sel) == 0:
                continue
            g = _naive(model, x[sel], y[sel], "last_layer")
            whole = _naive(model, x[sel], y[sel], "all").norm(dim=1)
            norms[name] += g.norm(dim=1).tolist()
            clipped[name] += whole.clamp(max=clip).tolist() if clip is not None else []
            if clean_mean is not None:
                cosines[name] += F.cosine_similarity(g, clean_mean[None], dim=1).tolist()
            if clip is not None:
                g = g * (clip / (whole[:, None] + 1e-6)).clamp(max=1.0)
            sums[name].append(g.mean(0))
    m_c, m_p = torch.stack(sums["clean"]).mean(0), torch.stack(sums["poison"]).mean(0)
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    out = {"norm_clean": m_c.norm().item(), "norm_poison": m_p.norm().item(),
           "cosine": F.cosine_similarity(m_c, m_p, dim=0).item(),
           "sample_norm_ratio": mean(norms["poison"]) / mean(norms["clean"]),
           "poison_sample_cosine": mean(cosines["poison"]), "clean_sample_cosine": mean(cosines["clean"])}  # fmt: skip
    if clip is not None:
        out["clipped_sample_norm_ratio"] = mean(clipped["poison"]) / mean(clipped["clean"])
    return out


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("private", [False, True])
def test_batch_telemetry_equals_a_naive_per_batch_computation(private: bool, fused: bool):
    dp = DPSGDConfig(clip=0.05, noise=0.0, grad_sample_mode="bk") if private else None
    row, model, (x, y, is_poison) = _frozen_training(dp, fused=fused)
    sampler = torch.Generator().manual_seed(4)
    if private:
        rate, _ = poisson_rate(len(y), 8)
        batches = list(poisson_batches(len(y), rate, generator=sampler, device=x.device))
    else:
        batches = list(vanilla_batches(len(y), 8, generator=sampler, device=x.device))
    raw = _naive_batches(model, x, y, is_poison, clip=None, batches=batches)
    assert row["mean_grad_norm_clean"] == pytest.approx(raw["norm_clean"], rel=1e-4)
    assert row["mean_grad_norm_poison"] == pytest.approx(raw["norm_poison"], rel=1e-4)
    assert row["mean_grad_cosine"] == pytest.approx(raw["cosine"], abs=1e-4)
    for key in ("sample_norm_ratio", "poison_sample_cosine", "clean_sample_cosine"):
        assert row[key] == pytest.approx(raw[key], rel=1e-4, abs=1e-5), key
    shaped = _naive_batches(model, x, y, is_poison, clip=dp.clip if dp else None, batches=batches)
    assert row["shaped_mean_grad_norm_clean"] == pytest.approx(shaped["norm_clean"], rel=1e-4)
    assert row["shaped_mean_grad_norm_poison"] == pytest.approx(shaped["norm_poison"], rel=1e-4)
    assert row["shaped_mean_grad_cosine"] == pytest.approx(shaped["cosine"], abs=1e-4)
    if private:
        assert row["shaped_mean_grad_norm_poison"] <= 0.05 + 1e-6
        assert row["clipped_sample_norm_ratio"] == pytest.approx(shaped["clipped_sample_norm_ratio"], rel=1e-4)
    else:
        assert row["clipped_sample_norm_ratio"] is None


def test_batch_telemetry_noise_does_not_touch_training():
    quiet, model_q, _ = _frozen_training(DPSGDConfig(clip=0.05, noise=0.0, grad_sample_mode="bk"))
    noisy, model_n, _ = _frozen_training(DPSGDConfig(clip=0.05, noise=1.0, grad_sample_mode="bk"))
    assert noisy["mean_grad_norm_clean"] == pytest.approx(quiet["mean_grad_norm_clean"], rel=1e-6)  # raw: no noise
    assert noisy["shaped_mean_grad_norm_clean"] != pytest.approx(quiet["shaped_mean_grad_norm_clean"], rel=1e-3)
