"""The CUDA path: DP engines vs Opacus, fused grids, sampling and noise, resume, the CLI, host-device syncs.

Every test is marked ``cuda`` and skipped without a CUDA device; ``scripts/gpu-check.sh`` runs them, then
the benchmark table, in one command on a GPU machine. Their CPU twins live in test_fast_dp.py,
test_fused.py and test_resume.py. ``GSDEFENSE_TEST_DEVICE=cpu pytest tests/test_cuda.py`` runs this file on
the CPU to check the tests themselves (the sync tests need CUDA and skip).

The ``device`` fixture turns TF32 off (cuDNN convolutions use it by default): these tests check float32
arithmetic, to the CPU tests' tolerances. Only public entry points are used (``train``, ``train_fused``,
``run``/``run_group``, the CLI) with Opacus' own ``PrivacyEngine`` as the reference.
"""

from __future__ import annotations

import json
import os
import warnings
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

import tests.test_fused as fused_tests
from gsdefense.training.checkpoint import Checkpointer
from gsdefense.training.dp import DPSGDConfig
from gsdefense.training.fused import FusedMember, train_fused
from gsdefense.training.loop import train
from gsdefense.training.optim import AdamConfig, SGDConfig
from tests.conftest import TINY, run_cli
from tests.test_fast_dp import _data, _model
from tests.test_fused import ONE_SAMPLE, PARAM_RTOL, _flat

DEVICE = torch.device(os.environ.get("GSDEFENSE_TEST_DEVICE", "cuda"))
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(DEVICE.type == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.fixture
def device():
    """The device under test, with TF32 off for the test's duration."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield DEVICE
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _on(device: torch.device, name: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _data(name, n)
    return x.to(device), y.to(device)


# --- DP engines vs Opacus ------------------------------------------------------------------------------------
# With batch_size = n the Poisson rate is q = 1: every step is the whole set, so gsdefense's ``train`` and a
# plain Opacus loop see the same batches without sharing a sampler; momentum makes step k depend on step k-1.
# The clips sit near the median per-sample norm, so about half the samples are clipped at every step.
FULL_BATCH = {"lr": 64, "mlp": 64, "cnn": 64, "resnet18": 16}
LR = 0.02
CLIP = {"lr": 7.0, "mlp": 16.0, "cnn": 6.0, "resnet18": 30.0}


def _opacus(name: str, device, *, clip: float, noise: float, steps: int, noise_seed: int):
    """Opacus' DP-SGD (``PrivacyEngine.make_private``, hooks) for ``steps`` full-batch steps: params and ε."""
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    n = FULL_BATCH[name]
    x, y = _on(device, name, n)
    model = _model(name).to(device)
    engine = PrivacyEngine(accountant="rdp")  # gsdefense's default accountant
    module, opt, _ = engine.make_private(
        module=model, optimizer=torch.optim.SGD(model.parameters(), lr=LR, momentum=0.5),
        data_loader=DataLoader(TensorDataset(x, y), batch_size=n), noise_multiplier=noise, max_grad_norm=clip,
        poisson_sampling=True, noise_generator=torch.Generator(device=device).manual_seed(noise_seed),
        grad_sample_mode="hooks",
    )  # fmt: skip
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(module(x), y).backward()
        opt.step()
    return _flat(model), engine.get_epsilon(1e-5) if noise > 0 else None


def _gsdefense(name: str, device, *, mode: str, clip: float, noise: float, steps: int, noise_seed: int):
    n = FULL_BATCH[name]
    x, y = _on(device, name, n)
    model = _model(name).to(device)
    opt = SGDConfig(lr=LR, momentum=0.5, batch_size=n, epochs=steps)
    dp = DPSGDConfig(clip=clip, noise=noise, delta=1e-5, grad_sample_mode=mode)
    result = train(model, x, y, optimizer_cfg=opt, dp=dp, seed=0, noise_seed=noise_seed)
    assert all(p.device.type == device.type for p in model.parameters())
    return _flat(model), result.epsilon


@pytest.mark.parametrize("name", ["lr", "mlp", "cnn", "resnet18"])
@pytest.mark.parametrize("mode", ["bk", "vmap"])
def test_engine_equals_opacus_on_the_device_without_noise(device, name: str, mode: str):
    steps = 1 if name == "resnet18" else 3  # as test_fast_dp: resnet18 amplifies float rounding ~100× per step
    ref, _ = _opacus(name, device, clip=CLIP[name], noise=0.0, steps=steps, noise_seed=0)
    got, _ = _gsdefense(name, device, mode=mode, clip=CLIP[name], noise=0.0, steps=steps, noise_seed=0)
    start = _flat(_model(name)).to(device)
    assert (ref - start).norm() > 1e-3, "the steps must move the parameters"
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("mode", ["bk", "vmap", "hooks"])
def test_same_device_generator_gives_opacus_noise_and_epsilon(device, mode: str):
    clip = CLIP["mlp"]
    ref, ref_eps = _opacus("mlp", device, clip=clip, noise=1.3, steps=3, noise_seed=11)
    got, eps = _gsdefense("mlp", device, mode=mode, clip=clip, noise=1.3, steps=3, noise_seed=11)
    quiet, _ = _gsdefense("mlp", device, mode=mode, clip=clip, noise=0.0, steps=3, noise_seed=11)
    assert (got - quiet).norm() > 1e-2, "the noise must move the parameters"
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)
    assert eps == pytest.approx(ref_eps, rel=1e-9) and eps > 0


# --- Poisson sampling and noise on the device ------------------------------------------------------------------


def test_poisson_batches_on_the_device_are_binomial_and_seeded(device):
    """|B| ~ Binomial(n, q) per step, each sample in a fraction q of the steps, distinct indices; seeded."""
    from gsdefense.training.loop import poisson_batches  # the sampler ``train`` and ``train_fused`` use

    n, q, epochs = 10_000, 0.01, 20
    gen = torch.Generator(device=device).manual_seed(3)
    sizes, counts = [], torch.zeros(n, device=device)
    for _ in range(epochs):
        batches = list(poisson_batches(n, q, generator=gen, device=device))
        assert len(batches) == round(1 / q)
        for idx in batches:
            assert idx.device.type == device.type and len(idx.unique()) == len(idx)
            counts[idx] += 1
            sizes.append(len(idx))
    sizes_t = torch.tensor(sizes, dtype=torch.float64)
    assert sizes_t.mean().item() == pytest.approx(n * q, abs=1.0)  # standard error 0.22
    assert sizes_t.var().item() == pytest.approx(n * q * (1 - q), rel=0.15)  # standard error 3%
    steps = epochs * round(1 / q)
    assert counts.mean().item() == pytest.approx(steps * q, rel=0.01)
    assert counts.var().item() == pytest.approx(steps * q * (1 - q), rel=0.1)
    first = [b.cpu() for b in poisson_batches(n, q, generator=torch.Generator(device=device).manual_seed(3),
                                              device=device)]  # fmt: skip
    again = [b.cpu() for b in poisson_batches(n, q, generator=torch.Generator(device=device).manual_seed(3),
                                              device=device)]  # fmt: skip
    other = [b.cpu() for b in poisson_batches(n, q, generator=torch.Generator(device=device).manual_seed(4),
                                              device=device)]  # fmt: skip
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(len(a) == len(b) and torch.equal(a, b) for a, b in zip(first, other))


def _noise_dominated_deltas(device, seeds: list[int], *, fused: bool) -> list[torch.Tensor]:
    """Parameter change after one epoch of 4 steps whose update is noise: std σC·lr/(qn)·√4 = 1/16·2."""
    x, y = _on(device, "mlp", 64)
    opt = SGDConfig(lr=1.0, momentum=0.0, batch_size=16, epochs=1)  # q = 1/4, expected batch 16
    dp = DPSGDConfig(clip=1e-4, noise=1e4, grad_sample_mode="bk")  # σC = 1 ≫ clipped signal ≤ 16·1e-4
    start = _flat(_model("mlp")).to(device)
    if fused:
        members = [FusedMember(model=_model("mlp").to(device), optimizer=opt, dp=dp, noise_seed=s) for s in seeds]
        return [_flat(r.model) - start for r in train_fused(members, x, y, seed=0)]
    return [_flat(train(_model("mlp").to(device), x, y, optimizer_cfg=opt, dp=dp, seed=0, noise_seed=s).model) - start
            for s in seeds]  # fmt: skip


@pytest.mark.parametrize("fused", [False, True], ids=["separate", "fused"])
def test_dp_noise_on_the_device_has_std_sigma_c_and_independent_seeded_streams(device, fused: bool):
    deltas = _noise_dominated_deltas(device, [1, 2, 3, 4], fused=fused)
    assert all(d.device.type == device.type for d in deltas)
    pooled = torch.cat(deltas)
    assert pooled.std().item() == pytest.approx(1 / 16 * 2, rel=0.03)
    assert abs(pooled.mean().item()) < 0.04 * pooled.std().item()
    for i in range(len(deltas)):
        for j in range(i + 1, len(deltas)):
            assert abs(torch.corrcoef(torch.stack([deltas[i], deltas[j]]))[0, 1].item()) < 0.06
    again = _noise_dominated_deltas(device, [1], fused=False)[0]
    torch.testing.assert_close(again, deltas[0], atol=1e-6, rtol=0)  # same seed, same stream (fused too)


# --- Fused vs separate ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, opt, private",
    [("mlp", SGDConfig(lr=0.05, batch_size=32, epochs=3), True),
     ("mlp", AdamConfig(lr=0.01, batch_size=32, epochs=3), True),
     ("mlp", SGDConfig(lr=0.05, batch_size=32, epochs=3), False),
     ("cnn", SGDConfig(lr=0.05, batch_size=32, epochs=2), True)],
)  # fmt: skip
def test_train_fused_equals_separate_training_on_the_device(device, name: str, opt, private: bool):
    """Same seed and noise seeds → same batches and noise: each member is its separate run, on the device."""
    import dataclasses

    x, y = _on(device, name, 200)
    grid = [(c, s, lr) for c in (0.5, 2.0) for s in (0.0, 0.7) for lr in (opt.lr, opt.lr / 2)]
    members, separate = [], []
    for i, (clip, noise, lr) in enumerate(grid if private else grid[:2]):
        dp = DPSGDConfig(clip=clip, noise=noise, grad_sample_mode="auto") if private else None
        o = dataclasses.replace(opt, lr=lr)
        members.append(FusedMember(model=_model(name).to(device), optimizer=o, dp=dp, noise_seed=100 + i))
        separate.append(train(_model(name).to(device), x, y, optimizer_cfg=o, dp=dp, seed=5, noise_seed=100 + i))
    fused = train_fused(members, x, y, seed=5)
    start = _flat(_model(name)).to(device)
    for a, b in zip(fused, separate):
        assert (_flat(b.model) - start).norm() > 1e-3
        torch.testing.assert_close(_flat(a.model), _flat(b.model), rtol=PARAM_RTOL, atol=1e-6)
        assert a.epsilon == b.epsilon
        assert [r["train_loss"] for r in a.history] == pytest.approx([r["train_loss"] for r in b.history], rel=1e-4)


def test_fused_group_writes_what_separate_runs_write_on_the_device(device, tmp_path, monkeypatch):
    """test_fused's whole-run equivalence (2×2 grid, metrics, files, references), with ``device=`` this device."""
    monkeypatch.setattr(fused_tests, "TINY", [*TINY, f"device={device}"])
    fused_tests.test_fused_group_writes_what_separate_runs_write(tmp_path)
    assert json.loads((tmp_path / "fused" / "0" / "metrics.json").read_text())["device"].startswith(device.type)


# --- Checkpoint / resume -------------------------------------------------------------------------------------


def _resumable(device, epochs: int, checkpointer: Checkpointer | None):
    x, y = _on(device, "mlp", 256)
    model = _model("mlp").to(device)
    dp = DPSGDConfig(noise=1.0, grad_sample_mode="auto")
    result = train(model, x, y, optimizer_cfg=SGDConfig(epochs=epochs, batch_size=32), dp=dp, seed=0,
                   checkpointer=checkpointer)  # fmt: skip
    return result, _flat(model)


def test_checkpoint_round_trip_on_the_device_equals_an_uninterrupted_run(device, tmp_path):
    whole, whole_params = _resumable(device, 4, None)
    _, twice = _resumable(device, 4, None)
    ckpt = Checkpointer(tmp_path / "c.pt", every_n_epochs=1, tag="t")
    _resumable(device, 2, ckpt)  # "killed" after epoch 2
    assert torch.load(tmp_path / "c.pt", weights_only=True)["epoch"] == 2
    resumed, resumed_params = _resumable(device, 4, ckpt)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "elapsed_seconds"} for r in rows]  # noqa: E731
    assert resumed.epsilon == whole.epsilon > 0 and len(resumed.history) == 4
    if torch.equal(twice, whole_params):  # deterministic kernels: resuming must be bit-identical, as on CPU
        assert strip(resumed.history) == strip(whole.history)
        assert torch.equal(resumed_params, whole_params)
    else:  # non-deterministic kernels: resuming may differ only as much as two uninterrupted runs do
        spread = (twice - whole_params).abs().max().item()
        torch.testing.assert_close(resumed_params, whole_params, atol=10 * spread, rtol=0)


# --- The CLI -------------------------------------------------------------------------------------------------

DESIGN = ["dp.clip=0.1,1,4", "dp.noise=0.4,4.0", "attack=blend", "optimizer.epochs=2"]


def test_design_sweep_through_the_cli_on_the_device_basic_and_fused_agree(device, tmp_path):
    metrics = {}
    for launcher in ("basic", "fused"):
        sweep = tmp_path / launcher
        extra = ["hydra/launcher=fused"] if launcher == "fused" else []
        proc = run_cli("-m", *extra, *DESIGN, f"device={device}", f"hydra.sweep.dir={sweep}",
                       env={"GSDEFENSE_CACHE_DIR": str(tmp_path / f"cache-{launcher}")})  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "6 ok" in proc.stderr
        metrics[launcher] = [json.loads((sweep / str(j) / "metrics.json").read_text()) for j in range(6)]
    for a, b in zip(metrics["basic"], metrics["fused"]):
        assert a["status"] == b["status"] == "ok" and a["device"].startswith(device.type)
        assert b["fused_group_size"] == 6 and a["run_id"] == b["run_id"]
        assert a["epsilon"] == b["epsilon"]
        for key in ("clean_acc", "asr", "acc_ref", "acc_ref_dp_matched"):  # float order may flip a boundary point
            assert a[key] == pytest.approx(b[key], abs=2 * ONE_SAMPLE), key


# --- No host-device synchronisation per step -----------------------------------------------------------------


def _sync_sites(fn) -> list[str]:
    """``fn()`` under CUDA's sync debug mode ``warn``: the Python line (file:line) of every synchronisation."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return [f"{Path(w.filename).name}:{w.lineno}" for w in caught if "synchroniz" in str(w.message)]


def test_sync_counter_sees_known_syncs(device):
    """The instrument: ``.item()`` and ``nonzero()`` sync, each named by the calling line; ``t * 2`` does not."""
    if device.type != "cuda":
        pytest.skip("CUDA's sync debug mode needs a CUDA device")
    t = torch.arange(8, device=device)
    assert _sync_sites(lambda: t.sum().item()) and _sync_sites(lambda: (t > 3).nonzero())
    assert {site.split(":")[0] for site in _sync_sites(lambda: t.sum().item())} == {Path(__file__).name}
    assert _sync_sites(lambda: t * 2 + 1) == []


def _one_epoch(kind: str, device, x, y, batch_size: int) -> None:
    opt = SGDConfig(epochs=1, batch_size=batch_size)
    dp = None if kind == "vanilla" else DPSGDConfig(noise=1.0, grad_sample_mode="bk")
    if kind == "fused_dp":
        members = [FusedMember(model=_model("mlp").to(device), optimizer=opt, dp=dp, noise_seed=s) for s in (1, 2)]
        train_fused(members, x, y, seed=0)
    else:
        train(_model("mlp").to(device), x, y, optimizer_cfg=opt, dp=dp, seed=0)


@pytest.mark.parametrize("kind", ["vanilla", "dp_bk", "fused_dp"])
def test_training_steps_do_not_synchronise_with_the_host(device, kind: str):
    """An epoch of 16 steps synchronises exactly as often as one of 4 steps: syncs only at epoch ends.

    Equivalent to running one step under ``set_sync_debug_mode("error")``, without catching the epoch-end
    ``.item()``/isfinite checks (fine: once per epoch); a failure names the lines that sync per step.
    """
    if device.type != "cuda":
        pytest.skip("CUDA's sync debug mode needs a CUDA device")
    x, y = _on(device, "mlp", 512)
    for batch_size in (128, 32):  # warm-up: lazy initialisation syncs once
        _one_epoch(kind, device, x, y, batch_size)
    few = _sync_sites(lambda: _one_epoch(kind, device, x, y, 128))  # 4 steps
    many = _sync_sites(lambda: _one_epoch(kind, device, x, y, 32))  # 16 steps
    per_step = Counter(many) - Counter(few)
    assert not per_step, f"{kind}: syncs that grow with the number of steps (4 → 16 steps): {dict(per_step)}"


# --- the closed-form chain engine (lr, mlp) on the device -----------------------------------------------------


CHAIN_DPS = [None, DPSGDConfig(clip=0.5, noise=0.7), DPSGDConfig(clip=0.5, noise=0.7, fixed_shape=True)]


@pytest.mark.parametrize("dp", CHAIN_DPS, ids=["vanilla", "dp", "dp-fixed-shape"])
@pytest.mark.parametrize("momentum", [0.0, 0.9], ids=["plain-sgd", "momentum"])
def test_chain_training_equals_the_generic_routes_on_the_device(device, monkeypatch, dp, momentum):
    """Whole runs on the device: the chain route (training.chain) against autograd / generic book-keeping."""
    from gsdefense.training import fast_dp

    x, y = _on(device, "mlp", 96)
    opt = SGDConfig(lr=0.2, momentum=momentum, batch_size=16, epochs=2)
    runs = []
    for chain in (True, False):
        monkeypatch.setattr(fast_dp, "CHAIN", chain)
        runs.append(train(_model("mlp").to(device), x, y, optimizer_cfg=opt, dp=dp, seed=2, noise_seed=5))
    torch.testing.assert_close(_flat(runs[0].model), _flat(runs[1].model), rtol=1e-5, atol=1e-6)
    assert runs[0].history[-1]["train_loss"] == pytest.approx(runs[1].history[-1]["train_loss"], rel=1e-5)
