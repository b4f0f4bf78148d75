"""Training batches as index tensors drawn on the device: shuffled partitions (vanilla) and Poisson samples (DP).

DP-SGD samples each example independently with probability q per step, so batch sizes vary. ``poisson_plan``
draws the masks with exactly the generator calls ``poisson_batches`` makes (the same batches, in the same index
order), reads their sizes on the host once per ``STEP_CHUNK`` steps, and pads each batch up to the next multiple
of ``BUCKET`` rows, marking the padding with weight 0:

    idx[t] = the |B_t| selected indices in increasing order, then padding;   weight[t, j] = [j < |B_t|]

A padded row adds exactly zero to the loss, the clipped sum and the telemetry, so the update is the unpadded
one (to float summation order). What it buys: no host read of a batch size per step (on a GPU each read is a
synchronisation that stalls the queue), and a handful of shapes instead of one per step. On a CPU, where
reading a size costs nothing and the padding is extra arithmetic, unpadded batches are faster
(``dp.fixed_shape`` is on only for CUDA by default).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from gsdefense.training.engine import steps_per_epoch

STEP_CHUNK = 64  # steps whose masks are drawn and sized together: one host read each, memory n × 64
BUCKET = 16  # batches are padded to a multiple of this many rows


def vanilla_batches(n: int, batch_size: int, *, generator: torch.Generator, device: torch.device):
    perm = torch.randperm(n, generator=generator, device=device)
    return perm.split(batch_size)


def poisson_batches(n: int, sample_rate: float, *, generator: torch.Generator, device: torch.device):
    """An epoch of Poisson batches, unpadded: one Bernoulli(q) mask over the n examples per step."""
    for _ in range(steps_per_epoch(sample_rate)):
        yield (torch.rand(n, generator=generator, device=device) < sample_rate).nonzero().squeeze(1)


def use_fixed_shape(setting: bool | None, device: torch.device) -> bool:
    """``dp.fixed_shape``: as set, or (null) on for CUDA devices only."""
    return device.type == "cuda" if setting is None else bool(setting)


@dataclass
class PaddedBatch:
    """One step's batch: ``idx`` (K,) indices and ``weight`` (K,): 1 for the batch's ``size`` examples, 0 after."""

    idx: torch.Tensor
    weight: torch.Tensor
    size: int


def padded(size: int) -> int:
    """The bucket a batch of ``size`` rows is padded to (an empty batch still has one bucket: a noise-only step)."""
    return BUCKET * max(1, -(-size // BUCKET))


def poisson_plan(
    n: int, sample_rate: float, *, generator: torch.Generator, device: torch.device
) -> Iterator[PaddedBatch]:
    """The batches ``poisson_batches`` draws with the same generator, each padded to a multiple of ``BUCKET``."""
    steps = steps_per_epoch(sample_rate)
    positions = torch.arange(n, device=device, dtype=torch.int32)
    for start in range(0, steps, STEP_CHUNK):
        chunk = min(STEP_CHUNK, steps - start)
        masks = torch.stack([torch.rand(n, generator=generator, device=device) < sample_rate for _ in range(chunk)])
        sizes = masks.sum(1).tolist()  # the one host read for these steps
        width = min(n, padded(max(sizes)))
        keys = torch.where(masks, positions, n)  # unselected examples sort after every selected one
        top = keys.topk(width, dim=1, largest=False, sorted=True).values
        weights = (top < n).to(torch.float32)
        idx = top.clamp(max=n - 1).long()
        for t, size in enumerate(sizes):
            k = min(width, padded(size))
            yield PaddedBatch(idx[t, :k], weights[t, :k], size)
