"""Fused grids: M configurations trained at once compute what M separate runs compute."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch

from gsdefense.fuse import FUSABLE, group_jobs, run_group
from gsdefense.run import run
from gsdefense.training.dp import DPSGDConfig
from gsdefense.training.fused import FusedMember, train_fused
from gsdefense.training.loop import train
from gsdefense.training.optim import AdamConfig, SGDConfig
from gsdefense.training.per_sample import BookKeepingClippedSum
from gsdefense.training.stacked import load_member, stack_models
from tests.conftest import TINY, compose_cfg
from tests.test_fast_dp import _data, _model

# Float32 batched kernels sum in another order than the separate run's: parameters agree to ~1e-6
# relative after several epochs (measured ≤ 3e-6); accuracies to within one test sample at most.
PARAM_RTOL = 1e-4


def _flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize("name", ["lr", "mlp", "cnn", "resnet18"])
def test_stacked_clipped_sums_equal_each_members_own(name: str):
    models = [_model(name, seed=s) for s in range(3)]
    x, y = _data(name, 6)
    clips = torch.tensor([[0.1], [0.5], [2.0]])
    sums, losses, norms = BookKeepingClippedSum(stack_models(models)).members(x, y, clip=clips, scale=0.5)
    for k, model in enumerate(models):
        own, loss, norm = BookKeepingClippedSum(model)(x, y, clip=float(clips[k]), scale=0.5)
        for got, want in zip(sums, own):
            torch.testing.assert_close(got[k], want, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(losses[k], loss)
        torch.testing.assert_close(norms[k], norm, atol=1e-4, rtol=1e-4)


def test_load_member_round_trips_parameters():
    models = [_model("cnn", seed=s) for s in range(2)]
    stacked = stack_models(models)
    back = load_member(stacked, 1, copy.deepcopy(models[0]))
    assert torch.equal(_flat(back), _flat(models[1]))


@pytest.mark.parametrize(
    "opt", [SGDConfig(lr=0.05, batch_size=32, epochs=3), AdamConfig(lr=0.01, batch_size=32, epochs=3)]
)
@pytest.mark.parametrize("private", [True, False])
def test_train_fused_equals_separate_training(opt, private: bool):
    """Same seed and noise seed → same batches and noise: a member is its separate run, noise included."""
    x, y = _data("mlp", 200)
    if private:
        grid = [(c, s, lr) for c in (0.5, 2.0) for s in (0.0, 0.7) for lr in (opt.lr, opt.lr / 2)]
    else:
        grid = [(None, None, lr) for lr in (opt.lr, opt.lr / 3)]
    members, separate = [], []
    for i, (clip, noise, lr) in enumerate(grid):
        dp = DPSGDConfig(clip=clip, noise=noise, grad_sample_mode="auto") if private else None
        o = dataclasses.replace(opt, lr=lr)
        members.append(FusedMember(model=_model("mlp"), optimizer=o, dp=dp, noise_seed=100 + i))
        separate.append(train(_model("mlp"), x, y, optimizer_cfg=o, dp=dp, seed=5, noise_seed=100 + i))
    fused = train_fused(members, x, y, seed=5)
    for a, b in zip(fused, separate):
        assert (_flat(b.model) - _flat(_model("mlp"))).norm() > 1e-3
        torch.testing.assert_close(_flat(a.model), _flat(b.model), rtol=PARAM_RTOL, atol=1e-6)
        assert a.epsilon == b.epsilon
        assert [r["epoch"] for r in a.history] == [r["epoch"] for r in b.history]
        assert a.history[-1].keys() == b.history[-1].keys()


def test_members_noise_is_independent():
    """Distinct noise seeds → independent noise: noise-dominated updates are uncorrelated, of std σC·lr/(qn)·√steps."""
    x, y = _data("mlp", 64)
    opt = SGDConfig(lr=1.0, momentum=0.0, batch_size=16, epochs=1)  # 4 steps, expected batch 16
    start = _flat(_model("mlp"))
    dp = DPSGDConfig(clip=1e-4, noise=1e4, grad_sample_mode="bk")  # noise std 1 ≫ clipped signal ≤ 4·1e-4
    members = [FusedMember(model=_model("mlp"), optimizer=opt, dp=dp, noise_seed=s) for s in (1, 2, 3)]
    deltas = [_flat(r.model) - start for r in train_fused(members, x, y, seed=0)]
    for i in range(3):
        assert deltas[i].std().item() == pytest.approx(1.0 / 16 * 4**0.5, rel=0.02)
        for j in range(i + 1, 3):
            assert abs(torch.corrcoef(torch.stack([deltas[i], deltas[j]]))[0, 1]) < 0.03


def test_group_jobs_groups_by_everything_but_the_fusable_keys():
    cfgs = [compose_cfg(*TINY, f"dp.clip={c}", f"dp.noise={s}") for c in (0.5, 1) for s in (0.5, 1)]
    cfgs.append(compose_cfg(*TINY, "dp.clip=1", "seed=3"))  # another seed: alone
    cfgs.append(compose_cfg(*TINY, "dp=adaptive"))  # never fused
    cfgs.append(compose_cfg(*TINY, "dp.clip=2", "optimizer.lr=0.1"))
    groups = group_jobs(cfgs, vary=FUSABLE, max_group_size=3)
    assert [g for g, _ in groups] == [[0, 1, 2], [3, 6], [4], [5]]
    reasons = dict((g[0], r) for g, r in groups)
    assert reasons[0] is None and "seed" not in (reasons[4] or "") and "differs from it only in" in reasons[4]
    assert "dp=adaptive" in reasons[5]


ONE_SAMPLE = 1 / 450 + 1e-6  # one digits test sample


def test_fused_group_writes_what_separate_runs_write(tmp_path):
    """The issue's equivalence test: a fused 2×2 grid at noise 0 gives the 4 separate runs' metrics."""
    grid = [(c, lr) for c in (0.5, 2.0) for lr in (0.05, 0.1)]
    cfgs = [compose_cfg(*TINY, "optimizer.epochs=3", "dp.noise=0", f"dp.clip={c}", f"optimizer.lr={lr}")
            for c, lr in grid]  # fmt: skip
    fused = run_group(cfgs, [tmp_path / "fused" / str(i) for i in range(4)])
    # a cache of their own: the separate runs train their references themselves
    apart = [compose_cfg(*TINY, "optimizer.epochs=3", "dp.noise=0", f"dp.clip={c}", f"optimizer.lr={lr}",
                         f"cache_dir={tmp_path / 'cache2'}") for c, lr in grid]  # fmt: skip
    separate = [run(cfg, output_dir=tmp_path / "separate" / str(i)) for i, cfg in enumerate(apart)]
    for i, (a, b) in enumerate(zip(fused, separate)):
        assert a["status"] == b["status"] == "ok" and a["fused_group_size"] == 4
        assert a["run_id"] == b["run_id"]
        # Batched kernels sum in another order: a test point on a decision boundary may flip, so accuracies
        # agree to one test sample (1/450 on digits) and RAD to two; ε is computed from (σ, q, steps) alone.
        for key in ("clean_acc", "asr", "target_class_acc", "acc_ref", "acc_ref_dp_matched"):
            assert a[key] == pytest.approx(b[key], abs=ONE_SAMPLE), key
        assert a["rad"] == pytest.approx(b["rad"], abs=3 * ONE_SAMPLE)
        assert a["epsilon"] == b["epsilon"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        for name in ("metrics.json", "history.csv", "model.pt", "mextracts_epoch.csv"):
            assert (tmp_path / "fused" / str(i) / name).exists(), name
        on_disk = json.loads((tmp_path / "fused" / str(i) / "metrics.json").read_text())
        assert set(on_disk) - {"fused_group_size"} == set(b)
        assert not (tmp_path / "fused" / str(i) / "checkpoint.pt").exists()
    assert len(list((tmp_path / "cache2" / "reference").glob("*.json"))) == 6  # 2 vanilla (2 lrs) + 4 DP


def test_fused_group_resumes_and_skips_complete_members(tmp_path):
    cfgs = [compose_cfg(*TINY, f"dp.clip={c}") for c in (0.5, 2.0)]
    dirs = [tmp_path / str(i) for i in range(2)]
    first = run_group(cfgs, dirs)
    again = run_group(cfgs, dirs)
    assert again == first  # resume=true: complete members are read back, not retrained


def test_fused_group_records_a_bad_member_and_trains_the_rest(tmp_path):
    cfgs = [compose_cfg(*TINY, f"dp.clip={c}") for c in (0.5, -1.0, 2.0)]
    metrics = run_group(cfgs, [tmp_path / str(i) for i in range(3)])
    assert [m["status"] for m in metrics] == ["ok", "failed", "ok"]
    assert "dp.clip" in metrics[1]["error"]


def test_plugin_and_package_agree_on_the_fusable_keys():
    from hydra_plugins.gsdefense_fused.fused_launcher import FUSABLE as PLUGIN_FUSABLE

    assert tuple(PLUGIN_FUSABLE) == FUSABLE


def test_interrupted_group_resumes_from_its_members_checkpoints(tmp_path, monkeypatch):
    """A group killed after epoch 1 continues from the members' checkpoints and ends as an uninterrupted one."""
    import gsdefense.training.fused as fused_mod
    from gsdefense.training.checkpoint import Checkpointer

    x, y = _data("mlp", 128)
    opt = SGDConfig(lr=0.05, batch_size=32, epochs=3)

    def members(tag: str):
        def one(i: int, clip: float) -> FusedMember:
            checkpointer = Checkpointer(tmp_path / tag / f"{i}.pt", every_n_epochs=1, tag=tag)
            dp = DPSGDConfig(clip=clip, noise=0.5, grad_sample_mode="bk")
            return FusedMember(model=_model("mlp"), optimizer=opt, dp=dp, noise_seed=i, checkpointer=checkpointer)

        return [one(i, c) for i, c in enumerate((0.5, 2.0))]

    whole = train_fused(members("whole"), x, y, seed=0)
    real_end = fused_mod._end_epoch

    def killed_in_epoch_2(st, k, stacked, *, epoch, **kw):
        if epoch == 2:
            raise KeyboardInterrupt("preempted")
        return real_end(st, k, stacked, epoch=epoch, **kw)

    monkeypatch.setattr(fused_mod, "_end_epoch", killed_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train_fused(members("cut"), x, y, seed=0)
    monkeypatch.setattr(fused_mod, "_end_epoch", real_end)
    resumed = train_fused(members("cut"), x, y, seed=0)
    for a, b in zip(resumed, whole):
        assert torch.equal(_flat(a.model), _flat(b.model))
        assert a.epsilon == b.epsilon and len(a.history) == 3
        assert [r["train_loss"] for r in a.history] == [r["train_loss"] for r in b.history]


@pytest.mark.slow
def test_fused_launcher_through_the_cli(tmp_path, cli):
    """hydra/launcher=fused: one group of 4, a singleton that cannot fuse, each job with its own dir."""
    sweep = tmp_path / "sweep"
    proc = cli("-m", "hydra/launcher=fused", *TINY, "dp=dpsgd,adaptive", "dp.clip=0.5,2", "dp.noise=0,1",
               f"hydra.sweep.dir={sweep}", env={"GSDEFENSE_CACHE_DIR": str(tmp_path / "cache")})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "8 ok" in proc.stderr
    assert "runs alone: dp=adaptive is not fused" in proc.stdout + proc.stderr
    sizes = []
    for job in range(8):
        d = sweep / str(job)
        metrics = json.loads((d / "metrics.json").read_text())
        assert metrics["status"] == "ok"
        for name in (".hydra/config.yaml", ".hydra/overrides.yaml", "history.csv", "launch.log"):
            assert (d / name).exists(), (job, name)
        sizes.append(metrics.get("fused_group_size"))
    assert sizes.count(4) == 4 and sizes.count(None) == 4
    fused_log = (sweep / "0" / "launch.log").read_text()
    assert "training 4 runs fused" in fused_log


@pytest.mark.slow
def test_fused_local_launcher_runs_each_group_in_a_submitit_process(tmp_path, cli):
    sweep = tmp_path / "sweep"
    proc = cli("-m", "hydra/launcher=fused_local", *TINY, "dp.clip=0.5,2", "seed=0,1", f"hydra.sweep.dir={sweep}",
               env={"GSDEFENSE_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "4 ok" in proc.stderr and "as 2 fused groups" in proc.stdout + proc.stderr
    assert len(list(sweep.glob(".submitit/*/*_result.pkl"))) == 2
    assert all(json.loads((sweep / str(j) / "metrics.json").read_text())["fused_group_size"] == 2 for j in range(4))


@pytest.mark.parametrize(
    "override, named", [("hydra.launcher.vary=[model.name]", "hydra.launcher.vary"),
                        ("hydra.launcher.max_group_size=0", "hydra.launcher.max_group_size")]
)  # fmt: skip
def test_bad_fused_launcher_settings_fail_before_any_job(tmp_path, cli, override: str, named: str):
    proc = cli("-m", "hydra/launcher=fused", override, f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert proc.returncode != 0
    assert named in proc.stderr and "Traceback" not in proc.stderr
    assert not list(tmp_path.glob("sweep/*/metrics.json"))


def test_a_diverging_member_stops_and_the_others_train_on():
    x, y = _data("mlp", 128)
    members = [FusedMember(model=_model("mlp"), optimizer=SGDConfig(lr=lr, batch_size=32, epochs=3),
                           dp=None, noise_seed=0) for lr in (0.05, 1e30)]  # fmt: skip
    ok, diverged = train_fused(members, x, y, seed=0)
    assert ok.status == "ok" and len(ok.history) == 3
    assert diverged.status == "diverged" and diverged.diverged_epoch == 1 and len(diverged.history) == 1
    assert torch.isfinite(_flat(ok.model)).all()
