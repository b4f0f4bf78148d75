"""DP-SGD cost relative to vanilla training, for mlp and cnn on the embedded digits data.

    python benchmarks/dp_overhead.py [--repeats 5] [--device auto] [--batch-size 64] [--mode auto]

``--mode`` is ``dp.grad_sample_mode`` (default ``auto``, the config default; ``hooks`` times Opacus' engine).

Both arms run in this one process, interleaved, on identical model, data and
batch size; the ratio (median DP epoch ÷ median vanilla epoch) is what to
compare across machines, not the absolute seconds.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from omegaconf import OmegaConf

from gsdefense.data import load_dataset
from gsdefense.models import build_model
from gsdefense.plan import resolve_device
from gsdefense.training.dp import DPSGDConfig
from gsdefense.training.loop import train
from gsdefense.training.optim import SGDConfig


def epoch_seconds(model_name: str, *, dp: DPSGDConfig | None, data, batch_size: int) -> float:
    torch.manual_seed(0)
    model = build_model(
        OmegaConf.create({"name": model_name}),
        input_shape=data.input_shape,
        num_classes=data.num_classes,
        mean=data.mean,
        std=data.std,
    ).to(data.x_train.device)
    cfg = SGDConfig(epochs=1, batch_size=batch_size)
    if data.x_train.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    train(model, data.x_train, data.y_train, optimizer_cfg=cfg, dp=dp, seed=0)
    if data.x_train.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--models", nargs="+", default=["mlp", "cnn"])
    parser.add_argument("--mode", default="auto", help="dp.grad_sample_mode: auto | bk | vmap | hooks | functorch")
    args = parser.parse_args()
    dp = DPSGDConfig(grad_sample_mode=args.mode)  # the dataclass' own default is hooks; the config's is auto
    device = resolve_device(args.device)
    data = load_dataset(OmegaConf.create({"name": "digits"}), seed=0).to(device)
    n = len(data.y_train)
    print(f"device={device} torch={torch.__version__} threads={torch.get_num_threads()} n_train={n} "
          f"batch={args.batch_size} repeats={args.repeats} mode={args.mode}")  # fmt: skip
    print(f"{'model':<6} {'vanilla s/epoch':>16} {'DP s/epoch':>11} {'DP/vanilla':>11} {'vanilla samp/s':>15} "
          f"{'DP samp/s':>10}")  # fmt: skip
    for name in args.models:
        epoch_seconds(name, dp=None, data=data, batch_size=args.batch_size)  # warm-up
        epoch_seconds(name, dp=dp, data=data, batch_size=args.batch_size)
        plain, private = [], []
        for _ in range(args.repeats):
            plain.append(epoch_seconds(name, dp=None, data=data, batch_size=args.batch_size))
            private.append(epoch_seconds(name, dp=dp, data=data, batch_size=args.batch_size))
        p, d = statistics.median(plain), statistics.median(private)
        print(f"{name:<6} {p:>16.4f} {d:>11.4f} {d / p:>11.2f} {n / p:>15.0f} {n / d:>10.0f}")


if __name__ == "__main__":
    main()
