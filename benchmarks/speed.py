"""DP-SGD speed: gsdefense's engines vs vanilla training and vs a plain Opacus loop.

    python benchmarks/speed.py [--repeats 5] [--threads 1] [--models lr mlp cnn resnet18] [--memory]

(a) DP epoch ÷ vanilla epoch, per ``dp.grad_sample_mode`` (bk, vmap, hooks), through
    ``gsdefense.training.loop.train`` (same model, data, batch size and number of steps);
(b) a plain Opacus loop (``make_private`` in its default hooks mode, iterating its
    Poisson ``DataLoader`` over a ``TensorDataset``) ÷ the gsdefense DP epoch (``auto``);
(d) with ``--memory``: the peak resident memory one epoch of each arm adds, in a fresh
    subprocess per arm: the RSS high-water mark (Linux ``VmHWM``, reset through
    ``/proc/self/clear_refs`` after data loading and warm-up; else ``ru_maxrss``) minus the RSS
    before the epoch. ``tracemalloc`` does not see torch's CPU allocations.
(c), fused grids, is in ``benchmarks/fused_grid.py``.

lr, mlp and cnn train on the embedded digits data (1347 × 1×8×8); resnet18 on a random
CIFAR-shaped set (``--resnet-n`` × 3×32×32). Every arm runs in this one process,
interleaved, ``--repeats`` times, after ``gc.collect()``; medians are reported, and ratios are
what to compare across machines. Default 1 thread: sweeps run one job per core. gsdefense
caches the per-step RDP curve of each (q, σ) per process, so the median excludes that one-off
~0.05-0.1 s (Opacus' ``get_epsilon`` pays it after every epoch of the opacus_* arms).
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gsdefense.data import load_dataset  # noqa: E402
from gsdefense.models import build_model  # noqa: E402
from gsdefense.training.dp import DPSGDConfig  # noqa: E402
from gsdefense.training.loop import train  # noqa: E402
from gsdefense.training.optim import SGDConfig  # noqa: E402

ARMS = ("vanilla", "bk", "bk_fixed", "vmap", "hooks", "opacus_loop", "opacus_ghost")  # bk_fixed: dp.fixed_shape=true


def _data(name: str, *, resnet_n: int) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]:
    if name == "resnet18":
        gen = torch.Generator().manual_seed(0)
        return (
            torch.rand(resnet_n, 3, 32, 32, generator=gen),
            torch.randint(0, 10, (resnet_n,), generator=gen),
            (3, 32, 32),
        )
    data = load_dataset(OmegaConf.create({"name": "digits"}), seed=0)
    return data.x_train, data.y_train, data.input_shape


def _model(name: str, shape: tuple[int, ...]) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(OmegaConf.create({"name": name}), input_shape=shape, num_classes=10,
                       mean=torch.zeros(shape[0]), std=torch.ones(shape[0]))  # fmt: skip


def opacus_loop(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    batch_size: int,
    epochs: int,
    mode: str = "hooks",
    device: torch.device | None = None,
    epsilon: bool = True,
) -> None:
    """The textbook Opacus loop: make_private (``mode``) + its Poisson DataLoader; ε after every epoch.

    ``mode="ghost"`` is Opacus' fast gradient (ghost) clipping, which wraps the criterion. With ``device``,
    ``x``/``y`` stay where they are (the CPU, as a textbook loop keeps its dataset) and each batch is moved
    to ``device``; ``epsilon=False`` skips the per-epoch ε (~0.05-0.1 s of CPU accounting per call).
    """
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    engine = PrivacyEngine()
    loader = DataLoader(TensorDataset(x, y), batch_size=batch_size)
    kwargs = dict(module=model, optimizer=opt, data_loader=loader, noise_multiplier=1.0, max_grad_norm=1.0,
                  poisson_sampling=True, grad_sample_mode=mode)  # fmt: skip
    if mode == "ghost":
        module, opt, criterion, loader = engine.make_private(criterion=torch.nn.CrossEntropyLoss(), **kwargs)
    else:
        (module, opt, loader), criterion = engine.make_private(**kwargs), F.cross_entropy
    for _ in range(epochs):
        for xb, yb in loader:
            if device is not None:
                xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            opt.zero_grad(set_to_none=True)
            criterion(module(xb), yb).backward()
            opt.step()
        if epsilon:
            engine.get_epsilon(1e-5)


def run_arm(arm: str, name: str, x: torch.Tensor, y: torch.Tensor, shape, *, batch_size: int, epochs: int = 1) -> float:
    """Seconds per epoch of ``arm``, over ``epochs`` epochs."""
    model = _model(name, shape)
    gc.collect()  # the previous arm's garbage (Opacus' hooks and closures) must not be collected on this arm's clock
    start = time.perf_counter()
    if arm.startswith("opacus_"):
        mode = "hooks" if arm == "opacus_loop" else "ghost"
        opacus_loop(model, x, y, batch_size=batch_size, epochs=epochs, mode=mode)
    else:
        mode, fixed = ("bk", True) if arm == "bk_fixed" else (arm, None)
        dp = None if arm == "vanilla" else DPSGDConfig(noise=1.0, clip=1.0, grad_sample_mode=mode, fixed_shape=fixed)
        train(model, x, y, optimizer_cfg=SGDConfig(epochs=epochs, batch_size=batch_size), dp=dp, seed=0)
    return (time.perf_counter() - start) / epochs


def _memory(arm: str, name: str, args) -> float:
    cmd = [sys.executable, __file__, "--worker", arm, name, "--threads", str(args.threads),
           "--resnet-n", str(args.resnet_n), "--batch-size", str(args.batch_size),
           "--resnet-batch-size", str(args.resnet_batch_size)]  # fmt: skip
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)["mib"]


def rss_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _worker(arm: str, name: str, args) -> None:
    x, y, shape = _data(name, resnet_n=args.resnet_n)
    bs = args.resnet_batch_size if name == "resnet18" else args.batch_size
    run_arm("vanilla", name, x[:bs], y[:bs], shape, batch_size=bs)  # warm imports and allocator
    gc.collect()
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark to the current RSS
        before = rss_kib("VmRSS")
    except OSError:
        before = None
    if before is None:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    run_arm(arm, name, x, y, shape, batch_size=bs)
    peak = rss_kib("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"mib": (peak - before) / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per timed run (mlp, cnn; resnet18 runs 1)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--models", nargs="+", default=["lr", "mlp", "cnn", "resnet18"])
    parser.add_argument("--arms", nargs="+", default=list(ARMS))
    parser.add_argument("--resnet-n", type=int, default=64)
    parser.add_argument("--resnet-batch-size", type=int, default=16)
    parser.add_argument("--memory", action="store_true")
    parser.add_argument("--worker", nargs=2, metavar=("ARM", "MODEL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.worker:
        return _worker(*args.worker, args)
    print(f"torch={torch.__version__} threads={torch.get_num_threads()} repeats={args.repeats} epochs={args.epochs} "
          f"batch={args.batch_size} (resnet18: n={args.resnet_n}, batch={args.resnet_batch_size})")  # fmt: skip
    sets = {name: _data(name, resnet_n=args.resnet_n) for name in args.models}
    times: dict[tuple[str, str], list[float]] = {}
    for name, (x, y, shape) in sets.items():  # warm-up: first calls pay for lazy init
        bs = args.resnet_batch_size if name == "resnet18" else args.batch_size
        for arm in args.arms:
            run_arm(arm, name, x[: 2 * bs], y[: 2 * bs], shape, batch_size=bs)
    for _ in range(args.repeats):
        for name, (x, y, shape) in sets.items():
            bs = args.resnet_batch_size if name == "resnet18" else args.batch_size
            for arm in args.arms:
                epochs = 1 if name == "resnet18" else args.epochs
                times.setdefault((name, arm), []).append(run_arm(arm, name, x, y, shape, batch_size=bs, epochs=epochs))
    med = {k: statistics.median(v) for k, v in times.items()}
    mem = {(n, a): _memory(a, n, args) for n in args.models for a in args.arms} if args.memory else {}
    print(f"{'model':<9} {'arm':<12} {'s/epoch':>9} {'÷ vanilla':>10} {'opacus loop ÷ this':>19} {'peak +MiB':>10}")
    for name in args.models:
        for arm in args.arms:
            t = med[(name, arm)]
            vs_vanilla = f"{t / med[(name, 'vanilla')]:.2f}" if (name, "vanilla") in med else "-"
            vs_opacus = f"{med[(name, 'opacus_loop')] / t:.2f}" if (name, "opacus_loop") in med else "-"
            peak = f"{mem[(name, arm)]:.0f}" if mem else "-"
            print(f"{name:<9} {arm:<12} {t:>9.3f} {vs_vanilla:>10} {vs_opacus:>19} {peak:>10}")


if __name__ == "__main__":
    main()
