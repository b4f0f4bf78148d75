"""Per-sample gradient telemetry: what the subset means (``mean_grad_*``) cannot show.

The original's batch-mean ratio sums each subset's gradients, so once the clean and poison sums cancel it is
n_clean / n_poison whatever the poisons are; the per-sample columns measure the poisons' own gradients, and under
DP the norms the update clipped with.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from gsdefense.identity import Identity
from gsdefense.run import run
from gsdefense.telemetry import GradientProbe, TelemetryConfig, original_exports
from gsdefense.telemetry_batches import BatchTelemetry
from gsdefense.training.dp import DPSGDConfig
from gsdefense.training.fused import FusedMember, train_fused
from gsdefense.training.loop import train
from gsdefense.training.optim import SGDConfig
from tests.conftest import TINY, compose_cfg
from tests.test_telemetry import _naive

PER_SAMPLE = ("sample_norm_ratio", "clipped_sample_norm_ratio", "poison_sample_cosine", "clean_sample_cosine")


def _cancelling() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """6 clean and 2 poison inputs of a 2-class final layer at logits 0, all labelled 0, so δ = (−½, ½) and
    g_i = δ a_iᵀ: the clean inputs (±5 twice, 0.2 twice) sum to (0.4, 0), the poisons' (−0.2 each) to (−0.4, 0).
    The subsets' gradient sums cancel, as near convergence; per sample, clean gradients are 17× the poisons'."""
    a = torch.tensor([[5.0, 0], [-5, 0], [5, 0], [-5, 0], [0.2, 0], [0.2, 0], [-0.2, 0], [-0.2, 0]])
    y = torch.zeros(8, dtype=torch.long)
    is_poison = torch.tensor([False] * 6 + [True] * 2)
    return a, y, is_poison


CANCELLING = {
    "mean_grad_ratio": 3.0,  # n_clean / n_poison = 6 / 2: the subset means only count the samples
    "mean_grad_cosine": -1.0,
    "sample_norm_ratio": 0.2 / 3.4,  # mean poison ‖a_i‖ / mean clean ‖a_i‖ (‖δ‖ is common)
    "poison_sample_cosine": -1.0,
    "clean_sample_cosine": 1 / 3,  # four ±1 that cancel, two +1
}


def test_batch_means_count_poisons_where_sums_cancel_per_sample_columns_do_not():
    a, y, is_poison = _cancelling()
    telemetry = BatchTelemetry(y=y, is_poison=is_poison, clips=[None], noises=[None], generator=torch.Generator())
    telemetry.record(a, torch.zeros(8, 2), torch.arange(8))
    (row,) = telemetry.end_epoch()
    for key, value in CANCELLING.items():
        assert row[key] == pytest.approx(value, abs=1e-6), key
    assert "clipped_sample_norm_ratio" not in row  # vanilla: nothing is clipped


def test_the_probe_sees_the_same_cancellation():
    a, y, is_poison = _cancelling()
    model = nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.zero_()
    probe = GradientProbe(TelemetryConfig(probe_size=8), x=a, y=y, is_poison=is_poison, clip=None, noise=None)
    row = probe.measure(model)
    for key, value in CANCELLING.items():
        assert row[key] == pytest.approx(value, abs=1e-6), key
    assert row["clipped_sample_norm_ratio"] is None


def _data(n: int = 60, n_poison: int = 12):
    torch.manual_seed(0)
    x = torch.randn(n, 5)
    y = torch.randint(0, 3, (n,))
    is_poison = torch.zeros(n, dtype=torch.bool)
    is_poison[:n_poison] = True
    x[is_poison] *= 4  # larger gradients, as the paper's poisons
    return x, y, is_poison


def _model() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))


@pytest.mark.parametrize("scope", ["last_layer", "all"])
def test_probe_per_sample_columns_equal_a_naive_per_sample_computation(scope):
    x, y, is_poison = _data()
    model = _model()
    g_c, g_p = _naive(model, x[~is_poison], y[~is_poison], scope), _naive(model, x[is_poison], y[is_poison], scope)
    n_c, n_p = g_c.norm(dim=1), g_p.norm(dim=1)
    clip = float(n_c.median())  # inside the norms, so that clipping changes the ratio
    probe = GradientProbe(TelemetryConfig(probe_size=60, scope=scope), x=x, y=y, is_poison=is_poison, clip=clip,
                          noise=0.0)  # fmt: skip
    row = probe.measure(model)
    assert row["clipped_sample_norm_ratio"] != pytest.approx(row["sample_norm_ratio"], rel=1e-2)
    mean_c = g_c.mean(0, keepdim=True)
    want = {
        "sample_norm_ratio": n_p.mean() / n_c.mean(),
        "clipped_sample_norm_ratio": n_p.clamp(max=clip).mean() / n_c.clamp(max=clip).mean(),
        "poison_sample_cosine": F.cosine_similarity(g_p, mean_c, dim=1).mean(),
        "clean_sample_cosine": F.cosine_similarity(g_c, mean_c, dim=1).mean(),
    }
    for key, value in want.items():
        assert row[key] == pytest.approx(value.item(), rel=1e-4), key


class _Spy:
    """Records what the training loop hands the telemetry per step: the batch and the DP update's norms."""

    def __init__(self, probe: GradientProbe) -> None:
        self.steps: list[tuple[torch.Tensor, torch.Tensor]] = []
        real = probe.end_step

        def end_step(idx, weight=None, *, norms=None):
            self.steps.append((idx.clone(), norms.clone()))
            real(idx, weight, norms=norms)

        probe.end_step = end_step


def _dp_run(mode: str, *, clip: float, epochs: int = 2, lr: float = 0.1, fixed_shape: bool = False):
    x, y, is_poison = _data()
    dp = DPSGDConfig(clip=clip, noise=0.0, grad_sample_mode=mode, fixed_shape=fixed_shape)
    probe = GradientProbe(TelemetryConfig(mode="batches"), x=x, y=y, is_poison=is_poison, clip=clip, noise=0.0)
    spy = _Spy(probe)
    opt = SGDConfig(lr=lr, momentum=0.0, batch_size=10, epochs=epochs)
    result = train(_model(), x, y, optimizer_cfg=opt, dp=dp, seed=4, probe=probe, noise_seed=3)
    return result, spy, is_poison


@pytest.mark.parametrize("mode", ["bk", "hooks"])
def test_clipped_ratio_is_the_ratio_of_the_norms_the_update_clipped_with(mode):
    clip = 2.0  # inside the whole-model norms (1.1–4.8 at the start)
    result, spy, is_poison = _dp_run(mode, clip=clip)
    steps_per_epoch = len(spy.steps) // 2
    for epoch, row in enumerate(result.history):
        steps = spy.steps[epoch * steps_per_epoch : (epoch + 1) * steps_per_epoch]
        idx = torch.cat([i for i, _ in steps])
        norms = torch.cat([n for _, n in steps])
        poison = is_poison[idx]
        assert (norms < clip).any() and (norms > clip).any(), "the clip sits inside the norms"
        low = norms.clamp(max=clip)
        assert low[poison].mean() <= clip and low[~poison].mean() <= clip
        want = (low[poison].mean() / low[~poison].mean()).item()
        assert row["clipped_sample_norm_ratio"] == pytest.approx(want, rel=1e-5)


def test_the_engines_norms_are_whole_model_per_sample_norms():
    """At lr 0 every step sees the initial weights: the norms handed over are the naive whole-model ones."""
    result, spy, _ = _dp_run("bk", clip=2.0, epochs=1, lr=0.0)
    x, y, _ = _data()
    model = _model()
    for idx, norms in spy.steps:
        torch.testing.assert_close(norms, _naive(model, x[idx], y[idx], "all").norm(dim=1), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    ("mode", "fixed_shape"), [("vmap", False), ("bk", True), ("hooks", False), ("functorch", False)]
)
def test_every_dp_engine_reports_the_same_per_sample_columns(mode: str, fixed_shape: bool):
    """Book-keeping, vmap (padded fixed-shape batches too) and Opacus' engines hand over the same norms."""
    bk, _, _ = _dp_run("bk", clip=2.0)
    other, _, _ = _dp_run(mode, clip=2.0, fixed_shape=fixed_shape)
    for a, b in zip(bk.history, other.history):
        for key in PER_SAMPLE:
            assert a[key] == pytest.approx(b[key], rel=1e-4), key
    # seed 0 (Binomial-size Poisson batches): [sample, clipped] norm ratios 1.997, 1.382; cosines 0.023 (poisons),
    # 0.325 (clean)
    last = [bk.history[-1][k] for k in PER_SAMPLE]
    assert last == pytest.approx([1.99735, 1.38175, 0.02301, 0.32515], abs=2e-4)


def test_fused_members_report_what_their_separate_runs_report():
    x, y, is_poison = _data()
    opt = SGDConfig(lr=0.1, momentum=0.0, batch_size=10, epochs=2)
    clips = (0.3, 2.0)

    def probe(clip: float) -> GradientProbe:
        return GradientProbe(TelemetryConfig(mode="batches"), x=x, y=y, is_poison=is_poison, clip=clip, noise=0.5)

    members = [
        FusedMember(model=_model(), optimizer=opt, dp=DPSGDConfig(clip=c, noise=0.5, grad_sample_mode="bk"),
                    noise_seed=10 + k, probe=probe(c))
        for k, c in enumerate(clips)
    ]  # fmt: skip
    fused = train_fused(members, x, y, seed=4)
    for k, clip in enumerate(clips):
        dp = DPSGDConfig(clip=clip, noise=0.5, grad_sample_mode="bk")
        alone = train(_model(), x, y, optimizer_cfg=opt, dp=dp, seed=4, probe=probe(clip), noise_seed=10 + k)
        for a, b in zip(fused[k].history, alone.history):
            for key in (*PER_SAMPLE, "mean_grad_ratio", "shaped_mean_grad_ratio"):
                assert a[key] == pytest.approx(b[key], rel=1e-4), (clip, key)
    assert fused[0].history[-1]["clipped_sample_norm_ratio"] != pytest.approx(
        fused[1].history[-1]["clipped_sample_norm_ratio"], rel=1e-3
    )  # each member's own clip


def test_original_exports_have_a_header_unless_the_original_format_is_asked_for(tmp_path):
    history = [{"shaped_mean_grad_norm_clean": 0.5, "shaped_mean_grad_norm_poison": 1.5,
                "shaped_mean_grad_cosine": -0.25}, {"shaped_mean_grad_norm_poison": None}]  # fmt: skip
    assert original_exports(history) == (
        ["shaped_mean_grad_norm_clean,shaped_mean_grad_norm_poison", "0.5,1.5"],
        ["shaped_mean_grad_cosine", "-0.25"],
    )
    assert original_exports(history, header=False) == (["0.5,1.5"], ["-0.25"])
    assert original_exports(history[1:]) == ([], [])  # no epoch with poisons: no file
    headed, original = compose_cfg(*TINY), compose_cfg(*TINY, "telemetry.original_format=true")
    assert Identity.of(headed).run_id == Identity.of(original).run_id  # a file format, not another run
    run(original, output_dir=tmp_path)
    lines = (tmp_path / "mextracts_epoch.csv").read_text().splitlines()
    assert len(lines) == 2 and all(len([float(v) for v in line.split(",")]) == 2 for line in lines)
