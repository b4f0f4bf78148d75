"""(c) A fused clip × noise grid vs the same runs one after another.

    python benchmarks/fused_grid.py [--models mlp cnn] [--clips 0.1 0.5 1 2 4] [--noises 0 0.5 1 2 3 4 6 8]
                                    [--epochs 3] [--threads 1] [--runs] [--memory]

Two levels, both in this one process, on the embedded digits data (1347 × 1×8×8, batch 64),
each grid point a DP-SGD configuration (default 5 clips × 8 noises = 40):

- ``train``: the training alone, ``training.fused.train_fused`` over the whole grid vs
  ``training.loop.train`` once per configuration (same seed, same noise seeds);
- with ``--runs``: whole jobs, ``fuse.run_group`` vs ``run.run`` per configuration: poisoning,
  per-epoch evaluation and telemetry, the clean references (fused too, each arm with a cache of
  its own), and writing the outputs. Hydra's own per-job overhead (~0.5-1 s) is not counted.

Before each arm the RDP curve cache is cleared, so each pays the one-off RDP cost per σ once,
as one sweep process would. ``--memory``: peak RSS each arm adds, in a fresh subprocess per
arm (see ``speed.py``). With CUDA, ``--device cuda`` times the GPU and reports peak GPU memory.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from speed import _data, _model, rss_kib  # noqa: E402

from gsdefense.training.accounting import _rdp_one_step  # noqa: E402
from gsdefense.training.dp import DPSGDConfig  # noqa: E402
from gsdefense.training.fused import FusedMember, train_fused  # noqa: E402
from gsdefense.training.loop import train  # noqa: E402
from gsdefense.training.optim import SGDConfig  # noqa: E402

warnings.filterwarnings("ignore", message="Optimal order")  # Opacus' RDP note at σ = 0 or huge σ


def _grid(args) -> list[DPSGDConfig]:
    return [DPSGDConfig(clip=c, noise=s, grad_sample_mode="auto") for c in args.clips for s in args.noises]


def train_arm(arm: str, name: str, args) -> float:
    x, y, shape = _data(name, resnet_n=args.resnet_n)
    x, y = x.to(args.device), y.to(args.device)
    opt = SGDConfig(epochs=args.epochs, batch_size=args.batch_size)
    _rdp_one_step.cache_clear()
    _sync(args)
    start = time.perf_counter()
    if arm == "fused":
        members = [FusedMember(model=_model(name, shape).to(args.device), optimizer=opt, dp=dp, noise_seed=i)
                   for i, dp in enumerate(_grid(args))]  # fmt: skip
        train_fused(members, x, y, seed=0)
    else:
        for i, dp in enumerate(_grid(args)):
            train(_model(name, shape).to(args.device), x, y, optimizer_cfg=opt, dp=dp, seed=0, noise_seed=i)
    _sync(args)
    return time.perf_counter() - start


def runs_arm(arm: str, name: str, args) -> float:
    from hydra import compose, initialize_config_dir

    from gsdefense.fuse import run_group
    from gsdefense.run import run

    with (
        tempfile.TemporaryDirectory() as tmp,
        initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[1] / "conf"), version_base="1.3"),
    ):
        cfgs = [compose("config", overrides=[f"model={name}", f"optimizer.epochs={args.epochs}", f"dp.clip={dp.clip}",
                                             f"dp.noise={dp.noise}", f"device={args.device}", f"cache_dir={tmp}/cache",
                                             f"threads={args.threads}"]) for dp in _grid(args)]  # fmt: skip
        dirs = [Path(tmp) / str(i) for i in range(len(cfgs))]
        _rdp_one_step.cache_clear()
        start = time.perf_counter()
        fused = arm == "fused"
        metrics = run_group(cfgs, dirs) if fused else [run(cfg, output_dir=d) for cfg, d in zip(cfgs, dirs)]
        assert all(m["status"] == "ok" for m in metrics), [m for m in metrics if m["status"] != "ok"][:1]
        return time.perf_counter() - start


def _sync(args) -> None:
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()


def _memory(level: str, arm: str, name: str, args) -> float:
    grid = ["--clips", *map(str, args.clips), "--noises", *map(str, args.noises)]
    cmd = [sys.executable, __file__, "--worker", level, arm, name, "--epochs", "1", "--device", args.device,
           "--threads", str(args.threads), *grid]  # fmt: skip
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)["mib"]


def _worker(level: str, arm: str, name: str, args) -> None:
    fn = train_arm if level == "train" else runs_arm
    warm = argparse.Namespace(**{**vars(args), "clips": args.clips[:1], "noises": args.noises[:1]})
    fn(arm, name, warm)  # lazy imports and first-call allocations are not the arm's memory
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        fn(arm, name, args)
        print(json.dumps({"mib": torch.cuda.max_memory_allocated() / 2**20}))
        return
    _data(name, resnet_n=args.resnet_n)
    Path("/proc/self/clear_refs").write_text("5")
    before = rss_kib("VmRSS")
    fn(arm, name, args)
    print(json.dumps({"mib": (rss_kib("VmHWM") - before) / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mlp", "cnn"])
    parser.add_argument("--clips", nargs="+", type=float, default=[0.1, 0.5, 1.0, 2.0, 4.0])
    parser.add_argument("--noises", nargs="+", type=float, default=[0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--resnet-n", type=int, default=64)
    parser.add_argument("--runs", action="store_true", help="also time whole jobs (run_group vs run)")
    parser.add_argument("--memory", action="store_true")
    parser.add_argument("--worker", nargs=3, metavar=("LEVEL", "ARM", "MODEL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.worker:
        return _worker(*args.worker, args)
    n = len(args.clips) * len(args.noises)
    print(f"torch={torch.__version__} device={args.device} threads={torch.get_num_threads()} grid={n} configs "
          f"epochs={args.epochs} batch={args.batch_size}")  # fmt: skip
    levels = ["train", "runs"] if args.runs else ["train"]
    header = f"{'model':<6} {'level':<6} {'sequential s':>13} {'fused s':>9} {'speed-up':>9}"
    print(f"{header} {'seq +MiB':>9} {'fused +MiB':>11}")
    for name in args.models:
        train_arm("fused", name, argparse.Namespace(**{**vars(args), "epochs": 1, "clips": args.clips[:1]}))  # warm-up
        for level in levels:
            fn = train_arm if level == "train" else runs_arm
            seq, fused = fn("sequential", name, args), fn("fused", name, args)
            mem = (
                [f"{_memory(level, a, name, args):.0f}" for a in ("sequential", "fused")] if args.memory else ["-", "-"]
            )
            print(f"{name:<6} {level:<6} {seq:>13.2f} {fused:>9.2f} {seq / fused:>9.2f} {mem[0]:>9} {mem[1]:>11}")


if __name__ == "__main__":
    main()
