"""The GPU check's benchmark table (issue 17 §1): DP overhead, the plain Opacus loop, fused grids, peak memory.

    python benchmarks/gpu_check.py [--device cuda] [--out DIR] [--repeats 3] [--models mlp cnn resnet18]
                                   [--dp-variant NAME:FIELD=VALUE,...] [--budget-s 210] [--quick]

One call on a GPU machine runs the CUDA tests and then this script: ``scripts/gpu-check.sh`` (its header has
the device tool's command: ``run(command="bash scripts/gpu-check.sh", carry=[".whl"], timeout_s=600)`` after
``scripts/gpu-check.sh --fetch-wheels`` here). ``--device cpu --quick`` is the CI smoke test.

Every figure is the median of ``--repeats`` timed runs after one untimed warm-up run of the same arm, with
``torch.cuda.synchronize()`` before and after each timed region; each run starts from a fresh model.

1. Per epoch at CIFAR-10 shape (random 3×32×32 inputs, 10 classes, ``--n`` samples; CIFAR-10's 50k is 5×
   the default), batch 128 and 256, for mlp, cnn and resnet18: ``vanilla`` (SGD), ``dp`` (gsdefense DP-SGD,
   ``dp.grad_sample_mode=auto``, i.e. bk; σ = 1, C = 1), each ``--dp-variant`` (``dp`` with DPSGDConfig fields
   replaced, e.g. ``fixed:fixed_shape=true``), and ``opacus`` (the plain Opacus loop of ``speed.py``:
   ``make_private`` with hooks and its Poisson DataLoader over CPU tensors, each batch moved to the device;
   without Opacus' per-epoch ε, ~0.05-0.1 s of CPU accounting that would swamp a GPU epoch). Columns: s/epoch,
   DP ÷ vanilla, Opacus loop ÷ gsdefense DP, and the peak memory each arm adds
   (``torch.cuda.max_memory_allocated`` minus what was allocated before; on CPU the RSS high-water mark).
2. The fused 40-config grid (5 clips × 8 noises, digits, batch 64, ``--grid-epochs``) against the same 40
   runs one after another, training only (``fused_grid.train_arm``), mlp and cnn, with peak memory.

``--budget-s`` bounds the whole script: measurements that would start after it are listed as skipped (exit 1),
so the table is written even when a slow GPU runs out of time. Writes ``gpu_check.json`` and ``gpu_check.md``
into ``--out`` (default ``$OUT``, else ``outputs/gpu-check``) and prints the markdown last.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fused_grid  # noqa: E402
from speed import _model, opacus_loop, rss_kib  # noqa: E402

from gsdefense.training.dp import DPSGDConfig  # noqa: E402
from gsdefense.training.loop import train  # noqa: E402
from gsdefense.training.optim import SGDConfig  # noqa: E402

CIFAR = (3, 32, 32)
GRID_CLIPS, GRID_NOISES = [0.1, 0.5, 1.0, 2.0, 4.0], [0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0]


def environment(device: torch.device) -> dict:
    """Versions and hardware: what a figure needs to be compared with another machine's."""
    facts = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
             "cpu_threads": torch.get_num_threads(), "cpus": os.cpu_count(), "device": str(device)}  # fmt: skip
    try:
        import opacus

        facts["opacus"] = opacus.__version__
    except ImportError:
        facts["opacus"] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        facts.update(gpu=props.name, capability=f"{props.major}.{props.minor}",
                     gpu_memory_gib=round(props.total_memory / 2**30, 1), multiprocessors=props.multi_processor_count,
                     cudnn=torch.backends.cudnn.version(), tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
                     tf32_cudnn=torch.backends.cudnn.allow_tf32)  # fmt: skip
        try:
            query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader", f"--id={device.index or 0}"]
            facts["driver"] = subprocess.run(query, capture_output=True, text=True, timeout=20).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            facts["driver"] = None
    else:
        facts["cpu"] = platform.processor() or platform.machine()
    return facts


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn, device: torch.device) -> tuple[float, float | None]:
    """Seconds of ``fn()`` (synchronised) and the peak memory in MiB it adds over what was allocated before.

    A ``fn`` that times itself returns its seconds (float), which are used instead of the wall time around it.
    """
    gc.collect()
    _sync(device)
    before = None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    else:
        try:
            Path("/proc/self/clear_refs").write_text("5")  # reset the RSS high-water mark (Linux)
            before = rss_kib("VmRSS")
        except OSError:
            pass
    start = time.perf_counter()
    own = fn()
    _sync(device)
    seconds = own if isinstance(own, float) else time.perf_counter() - start
    if device.type == "cuda":
        return seconds, (torch.cuda.max_memory_allocated(device) - before) / 2**20
    peak = rss_kib("VmHWM") if before is not None else None
    return seconds, max(peak - before, 0) / 1024 if peak is not None else None  # RSS can end below its start


def median_run(fn, device: torch.device, repeats: int) -> tuple[float, float | None]:
    """One untimed warm-up, then the median seconds and the largest peak memory of ``repeats`` runs."""
    fn()
    runs = [measure(fn, device) for _ in range(repeats)]
    peaks = [p for _, p in runs if p is not None]
    return statistics.median(s for s, _ in runs), max(peaks) if peaks else None


def epoch_arm(arm: str, name: str, data, *, batch_size: int, device: torch.device, dp_cfgs: dict):
    """A function that trains a fresh ``name`` for one epoch in ``arm``; ``data`` = (x, y, x on CPU, y on CPU)."""
    x, y, x_cpu, y_cpu = data

    def fn() -> None:
        model = _model(name, CIFAR).to(device)
        if arm == "opacus":
            opacus_loop(model, x_cpu, y_cpu, batch_size=batch_size, epochs=1, device=device, epsilon=False)
        else:
            opt = SGDConfig(epochs=1, batch_size=batch_size)
            train(model, x, y, optimizer_cfg=opt, dp=dp_cfgs.get(arm), seed=0)

    return fn


def dp_variants(specs: list[str]) -> dict[str, DPSGDConfig | None]:
    """``vanilla`` and ``dp``, plus each ``NAME:FIELD=VALUE,...`` as ``dp`` with those DPSGDConfig fields."""
    base = DPSGDConfig(clip=1.0, noise=1.0, grad_sample_mode="auto")
    cfgs: dict[str, DPSGDConfig | None] = {"vanilla": None, "dp": base}
    fields = {f.name: f.type for f in dataclasses.fields(DPSGDConfig)}
    for spec in specs:
        name, _, assignments = spec.partition(":")
        changes = {}
        for item in filter(None, assignments.split(",")):
            key, _, value = item.partition("=")
            if key not in fields:
                raise SystemExit(f"--dp-variant {spec}: DPSGDConfig has no field {key!r}; fields: {sorted(fields)}")
            changes[key] = json.loads(value.lower()) if value.lower() in ("true", "false") else _number(value)
        cfgs[name] = dataclasses.replace(base, **changes)
    return cfgs


def _number(value: str):
    try:
        return int(value)
    except ValueError:
        try:
            return float(value)
        except ValueError:
            return value


def epoch_table(args, device: torch.device, deadline: float) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    x_cpu, y_cpu = torch.rand(args.n, *CIFAR, generator=gen), torch.randint(0, 10, (args.n,), generator=gen)
    data = (x_cpu.to(device), y_cpu.to(device), x_cpu, y_cpu)
    cfgs = dp_variants(args.dp_variant)
    arms = [*cfgs, "opacus"]
    rows = []
    for name in args.models:
        for bs in args.batch_sizes:
            row: dict = {"model": name, "batch": bs, "n": args.n}
            for arm in arms:
                if time.perf_counter() > deadline:
                    row[f"{arm}_s"] = row[f"{arm}_mib"] = None
                    row.setdefault("skipped", []).append(arm)
                    continue
                fn = epoch_arm(arm, name, data, batch_size=bs, device=device, dp_cfgs=cfgs)
                row[f"{arm}_s"], row[f"{arm}_mib"] = median_run(fn, device, args.repeats)
            for arm in cfgs:
                if arm != "vanilla":
                    row[f"{arm}_vs_vanilla"] = _ratio(row[f"{arm}_s"], row["vanilla_s"])
            row["opacus_vs_dp"] = _ratio(row["opacus_s"], row["dp_s"])
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def grid_table(args, device: torch.device, deadline: float) -> list[dict]:
    ns = argparse.Namespace(device=str(device), epochs=args.grid_epochs, batch_size=64, clips=args.grid_clips,
                            noises=args.grid_noises, resnet_n=64)  # fmt: skip
    rows = []
    for name in args.grid_models:
        row: dict = {"model": name, "configs": len(ns.clips) * len(ns.noises), "epochs": ns.epochs}
        for arm in ("sequential", "fused"):
            if time.perf_counter() > deadline:
                row[f"{arm}_s"] = row[f"{arm}_mib"] = None
                row.setdefault("skipped", []).append(arm)
                continue
            fn = functools.partial(fused_grid.train_arm, arm, name, ns)
            row[f"{arm}_s"], row[f"{arm}_mib"] = median_run(fn, device, args.grid_repeats)
        row["speedup"] = _ratio(row["sequential_s"], row["fused_s"])
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _f(value, fmt: str = ".3f") -> str:
    return "–" if value is None else format(value, fmt)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def markdown(report: dict) -> str:
    env, s = report["environment"], report["settings"]
    facts = ", ".join(f"{k} {v}" for k, v in env.items() if v is not None)
    first = report["epoch"][0] if report["epoch"] else {}
    variants = [k.removesuffix("_vs_vanilla") for k in first if k.endswith("_vs_vanilla") and k != "dp_vs_vanilla"]
    header = ["model", "batch", "vanilla s", "DP s", "DP ÷ vanilla", "Opacus loop s", "Opacus loop ÷ DP"]
    header += [f"{v} ÷ vanilla" for v in variants] + ["+MiB vanilla / DP / Opacus"]
    rows = []
    for r in report["epoch"]:
        row = [r["model"], str(r["batch"]), _f(r["vanilla_s"]), _f(r["dp_s"]), _f(r["dp_vs_vanilla"], ".2f"),
               _f(r["opacus_s"]), _f(r["opacus_vs_dp"], ".2f") + "×"]  # fmt: skip
        row += [_f(r[f"{v}_vs_vanilla"], ".2f") for v in variants]
        rows.append(row + [" / ".join(_f(r[f"{a}_mib"], ".0f") for a in ("vanilla", "dp", "opacus"))])
    lines = [
        f"Environment: {facts}.",
        "",
        f"Per epoch at CIFAR-10 shape ({s['n']} random 3×32×32 samples, 10 classes), median of {s['repeats']} after "
        "a warm-up; DP = gsdefense DP-SGD (auto → bk, σ = 1, C = 1); Opacus loop = make_private (hooks) + its "
        "Poisson DataLoader, batches moved to the device, no per-epoch ε; +MiB = peak memory the arm adds.",
        "",
        *_table(header, rows),
        "",
        f"Fused grid: {len(s['grid_clips']) * len(s['grid_noises'])} DP-SGD configs (clips {s['grid_clips']} × "
        f"noises {s['grid_noises']}), digits, batch 64, epochs {s['grid_epochs']}, training only, median of "
        f"{s['grid_repeats']}.",
        "",
    ]
    grid = [[r["model"], _f(r["sequential_s"], ".2f"), _f(r["fused_s"], ".2f"), _f(r["speedup"], ".2f") + "×",
             f"{_f(r['sequential_mib'], '.0f')} / {_f(r['fused_mib'], '.0f')}"] for r in report["grid"]]  # fmt: skip
    lines += _table(["model", "sequential s", "fused s", "speed-up", "+MiB sequential / fused"], grid)
    skipped = [f"{r['model']}: {', '.join(r['skipped'])}" for r in report["epoch"] + report["grid"] if "skipped" in r]
    if skipped:
        lines += ["", f"Skipped after the {s['budget_s']} s budget: {'; '.join(skipped)}."]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", default=os.environ.get("OUT") or "outputs/gpu-check")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repeat (CI smoke test)")
    parser.add_argument("--models", nargs="+", default=None, help="default mlp cnn resnet18 (--quick: mlp cnn)")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=None, help="default 128 256 (--quick: 32)")
    parser.add_argument("--n", type=int, default=None, help="samples per epoch (default 10000; --quick: 128)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per figure (default 3; --quick: 1)")
    parser.add_argument("--dp-variant", action="append", default=[], metavar="NAME:FIELD=VALUE,...")
    parser.add_argument("--grid-models", nargs="+", default=None, help="default mlp cnn (--quick: mlp)")
    parser.add_argument("--grid-epochs", type=int, default=None, help="default 3 (--quick: 1)")
    parser.add_argument("--grid-repeats", type=int, default=None, help="default 3 (--quick: 1)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--budget-s", type=float, default=float("inf"))
    args = parser.parse_args()
    quick = args.quick
    defaults = dict(models=["mlp", "cnn"] if quick else ["mlp", "cnn", "resnet18"], batch_sizes=[32] if quick else
                    [128, 256], n=128 if quick else 10_000, repeats=1 if quick else 3,
                    grid_models=["mlp"] if quick else ["mlp", "cnn"], grid_epochs=1 if quick else 3,
                    grid_repeats=1 if quick else 3)  # fmt: skip
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.grid_clips, args.grid_noises = (GRID_CLIPS[:2], GRID_NOISES[:2]) if quick else (GRID_CLIPS, GRID_NOISES)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: --device cuda but no CUDA device here; use --device cpu", file=sys.stderr)
        return 2
    dp_variants(args.dp_variant)  # a bad --dp-variant stops here, before any measurement
    torch.set_num_threads(args.threads)
    deadline = time.perf_counter() + args.budget_s
    env = environment(device)
    print(json.dumps(env), flush=True)
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "device")}
    settings["budget_s"] = args.budget_s if args.budget_s != float("inf") else None
    report = {"environment": env, "settings": settings, "epoch": epoch_table(args, device, deadline)}
    report["grid"] = grid_table(args, device, deadline)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    (out / "gpu_check.md").write_text(text)
    print(text)
    return 1 if any("skipped" in r for r in report["epoch"] + report["grid"]) else 0


if __name__ == "__main__":
    sys.exit(main())
