"""Neural Cleanse detection time vs the model's training time, batched vs label by label.

    python benchmarks/neural_cleanse.py [--models mlp cnn] [--repeats 3] [--threads 1] [--epochs 20]

For each model on the embedded digits data (BadNets 10%, target 0; 10% of the clean training set held out
for the defender, as ``detector=neural_cleanse`` does): training time of the default schedule (SGD, 20
epochs, batch 64) vanilla and with DP-SGD (clip 1, noise 1, the default ``bk`` engine), then reverse
engineering of all 10 labels with the default ``NeuralCleanseConfig``: batched (one stacked optimisation) and
label by label (one ``reverse_engineer`` call per label, the original code's loop). After one warm-up, every
arm runs ``--repeats`` times interleaved in this one process; medians are reported, and the ratios are what to compare
across machines. The batched and per-label runs take the same optimisation path (same init and batches), so
they take the same number of steps per label (``same_steps``; float rounding of the larger batched forward can
flip a threshold decision); the table also prints whether the target was flagged.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gsdefense.attacks import build_attack  # noqa: E402
from gsdefense.data import load_dataset  # noqa: E402
from gsdefense.detectors import NeuralCleanseConfig, defender_split  # noqa: E402
from gsdefense.detectors.anomaly import anomaly_index  # noqa: E402
from gsdefense.detectors.reverse import reverse_engineer  # noqa: E402
from gsdefense.models import build_model  # noqa: E402
from gsdefense.training.dp import DPSGDConfig  # noqa: E402
from gsdefense.training.loop import train  # noqa: E402
from gsdefense.training.optim import SGDConfig  # noqa: E402


def _setup(name: str, *, epochs: int):
    data = load_dataset(OmegaConf.create({"name": "digits"}), seed=0)
    cfg = NeuralCleanseConfig()
    train_idx, defender_idx = defender_split(len(data.y_train), fraction=cfg.defender_fraction, seed=0)
    victim = dataclasses.replace(data, x_train=data.x_train[train_idx], y_train=data.y_train[train_idx])
    attack = build_attack(OmegaConf.create({"name": "badnets", "poison_ratio": 0.1, "target_class": 0}))
    attack.validate(victim)
    poisoned = attack.poison(victim, generator=torch.Generator().manual_seed(0))
    node = OmegaConf.create({"name": name})

    def fit(dp: DPSGDConfig | None, epochs: int = epochs) -> tuple[torch.nn.Module, float]:
        torch.manual_seed(0)
        model = build_model(node, input_shape=data.input_shape, num_classes=10, mean=data.mean, std=data.std)
        start = time.perf_counter()
        result = train(model, poisoned.x, poisoned.y, optimizer_cfg=SGDConfig(epochs=epochs), dp=dp, seed=0)
        return result.model, time.perf_counter() - start

    return data.x_train[defender_idx], cfg, fit


def _detect(model, x, cfg, labels: list[list[int]]) -> tuple[float, list[int], bool]:
    start = time.perf_counter()
    results = [reverse_engineer(model, x, num_classes=10, cfg=cfg, box=(0.0, 1.0), seed=0, labels=ls) for ls in labels]
    seconds = time.perf_counter() - start
    l1 = torch.cat([r.l1 for r in results])
    steps = torch.cat([r.steps for r in results]).tolist()
    return seconds, steps, bool(anomaly_index(l1.numpy())[0] > cfg.anomaly_threshold)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["mlp", "cnn"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=20, help="training epochs (the default schedule: 20)")
    parser.add_argument("--max-epochs", type=int, default=None, help="cap NC's mini-epochs (smoke runs)")
    parser.add_argument("--steps-per-epoch", type=int, default=None, help="NC's batches per mini-epoch (null: a pass)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    header = ("model", "max_steps", "same_steps", "target_flagged", "train_s", "train_dp_s", "nc_batched_s",
              "nc_per_label_s", "per_label/batched", "batched/train_dp", "batched/train")  # fmt: skip
    print(" ".join(f"{h:>16}" for h in header))
    for name in args.models:
        x, cfg, fit = _setup(name, epochs=args.epochs)
        cfg = dataclasses.replace(cfg, steps_per_epoch=args.steps_per_epoch)
        cfg = dataclasses.replace(cfg, max_epochs=args.max_epochs) if args.max_epochs else cfg
        # Warm-up (lazy initialisation, allocator, RDP curve cache) so that one repeat already times steady state.
        _detect(fit(None)[0], x, dataclasses.replace(cfg, max_epochs=2), [list(range(10))])
        fit(DPSGDConfig(grad_sample_mode="bk"))
        times: dict[str, list[float]] = {"train": [], "train_dp": [], "batched": [], "per_label": []}
        for _ in range(args.repeats):
            model, seconds = fit(None)
            times["train"].append(seconds)
            times["train_dp"].append(fit(DPSGDConfig(grad_sample_mode="bk"))[1])
            seconds, steps, hit = _detect(model, x, cfg, [list(range(10))])
            times["batched"].append(seconds)
            seconds, steps_alone, _ = _detect(model, x, cfg, [[k] for k in range(10)])
            times["per_label"].append(seconds)
            same = steps == steps_alone
        med = {k: statistics.median(v) for k, v in times.items()}
        ratios = (med["per_label"] / med["batched"], med["batched"] / med["train_dp"], med["batched"] / med["train"])
        row = (name, max(steps), same, hit, med["train"], med["train_dp"], med["batched"], med["per_label"], *ratios)
        print(" ".join(f"{v:>16.3f}" if isinstance(v, float) else f"{v!s:>16}" for v in row), flush=True)


if __name__ == "__main__":
    main()
