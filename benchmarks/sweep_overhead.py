"""Where a sweep's wall time goes (issue 17 §4), and from which grid size fusing pays off.

    python benchmarks/sweep_overhead.py [--epochs 20] [--sweeps fused40 basic6] [--payoff 2 4 8 16 40]
                                        [--payoff-epochs 20] [--out DIR] [--profile]
    python benchmarks/sweep_overhead.py --fig4a [--fig4a-jobs 50] [--workers 2] --sweeps --payoff   # issue 25 §5

Each sweep runs as a user runs it, ``python launch.py -m …`` in a fresh process with a fresh reference cache
and sweep dir, but through a driver (this file, ``--driver``) that wraps the functions of each phase with
timers before handing over to launch.py: nothing in gsdefense or Hydra is edited. Every moment of the process
is booked to the innermost phase running then (exclusive times; they add up to the wall time), with two
exceptions: training and evaluation inside a reference count as references, compositions inside Hydra's
sweeper validation pass count as that pass, and a checkpoint's file writes count as checkpoints. The phases
and the functions that open them:

- process start, process exit: before the driver's first line and after its last (interpreter start-up,
  teardown), from the parent's clock;
- imports: ``importlib._bootstrap._find_and_load`` (every module's first import, lazy ones included);
- Hydra compose: ``ConfigLoaderImpl.load_configuration``/``load_sweep_config`` (the primary config and the
  launcher's per-job config); Hydra validation pass: ``grid.sweep_jobs`` (the sweeper validates every
  job's typed config before launching); Hydra job setup: ``hydra.core.utils.run_job`` (job dir,
  ``.hydra/*.yaml``, logging, callbacks), around the task;
- config hashing: ``run_id``, ``run_noise_seed``, ``fusion_key``; grouping: ``fuse.group_jobs``;
- validation: ``plan.prepare``; data: ``data.load_dataset``; poisoning: ``run.poison``;
- training: ``training.loop.train``, ``training.fused.train_fused``; evaluation: ``metrics.evaluate`` (per
  epoch) and ``run.finish`` (final losses); telemetry: ``GradientProbe.measure``;
- references: ``run.reference_accuracy``, ``fuse.train_references``;
- outputs: ``io.write_json``/``write_csv``/``atomic_write`` (metrics, history, model, telemetry exports), the
  sweep summary callback; checkpoints: ``Checkpointer.save``/``load``/``clear`` (per-epoch checkpoints);
- other: everything else (Hydra's start-up and plugin scan, launcher and logging code, …).

A hook whose function is missing (renamed by later work) is reported and its time lands in the enclosing
phase. ``--profile`` also writes a cProfile of each driver process (``*.prof``, for snakeviz/pstats).

The breakdown and payoff sweeps run in one process (``hydra/launcher=basic``, and fused groups in-process), so
that every phase is seen. ``--fig4a`` times the paper-scale Fig. 4a grid (``+experiment=hong_fig4_label_flip``:
label flipping vs DP-Adam clipping, logistic regression on FashionMNIST-3/4, 40 epochs, 50 jobs; the
FashionMNIST IDX files of ``--fmnist-dir`` are unpacked into a temporary ``dataset.data_dir``) twice, with a
fresh reference cache each time: with the basic launcher under the phase timers (the share of the wall time
spent training the runs and their references), and with the default parallel launcher
(``hydra.launcher.workers=--workers``), whose workers' phases this process cannot see: its training share is
the basic sweep's training seconds over ``workers`` × its wall time.

The payoff table runs the README's grid (clips 0.1, 0.5, 1, 2, 4 × noises 0, 0.5, 1, 2, 3, 4, 6, 8) cut to
M = 2, 4, 8, 16, 40 runs, MLP on digits, with the basic and the fused launcher, and reports both wall times
and the training phase of each.
"""

from __future__ import annotations

import time

T0_WALL, T0, T0_CPU = time.time(), time.perf_counter(), time.process_time()  # the driver's first moment

import argparse  # noqa: E402
import contextlib  # noqa: E402
import functools  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from collections import Counter, defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CLIPS, NOISES = ["0.1", "0.5", "1", "2", "4"], ["0", "0.5", "1", "2", "3", "4", "6", "8"]
SWEEPS = {
    "fused40": ["hydra/launcher=fused", f"dp.clip={','.join(CLIPS)}", f"dp.noise={','.join(NOISES)}"],
    "basic6": ["hydra/launcher=basic", "dp.clip=0.1,1,4", "dp.noise=0.4,4.0", "attack=blend"],
}
FIG4A = ["+experiment=hong_fig4_label_flip", "dataset.download=false"]
# phase -> the (module, attribute) functions that open it; "Class.method" patches the class.
HOOKS = {
    "Hydra compose": [("hydra._internal.config_loader_impl", "ConfigLoaderImpl.load_configuration")],
    "Hydra validation pass": [("gsdefense.grid", "sweep_jobs")],
    "Hydra job setup": [("hydra.core.utils", "run_job")],
    "config hashing": [("gsdefense.identity", "Identity.of"), ("gsdefense.identity", "run_id"),
                       ("gsdefense.run", "run_id"), ("gsdefense.fuse", "fusion_key")],
    "grouping": [("gsdefense.fuse", "group_jobs")],
    "validation": [("gsdefense.plan", "prepare")],
    "data": [("gsdefense.data", "load_dataset"), ("gsdefense.data.memo", "load_dataset_cached")],
    "poisoning": [("gsdefense.run", "poison")],
    "training": [("gsdefense.training.loop", "train"), ("gsdefense.training.fused", "train_fused")],
    "evaluation": [("gsdefense.metrics", "evaluate"), ("gsdefense.run", "finish")],
    "telemetry": [("gsdefense.telemetry", "GradientProbe.measure")],
    "references": [("gsdefense.run", "reference_accuracy"), ("gsdefense.fuse", "train_references")],
    "outputs": [("gsdefense.io", "write_json"), ("gsdefense.io", "write_csv"), ("gsdefense.io", "atomic_write"),
                ("gsdefense.callbacks", "SweepSummary.on_multirun_end")],
    "checkpoints": [("gsdefense.training.checkpoint", "Checkpointer.save"),
                    ("gsdefense.training.checkpoint", "Checkpointer.load"),
                    ("gsdefense.training.checkpoint", "Checkpointer.clear")],
}  # fmt: skip
ABSORB = {
    "references": {"training", "evaluation", "telemetry"},
    "Hydra validation pass": {"Hydra compose"},
    "checkpoints": {"outputs"},
}
ORDER = ["process start", "process exit", "imports", "Hydra compose", "Hydra validation pass", "Hydra job setup",
         "config hashing", "grouping", "validation", "data", "poisoning", "training", "evaluation", "telemetry",
         "references", "outputs", "checkpoints", "other"]  # fmt: skip
PREIMPORT = ["hydra", "hydra._internal.config_loader_impl", "hydra._internal.core_plugins.basic_launcher",
             "hydra._internal.core_plugins.basic_sweeper", "hydra.plugins.sweeper", "hydra.core.utils",
             "hydra_plugins.gsdefense_fused.fused_launcher", "gsdefense.launch", "gsdefense.run", "gsdefense.fuse",
             "gsdefense.plan", "gsdefense.identity", "gsdefense.data", "gsdefense.metrics", "gsdefense.telemetry",
             "gsdefense.io", "gsdefense.callbacks", "gsdefense.training.loop", "gsdefense.training.fused",
             "gsdefense.training.checkpoint", "gsdefense.data.memo", "gsdefense.grid"]  # fmt: skip


class Phases:
    """Exclusive time per phase (wall and this process's CPU): a stack of open phases; the one on top is charged
    until it closes."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)
        self.calls: Counter[str] = Counter()
        self.stack = [["other", T0, T0_CPU]]

    def enter(self, phase: str) -> None:
        now, cpu = time.perf_counter(), time.process_time()
        top = self.stack[-1]
        self.seconds[top[0]] += now - top[1]
        self.cpu[top[0]] += cpu - top[2]
        self.calls[phase] += 1  # calls of the phase's functions, absorbed ones included
        self.stack.append([top[0] if phase in ABSORB.get(top[0], ()) else phase, now, cpu])

    def leave(self) -> None:
        now, cpu = time.perf_counter(), time.process_time()
        phase, since, cpu_since = self.stack.pop()
        self.seconds[phase] += now - since
        self.cpu[phase] += cpu - cpu_since
        self.stack[-1][1], self.stack[-1][2] = now, cpu

    def wrap(self, fn, phase: str):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            self.enter(phase)
            try:
                return fn(*args, **kwargs)
            finally:
                self.leave()

        timed.sweep_phase = phase
        return timed


def install(phases: Phases) -> list[str]:
    """Wrap every hook's function wherever it is referenced; returns the hooks that were not found."""
    import importlib._bootstrap as bootstrap

    bootstrap._find_and_load = phases.wrap(bootstrap._find_and_load, "imports")
    phases.enter("imports")
    for name in PREIMPORT:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    phases.leave()
    missing = []
    for phase, targets in HOOKS.items():
        for module_name, attr in targets:
            module = sys.modules.get(module_name)
            owner_name, _, method = attr.rpartition(".")
            owner = getattr(module, owner_name, None) if owner_name else module
            original = getattr(owner, method, None) if owner is not None else None
            if original is None:
                missing.append(f"{module_name}.{attr}")
                continue
            if hasattr(original, "sweep_phase"):  # the same function under another name: wrapped already
                continue
            wrapped = phases.wrap(original, phase)
            if owner_name:
                setattr(owner, method, wrapped)
                continue
            for mod in list(sys.modules.values()):  # `from x import f` copies: patch every reference
                if getattr(mod, "__name__", "").startswith(("gsdefense", "hydra", "hydra_plugins")):
                    for key, value in list(vars(mod).items()):
                        if value is original:
                            setattr(mod, key, wrapped)
    return missing


def driver(result_path: Path, launch_args: list[str], profile: Path | None) -> int:
    """Run ``launch.py ARGS`` in this process under the phase timers; write the phases to ``result_path``."""
    sys.path[0] = str(ROOT)  # as `python launch.py` would have it (before the pre-imports: not an installed copy)
    phases = Phases()
    missing = install(phases)
    sys.argv = [str(ROOT / "launch.py"), *launch_args]
    code = 0
    import runpy

    import gsdefense.launch

    # launch.py leaves through gsdefense.launch.exit_now (os._exit, skipping teardown); hold that until the phases
    # are written, then leave the same way, so "process exit" measures what a user's process does.
    fast_exit = gsdefense.launch.exit_now

    def hold(status) -> None:
        raise SystemExit(status)

    gsdefense.launch.exit_now = hold

    profiler = None
    if profile is not None:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    try:
        runpy.run_path(str(ROOT / "launch.py"), run_name="__main__")
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    finally:
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(str(profile))
    phases.seconds[phases.stack[0][0]] += time.perf_counter() - phases.stack[0][1]
    phases.cpu[phases.stack[0][0]] += time.process_time() - phases.stack[0][2]
    body = {"seconds": dict(phases.seconds), "cpu": dict(phases.cpu), "calls": dict(phases.calls),
            "missing_hooks": missing,
            "t0_wall": T0_WALL, "t_end_wall": time.time(), "exit": code}  # fmt: skip
    result_path.write_text(json.dumps(body))
    fast_exit(code)
    return code


def run_sweep(args: list[str], *, epochs: int | None, tmp: Path, label: str, profile_dir: Path | None,
              env: dict | None = None) -> dict:  # fmt: skip
    """One sweep in a fresh driver process: its phases, wall time and run count (``epochs`` None: the config's)."""
    sweep, result = tmp / label / "sweep", tmp / label / "phases.json"
    result.parent.mkdir(parents=True)
    cmd = [sys.executable, __file__, "--driver", str(result)]
    if profile_dir is not None:
        cmd += ["--profile-to", str(profile_dir / f"{label}.prof")]
    cmd += ["--", "-m", *args, *([f"optimizer.epochs={epochs}"] if epochs else []), f"hydra.sweep.dir={sweep}"]
    env = {**os.environ, **(env or {}), "GSDEFENSE_CACHE_DIR": str(tmp / label / "cache")}
    start_wall, start = time.time(), time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err, text=True)
        tree_cpu = tree_cpu_seconds(proc)
        wall = time.perf_counter() - start
        err.seek(0)
        stderr = err.read()
    if proc.returncode != 0 or not result.exists():
        raise SystemExit(f"sweep {label} failed (exit {proc.returncode}): {stderr[-2000:]}")
    body = json.loads(result.read_text())
    seconds = body["seconds"]
    seconds["process start"] = body["t0_wall"] - start_wall  # interpreter start-up, before the driver's first line
    seconds["process exit"] = wall - (body["t_end_wall"] - start_wall)  # teardown: atexit handlers, finalisers
    runs = len(list(sweep.glob("*/metrics.json")))
    return {"label": label, "args": args, "epochs": epochs, "runs": runs, "wall_s": wall, "seconds": seconds,
            "cpu": body["cpu"], "tree_cpu_s": tree_cpu, "calls": body["calls"],
            "missing_hooks": body["missing_hooks"]}  # fmt: skip


def tree_cpu_seconds(proc: subprocess.Popen, interval: float = 0.25) -> float:
    """CPU seconds of ``proc`` and every process below it (workers, fork servers), polled from /proc until it
    exits: on a machine shared with other jobs, CPU time is what the sweep cost, where wall time is not."""
    tick = os.sysconf("SC_CLK_TCK")
    seen: dict[int, float] = {}
    while proc.poll() is None:
        stats = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            stats[int(stat.parent.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
        family, todo = {proc.pid}, [proc.pid]
        while todo:
            parent = todo.pop()
            kids = [pid for pid, (ppid, _) in stats.items() if ppid == parent and pid not in family]
            family.update(kids)
            todo += kids
        for pid in family & stats.keys():
            seen[pid] = max(seen.get(pid, 0.0), stats[pid][1])
        time.sleep(interval)
    return sum(seen.values())


def breakdown_md(sweep: dict) -> str:
    s, wall = sweep["seconds"], sweep["wall_s"]
    train, refs = s.get("training", 0), s.get("references", 0)
    epochs = f" optimizer.epochs={sweep['epochs']}" if sweep["epochs"] else ""
    lines = [f"`python launch.py -m {' '.join(sweep['args'])}{epochs}`: {sweep['runs']} "
             f"runs, {wall:.1f} s wall, {train / wall:.0%} in training ({(train + refs) / wall:.0%} with the "
             "references).", "",
             "| phase | s | share | CPU s | calls |", "|---|---|---|---|---|"]  # fmt: skip
    cpu = sweep.get("cpu", {})
    for phase in ORDER + sorted(set(s) - set(ORDER)):
        if phase in s:
            lines.append(f"| {phase} | {s[phase]:.2f} | {s[phase] / wall:.1%} | {cpu.get(phase, 0):.2f} | "
                         f"{sweep['calls'].get(phase, '')} |")  # fmt: skip
    if sweep["missing_hooks"]:
        lines.append(f"\nHooks not found (their time is in the enclosing phase): {', '.join(sweep['missing_hooks'])}")
    return "\n".join(lines) + "\n"


def payoff_args(m: int, launcher: str) -> list[str]:
    """The first M runs of the README's 5 × 8 grid, as a product of clip and noise lists."""
    shapes = {2: (2, 1), 4: (2, 2), 8: (4, 2), 16: (4, 4), 40: (5, 8)}
    if m not in shapes:
        raise SystemExit(f"--payoff: grid sizes must be among {sorted(shapes)} (got {m})")
    c, n = shapes[m]
    grid = [f"dp.clip={','.join(CLIPS[:c])}", f"dp.noise={','.join(NOISES[:n])}"]
    return (["hydra/launcher=fused"] if launcher == "fused" else ["hydra/launcher=basic"]) + grid


def fmnist_data_dir(source: Path, tmp: Path) -> Path:
    """A ``dataset.data_dir`` holding FashionMNIST/raw/ with the un-gzipped IDX files of ``source``."""
    import gzip
    import shutil

    raw = tmp / "data" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for gz in sorted(source.glob("*-ubyte.gz")):
        with gzip.open(gz) as fin, (raw / gz.name[:-3]).open("wb") as fout:
            shutil.copyfileobj(fin, fout)
    if len(list(raw.iterdir())) < 4:
        raise SystemExit(f"--fmnist-dir {source}: the four FashionMNIST *-ubyte.gz files are not there")
    return raw.parents[1]


def fig4a(args, tmp: Path) -> tuple[dict, str]:
    """The paper-scale Fig. 4a grid with the basic launcher (phases) and the parallel one (wall time)."""
    env = {"GSDEFENSE_DATA_DIR": str(fmnist_data_dir(args.fmnist_dir, tmp))}
    grid = FIG4A
    if args.fig4a_jobs < 50:  # the first clips of the 5 × 10 grid
        ratios = ["0", "0.01", "0.02", "0.03", "0.04", "0.05", "0.1", "0.2", "0.3", "0.4"]
        clips = max(1, args.fig4a_jobs // len(ratios))
        grid = [*FIG4A, f"dp.clip={','.join(['8', '4', '2', '1', '0.1'][:clips])}"]
        grid += [f"attack.poison_ratio={','.join(ratios[: min(len(ratios), args.fig4a_jobs)])}"]
    basic = run_sweep(["hydra/launcher=basic", *grid], epochs=None, tmp=tmp, label="fig4a-basic", profile_dir=None,
                      env=env)  # fmt: skip
    par = run_sweep([f"hydra.launcher.workers={args.workers}", *grid], epochs=None, tmp=tmp, label="fig4a-parallel",
                    profile_dir=None, env=env)  # fmt: skip
    s, c = basic["seconds"], basic["cpu"]
    train = s.get("training", 0) + s.get("references", 0)
    train_cpu = c.get("training", 0) + c.get("references", 0)
    row = {"runs": basic["runs"], "basic_s": basic["wall_s"], "train_s": train, "workers": args.workers,
           "parallel_s": par["wall_s"], "share_basic": train / basic["wall_s"],
           "share_parallel": train / (args.workers * par["wall_s"]), "train_cpu_s": train_cpu,
           "basic_cpu_s": basic["tree_cpu_s"], "parallel_cpu_s": par["tree_cpu_s"],
           "share_basic_cpu": train_cpu / basic["tree_cpu_s"], "share_parallel_cpu": train_cpu / par["tree_cpu_s"],
           "basic": basic}  # fmt: skip
    md = [breakdown_md(basic),
          f"`python benchmarks/sweep_overhead.py --fig4a --fig4a-jobs {args.fig4a_jobs} --workers {args.workers}` "
          "(wall: as measured; CPU: all the sweep's processes, what it costs on an idle machine):",
          "", "| launcher | runs | wall s | CPU s | training + references CPU s | training share of CPU | "
          "training share of wall × workers |", "|---|---|---|---|---|---|---|",
          f"| basic | {row['runs']} | {row['basic_s']:.1f} | {row['basic_cpu_s']:.1f} | {train_cpu:.1f} | "
          f"{row['share_basic_cpu']:.0%} | {row['share_basic']:.0%} |",
          f"| parallel ({args.workers} workers) | {par['runs']} | {row['parallel_s']:.1f} | "
          f"{row['parallel_cpu_s']:.1f} | {train_cpu:.1f} | {row['share_parallel_cpu']:.0%} | "
          f"{row['share_parallel']:.0%} |"]  # fmt: skip
    return row, "\n".join(md) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20, help="optimizer.epochs of the breakdown sweeps")
    parser.add_argument("--sweeps", nargs="*", default=list(SWEEPS), choices=list(SWEEPS))
    parser.add_argument("--payoff", nargs="*", type=int, default=[2, 4, 8, 16, 40], help="grid sizes (none: skip)")
    parser.add_argument("--payoff-epochs", type=int, default=20)
    parser.add_argument("--out", type=Path, default=None, help="write sweep_overhead.json and .md here")
    parser.add_argument("--profile", action="store_true", help="also write a cProfile per sweep into --out")
    parser.add_argument("--fig4a", action="store_true", help="time the paper-scale Fig. 4a grid (issue 25 §5)")
    parser.add_argument("--fig4a-jobs", type=int, default=50, help="the grid's first N jobs (50: all)")
    parser.add_argument("--workers", type=int, default=2, help="hydra.launcher.workers of the parallel --fig4a sweep")
    parser.add_argument("--fmnist-dir", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    parser.add_argument("--driver", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--profile-to", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("launch_args", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.driver:
        sys.exit(driver(args.driver, args.launch_args, args.profile_to))
    profile_dir = args.out if args.profile else None
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    report: dict = {"breakdown": [], "payoff": []}
    md = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.fig4a:
            row, text = fig4a(args, Path(tmp))
            report["fig4a"] = row
            md.append(text)
            print(text, flush=True)
        for label in args.sweeps:
            sweep = run_sweep(SWEEPS[label], epochs=args.epochs, tmp=Path(tmp), label=label, profile_dir=profile_dir)
            report["breakdown"].append(sweep)
            md.append(breakdown_md(sweep))
            print(md[-1], flush=True)
        rows = []
        for m in args.payoff:
            row = {"runs": m}
            for launcher in ("basic", "fused"):
                sweep = run_sweep(payoff_args(m, launcher), epochs=args.payoff_epochs, tmp=Path(tmp),
                                  label=f"payoff-{m}-{launcher}", profile_dir=None)  # fmt: skip
                assert sweep["runs"] == m, sweep
                row[f"{launcher}_s"], row[f"{launcher}_train_s"] = sweep["wall_s"], sweep["seconds"].get("training")
            row["speedup"] = row["basic_s"] / row["fused_s"]
            print(json.dumps(row), flush=True)
            rows.append(row)
        report["payoff"] = rows
    if args.payoff:
        table = [f"MLP on digits, {args.payoff_epochs} epochs, cold reference cache; wall time of the whole "
                 "`python launch.py -m …` process and its training phase.", "",
                 "| runs | basic launcher s | fused s | fused speed-up | training s: basic / fused |",
                 "|---|---|---|---|---|"]  # fmt: skip
        table += [f"| {r['runs']} | {r['basic_s']:.1f} | {r['fused_s']:.1f} | {r['speedup']:.2f}× | "
                  f"{r['basic_train_s']:.1f} / {r['fused_train_s']:.1f} |" for r in rows]  # fmt: skip
        md.append("\n".join(table) + "\n")
        print(md[-1])
    if args.out:
        (args.out / "sweep_overhead.json").write_text(json.dumps(report, indent=2) + "\n")
        (args.out / "sweep_overhead.md").write_text("\n".join(md))


if __name__ == "__main__":
    main()
