"""Cost of gradient telemetry at its default setting, as a fraction of training time.

    python benchmarks/telemetry_overhead.py [--repeats 3] [--epochs 5]

Trains the default experiment (digits, badnets 10%) with and without the probe,
interleaved in this one process, for mlp and cnn, vanilla and DP-SGD.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from omegaconf import OmegaConf

from gsdefense.attacks import build_attack
from gsdefense.data import load_dataset
from gsdefense.data.bundle import DataBundle
from gsdefense.models import build_model
from gsdefense.telemetry import GradientProbe, TelemetryConfig
from gsdefense.training.dp import DPSGDConfig
from gsdefense.training.loop import train
from gsdefense.training.optim import SGDConfig


def seconds(
    model_name: str, *, poisoned, data, dp: DPSGDConfig | None, epochs: int, telemetry: bool, scope: str, mode: str
) -> float:
    torch.manual_seed(0)
    model = build_model(OmegaConf.create({"name": model_name}), input_shape=data.input_shape,
                        num_classes=data.num_classes, mean=data.mean, std=data.std)  # fmt: skip
    probe = None
    if telemetry:
        cfg = TelemetryConfig(scope=scope, mode=mode)
        probe = GradientProbe(cfg, x=poisoned.x, y=poisoned.y, is_poison=poisoned.is_poison,
                              clip=dp.clip if dp else None, noise=dp.noise if dp else None)  # fmt: skip
    start = time.perf_counter()
    train(model, poisoned.x, poisoned.y, optimizer_cfg=SGDConfig(epochs=epochs), dp=dp, seed=0, probe=probe)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=["mlp", "cnn"])
    parser.add_argument("--scope", default="last_layer", choices=["last_layer", "all"])
    parser.add_argument("--modes", nargs="+", default=["probe", "batches"], help="telemetry.mode values to time")
    parser.add_argument("--datasets", nargs="+", default=["digits", "fmnist-3/4 sz"])
    args = parser.parse_args()
    print(f"threads={torch.get_num_threads()} epochs={args.epochs} repeats={args.repeats} probe=64+64 per epoch "
          f"scope={args.scope}")  # fmt: skip
    print(f"{'data':<14} {'model':<5} {'dp':<6} {'mode':<8} {'plain s':>8} {'telemetry s':>12} {'overhead':>9}")
    for label, data in datasets():
        if label not in args.datasets:
            continue
        attack = build_attack(OmegaConf.create({"name": "badnets"}))
        attack.validate(data)
        poisoned = attack.poison(data, generator=torch.Generator().manual_seed(0))
        for name in args.models:
            for dp in (None, DPSGDConfig()):
                for mode in args.modes:
                    kw = dict(poisoned=poisoned, data=data, dp=dp, epochs=args.epochs, scope=args.scope, mode=mode)
                    seconds(name, telemetry=True, **kw)  # warm-up
                    off, on = [], []
                    for _ in range(args.repeats):
                        off.append(seconds(name, telemetry=False, **kw))
                        on.append(seconds(name, telemetry=True, **kw))
                    a, b = statistics.median(off), statistics.median(on)
                    row = f"{label:<14} {name:<5} {'dpsgd' if dp else 'none':<6} {mode:<8} {a:>8.3f} {b:>12.3f}"
                    print(f"{row} {100 * (b / a - 1):>8.1f}%", flush=True)


def datasets():
    """The embedded digits, and random data the size of the paper's FashionMNIST-3/4 (timing only)."""
    yield "digits", load_dataset(OmegaConf.create({"name": "digits"}), seed=0)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(10_800 + 2_000, 1, 28, 28, generator=gen)
    y = torch.randint(0, 2, (len(x),), generator=gen)
    yield "fmnist-3/4 sz", DataBundle(name="random", x_train=x[:10_800], y_train=y[:10_800], x_test=x[10_800:],
                                      y_test=y[10_800:], num_classes=2, mean=torch.full((1,), 0.5),
                                      std=torch.full((1,), 0.29))  # fmt: skip


if __name__ == "__main__":
    main()
