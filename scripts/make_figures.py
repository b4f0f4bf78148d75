"""Regenerate docs/figures/: one PNG per figure kind, from real sweeps run through launch.py on embedded data.

    python scripts/make_figures.py [--out docs/figures] [--work DIR]

The sweeps (~1.5 minutes on 2 CPU cores, one thread per run):

- hong4: Hong et al. Fig. 4a's grid (preset hong_fig4_label_flip: label flipping, 10 poison ratios × 5 clip norms
  at σ = 0, logistic regression, Adam) on breast_cancer, 10 epochs, seeds 0 and 1, plus its vanilla runs
  → rad_vs_poison_ratio;
- grid: BadNets on digits (MLP, 10 epochs), clip 0.1, 1, 4 × noise 0, 0.5, 2, seeds 0 and 1, plus vanilla
  → asr_rad_vs_dp, utility_heatmap, privacy_tradeoff, gradient_telemetry, training_curves;
- moons: label flipping (20 %) on two moons, vanilla and DP-SGD → decision_boundaries;
- nc: preset nc_vs_dp on digits (MLP, 10 epochs): BadNets and Blend × clip 1, 4 × noise 0, 1, seeds 0 and 1, plus
  vanilla, Neural Cleanse with unlearning → nc_anomaly_vs_dp, nc_asr_before_after.

``--work DIR`` keeps the sweeps there (a rerun then skips finished runs: resume is on by default).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gsdefense.analysis import load_history, load_runs  # noqa: E402
from gsdefense.plots import FIGURES  # noqa: E402

HONG4 = ["+experiment=hong_fig4_label_flip", "dataset=breast_cancer", "optimizer.epochs=10", "optimizer.batch_size=64"]
RATIOS = "attack.poison_ratio=0,0.01,0.02,0.03,0.04,0.05,0.1,0.2,0.3,0.4"
SWEEPS = {
    "hong4": [*HONG4, "hydra/launcher=fused", "seed=0,1"],
    "hong4_vanilla": [*HONG4, "dp=none", "~dp.noise", "hydra.sweeper.params=null", RATIOS, "seed=0,1"],
    "grid": [
        "hydra/launcher=fused",
        "attack=badnets",
        "dp.clip=0.1,1,4",
        "dp.noise=0,0.5,2",
        "optimizer.epochs=10",
        "seed=0,1",
    ],  # fmt: skip
    "grid_vanilla": ["attack=badnets", "dp=none", "optimizer.epochs=10", "seed=0,1"],
    "moons": [
        "dataset=moons",
        "model=mlp",
        "attack=label_flip",
        "attack.poison_ratio=0.2",
        "optimizer.epochs=20",
        "dp=none,dpsgd",
    ],  # fmt: skip
}
NC = ["+experiment=nc_vs_dp", "dataset=digits", "model=mlp", "optimizer.epochs=10", "detector.max_epochs=150",
      "attack=badnets,blend", "seed=0,1"]  # fmt: skip
SWEEPS["nc"] = [*NC, "hydra/launcher=fused", "dp.clip=1,4", "dp.noise=0,1"]
SWEEPS["nc_vanilla"] = [*NC, "dp=none", "~dp.clip", "~dp.noise", "hydra.sweeper.params=null"]
# Which sweeps each figure is drawn from.
SOURCES = {
    "rad_vs_poison_ratio": ("hong4", "hong4_vanilla"),
    "decision_boundaries": ("moons",),
    "nc_anomaly_vs_dp": ("nc", "nc_vanilla"),
    "nc_asr_before_after": ("nc", "nc_vanilla"),
}
DEFAULT_SOURCE = ("grid", "grid_vanilla")


def run_sweep(name: str, work: Path) -> Path:
    sweep = work / name
    env = {**os.environ, "GSDEFENSE_CACHE_DIR": str(work / "cache"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(ROOT / "launch.py"), "-m", *SWEEPS[name], f"hydra.sweep.dir={sweep}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    print(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"sweep {name}: no output")
    if proc.returncode != 0:
        raise SystemExit(f"sweep {name} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return sweep


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "figures", help="where the PNGs go")
    parser.add_argument("--work", type=Path, default=None, help="keep the sweeps here (default: a temporary folder)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = (args.work or Path(tmp)).resolve()
        sweeps = {name: run_sweep(name, work) for name in SWEEPS}
        args.out.mkdir(parents=True, exist_ok=True)
        for spec in FIGURES:
            dirs = [sweeps[s] for s in SOURCES.get(spec.name, DEFAULT_SOURCE)]
            frame = load_runs(dirs) if spec.source == "runs" else load_history(dirs)
            fig = spec.make(frame)
            path = args.out / f"{spec.name}.png"
            fig.savefig(path, dpi=110, bbox_inches="tight")
            plt.close(fig)
            print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
