"""FashionMNIST epochs against their arithmetic floor (issue 25): Hong's MLP and the FashionMNIST-3/4 LR.

    python benchmarks/fmnist_floor.py [--repeats 5] [--epochs 2] [--workloads mlp lr] [--generic] [--json F]

Workloads (``loop.train``, one thread, data as tensors on the CPU):
* mlp: FashionMNIST (60,000 × 1×28×28), ``model=mlp`` (784-256-10, Hong et al. Table 4; ``--depth 2``: the
  original code's two hidden layers), batch 100, SGD lr 0.08 without momentum (the Fig. 5 preset), DP C 1, σ 1.
* lr: FashionMNIST-3/4 (dress vs coat, 10,800 training images after the 10 % hold-out), ``model=lr``,
  batch 300, Adam lr 0.01 (the Fig. 4a preset), DP C 1, σ 1.

Data: the IDX files at ``--data-dir`` (default /usr/share/datasets/fashion-mnist, gzipped) when they are
there, else random pixels and labels of the same shape (the table says which).

The floor of an epoch is its arithmetic at this CPU's measured rate: every GEMM of a step at its real shapes
(the expected batch: forward, the output gradients, the weight gradients; DP's clipped sums are the same
GEMMs with c-scaled rows) times the steps, plus, for DP, drawing each step's Gaussian noise (one value per
parameter) with torch's generator. ``read`` is copying the epoch's rows once (the memory floor of the LR,
whose GEMMs are tiny). Every arm runs in this process, interleaved, ``--repeats`` times; medians of
process CPU time per epoch are reported (on a machine shared with other jobs CPU time is what one core
spends; wall time is printed too). ``--generic`` adds the routes the closed form replaced: the generic
book-keeping engine (DP) and autograd (vanilla), on the same batches.
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gsdefense.data import hold_out, make_bundle, select_classes  # noqa: E402
from gsdefense.models import build_model  # noqa: E402
from gsdefense.training import fast_dp  # noqa: E402
from gsdefense.training.batches import poisson_batches  # noqa: E402
from gsdefense.training.dp import DPSGDConfig  # noqa: E402
from gsdefense.training.loop import train  # noqa: E402
from gsdefense.training.optim import AdamConfig, SGDConfig  # noqa: E402

JAX_LR_DP_MS = 15.5  # issue 25: an independent JAX DP-SGD (jit, ghost norms, padded Poisson batches), one core


def read_idx(path: Path) -> np.ndarray:
    """A gzipped IDX file (the MNIST format: magic, dims as big-endian int32, then uint8 data)."""
    with gzip.open(path) as fh:
        raw = fh.read()
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(raw[3])]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * len(dims)).reshape(dims)


def fashion_mnist(data_dir: Path) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The 60,000 training images in [0, 1] and labels, from the IDX files or (missing) random ones."""
    files = [data_dir / f"train-{kind}-idx{d}-ubyte.gz" for kind, d in (("images", 3), ("labels", 1))]
    if all(f.is_file() for f in files):
        x = torch.from_numpy(read_idx(files[0]).copy()).unsqueeze(1).float().div_(255.0)
        return x, torch.from_numpy(read_idx(files[1]).astype(np.int64)), f"FashionMNIST IDX files in {data_dir}"
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(60000, 1, 28, 28, generator=gen), torch.randperm(60000, generator=gen) % 10  # 6,000 a class
    return x, y, f"random data of FashionMNIST's shape ({data_dir} has no IDX files)"


def workloads(x: torch.Tensor, y: torch.Tensor, depth: int) -> dict[str, dict]:
    full = make_bundle(name="fashion_mnist", x_train=x, y_train=y, x_test=x[:10], y_test=y[:10],
                       class_names=[str(i) for i in range(10)], input_norm="none")  # fmt: skip
    three_four = hold_out(select_classes(full, classes=[3, 4]), fraction=0.1, split_seed=0)
    return {
        "mlp": dict(x=x, y=y, model={"name": "mlp", "hidden": 256, "depth": depth}, classes=10,
                    opt=SGDConfig(lr=0.08, momentum=0.0, batch_size=100)),
        "lr": dict(x=three_four.x_train, y=three_four.y_train, model={"name": "lr"}, classes=2,
                   opt=AdamConfig(lr=0.01, batch_size=300)),
    }  # fmt: skip


def model_of(spec: dict) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(OmegaConf.create(spec["model"]), input_shape=tuple(spec["x"].shape[1:]),
                       num_classes=spec["classes"], mean=None, std=None)  # fmt: skip


def clock(fn, per: int = 1) -> tuple[float, float]:
    """(process CPU seconds, wall seconds) of ``fn()``, divided by ``per``."""
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    return (time.process_time() - cpu) / per, (time.perf_counter() - wall) / per


def epoch_arm(spec: dict, *, dp: bool, epochs: int, generic: bool = False):
    """One ``train`` call of ``epochs`` epochs; returns (CPU s, wall s) per epoch in the steady state: the median
    gap between consecutive epoch ends (stamped by the per-epoch ``evaluate`` callback), so the run's one-off
    costs (model, optimizer, accountant, the cached input norms) are left out, as they are of the JAX figure."""

    def run() -> tuple[float, float]:
        stamps: list[tuple[float, float]] = []

        def stamp(model) -> dict:
            stamps.append((time.process_time(), time.perf_counter()))
            return {}

        fast_dp.CHAIN = not generic
        try:
            cfg = type(spec["opt"])(**{**spec["opt"].__dict__, "epochs": epochs + 1})
            train(model_of(spec), spec["x"], spec["y"], optimizer_cfg=cfg, seed=0, evaluate=stamp,
                  dp=DPSGDConfig(clip=1.0, noise=1.0) if dp else None)  # fmt: skip
        finally:
            fast_dp.CHAIN = True
        gaps = [(b[0] - a[0], b[1] - a[1]) for a, b in zip(stamps, stamps[1:])]
        return statistics.median(g[0] for g in gaps), statistics.median(g[1] for g in gaps)

    return run


def gemm_shapes(spec: dict) -> list[tuple[int, int, int]]:
    """(m, k, n) of every GEMM of one step at the expected batch B: forward a·Wᵀ, backward δ·W, weights δᵀ·a."""
    model = model_of(spec)
    batch = spec["opt"].batch_size
    dims = [w.shape for w in (m.weight for m in model.modules() if isinstance(m, torch.nn.Linear))]
    shapes = []
    for i, (out, inp) in enumerate(dims):
        shapes += [(batch, inp, out), (out, batch, inp)]  # forward; weight gradient (= the clipped sum's GEMM)
        if i:
            shapes.append((batch, out, inp))  # the output gradient of the layer below
    return shapes


def floor_arms(spec: dict, *, epochs: int) -> dict:
    n, batch = len(spec["y"]), spec["opt"].batch_size
    steps = -(-n // batch)
    shapes = gemm_shapes(spec)
    mats = [(torch.rand(m, k), torch.rand(k, nn)) for m, k, nn in shapes]
    params = sum(p.numel() for p in model_of(spec).parameters())
    noise, gen = torch.empty(params), torch.Generator().manual_seed(0)
    rows = torch.randperm(n, generator=gen).split(batch)  # every row once, as an epoch reads them
    flat = spec["x"].reshape(n, -1)

    def gemms() -> None:
        for _ in range(steps):
            for a, b in mats:
                torch.mm(a, b)

    def draw() -> None:
        for _ in range(steps):
            noise.normal_(0.0, 1.0, generator=gen)

    def read() -> None:
        for r in rows:
            flat.index_select(0, r)

    return {
        name: (lambda fn=fn: clock(fn)) for name, fn in (("floor_gemm", gemms), ("floor_noise", draw), ("read", read))
    }


def components(spec: dict) -> dict[str, float]:
    """µs per step of the parts of a DP step measured alone: sampling, gather, noise, optimizer step."""
    n, batch = len(spec["y"]), spec["opt"].batch_size
    gen = torch.Generator().manual_seed(0)
    x = spec["x"].reshape(n, -1)
    model = model_of(spec)
    opt = torch.optim.Adam(model.parameters(), fused=True) if isinstance(spec["opt"], AdamConfig) else \
        torch.optim.SGD(model.parameters(), lr=0.01, fused=True)  # fmt: skip
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    batches = poisson_batches(n, batch / n, generator=gen, device=torch.device("cpu"))
    out = {}
    for name, fn, count in (
        ("sampling", lambda: poisson_batches(n, batch / n, generator=gen, device=torch.device("cpu")), len(batches)),
        ("gather", lambda: [x.index_select(0, b).sum() for b in batches], len(batches)),  # each batch freed
        ("optimizer step", lambda: [opt.step() for _ in range(100)], 100),
    ):
        fn()
        out[name] = statistics.median(clock(fn)[0] for _ in range(5)) / count * 1e6
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per train() call (after a first one)")
    parser.add_argument("--workloads", nargs="+", default=["mlp", "lr"], choices=["mlp", "lr"])
    parser.add_argument("--depth", type=int, default=1, help="MLP hidden layers (1: Table 4; 2: the original code)")
    parser.add_argument("--data-dir", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    parser.add_argument("--generic", action="store_true", help="also time the generic bk engine and autograd")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    x, y, source = fashion_mnist(args.data_dir)
    specs = workloads(x, y, args.depth)
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else ["?"]
    print(f"data: {source}; torch {torch.__version__}, 1 thread; load average at start: {' '.join(load)}")
    results = {}
    for name in args.workloads:
        spec = specs[name]
        arms = {"vanilla": epoch_arm(spec, dp=False, epochs=args.epochs),
                "dp": epoch_arm(spec, dp=True, epochs=args.epochs), **floor_arms(spec, epochs=args.epochs)}  # fmt: skip
        if args.generic:
            arms["vanilla_autograd"] = epoch_arm(spec, dp=False, epochs=args.epochs, generic=True)
            arms["dp_generic_bk"] = epoch_arm(spec, dp=True, epochs=args.epochs, generic=True)
        times: dict[str, list[tuple[float, float]]] = {arm: [] for arm in arms}
        for fn in arms.values():
            fn()  # warm-up: allocator, RDP cache, first-call dispatch
        for _ in range(args.repeats):
            for arm, fn in arms.items():
                times[arm].append(fn())
        med = {arm: statistics.median(t[0] for t in v) for arm, v in times.items()}
        wall = {arm: statistics.median(t[1] for t in v) for arm, v in times.items()}
        results[name] = {"cpu_s": med, "wall_s": wall, "components_us": components(spec), "n": len(spec["y"]),
                         "steps": -(-len(spec["y"]) // spec["opt"].batch_size)}  # fmt: skip
    print_table(results, args)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))


def print_table(results: dict, args) -> None:
    cmd = "python benchmarks/fmnist_floor.py " + " ".join(sys.argv[1:])
    print(f"\n`{cmd.strip()}` (CPU ms per epoch, median of {args.repeats}; floor = GEMMs [+ noise for DP])\n")
    print("| workload | floor vanilla | floor DP | read rows | vanilla | DP | vanilla ÷ floor | DP ÷ floor | "
          "DP ÷ vanilla |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        t = {k: v * 1e3 for k, v in r["cpu_s"].items()}
        fv, fd = t["floor_gemm"], t["floor_gemm"] + t["floor_noise"]
        print(f"| {name} | {fv:.1f} | {fd:.1f} | {t['read']:.1f} | {t['vanilla']:.1f} | {t['dp']:.1f} | "
              f"{t['vanilla'] / fv:.2f} | {t['dp'] / fd:.2f} | {t['dp'] / t['vanilla']:.2f} |")  # fmt: skip
    for name, r in results.items():
        t = {k: v * 1e3 for k, v in r["cpu_s"].items()}
        per_step = {k: v / r["steps"] * 1e3 for k, v in t.items()}
        parts = ", ".join(f"{k} {v:.0f}" for k, v in r["components_us"].items())
        print(
            f"\n{name}: {r['steps']} steps/epoch; µs per step: vanilla {per_step['vanilla']:.0f}, DP "
            f"{per_step['dp']:.0f}, GEMMs {per_step['floor_gemm']:.0f}, noise {per_step['floor_noise']:.0f}; {parts}"
        )
        if "dp_generic_bk" in t:
            va, bk = t["vanilla_autograd"], t["dp_generic_bk"]
            print(
                f"  replaced routes: autograd vanilla {va:.1f} ms ({va / t['vanilla']:.2f}× the closed form), "
                f"generic bk DP {bk:.1f} ms ({bk / t['dp']:.2f}×)"
            )
        if name == "lr":
            print(f"  DP ÷ the issue's JAX figure ({JAX_LR_DP_MS} ms, elsewhere): {t['dp'] / JAX_LR_DP_MS:.2f}")
        print("  wall ms per epoch: " + ", ".join(f"{k} {v * 1e3:.1f}" for k, v in r["wall_s"].items()))


if __name__ == "__main__":
    main()
