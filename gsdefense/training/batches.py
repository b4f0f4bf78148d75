"""Training batches as index tensors drawn on the device: shuffled partitions (vanilla) and Poisson samples (DP).

DP-SGD samples each example independently with probability q per step (Poisson sampling), so batch sizes vary.
``poisson_batches`` draws a step's batch as its size |B| ~ Binomial(n, q), then a uniformly random |B|-subset of
the n examples: the same distribution as n independent Bernoulli(q) draws (given its size, a Poisson batch is
uniform over the subsets of that size), for O(|B|) work instead of n uniforms per step
(``tests/test_sampling.py`` checks it statistically). The accountant's q is unchanged. An epoch's sizes are
drawn together and read on the host once. On the CPU a subset comes from |B| + a few uniform draws with
replacement: the distinct values of i.i.d. uniform draws are, given their number, a uniform subset, of which a
uniform |B|-subset is kept (redrawn in the rare case of too few). On other devices (no host read per step) it is
the |B| smallest of n uniform keys.

``poisson_plan`` pads each of those batches up to the next multiple of ``BUCKET`` rows, marking the padding
with weight 0:

    idx[t] = the |B_t| selected indices in increasing order, then padding;   weight[t, j] = [j < |B_t|]

A padded row adds exactly zero to the loss, the clipped sum and the telemetry, so the update is the unpadded
one (to float summation order). What it buys on a GPU: a handful of shapes instead of one per step. On a CPU,
where the padding is extra arithmetic, unpadded batches are faster (``dp.fixed_shape`` is on only for CUDA
by default).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from gsdefense.training.engine import steps_per_epoch

BUCKET = 16  # batches are padded to a multiple of this many rows


def vanilla_batches(n: int, batch_size: int, *, generator: torch.Generator, device: torch.device):
    perm = torch.randperm(n, generator=generator, device=device)
    return perm.split(batch_size)


def poisson_sizes(n: int, sample_rate: float, steps: int, *, generator: torch.Generator) -> list[int]:
    """``steps`` batch sizes, each ~ Binomial(n, q), drawn on the generator's device and read once."""
    device = generator.device
    count = torch.full((steps,), float(n), dtype=torch.float64, device=device)
    return torch.binomial(count, torch.full_like(count, sample_rate), generator=generator).long().tolist()


def draws_for(k: int, n: int) -> int:
    """Draws per row for subsets of up to k of n: k, the ~k²/2n expected repeats twice over, and a margin."""
    return k + 8 + 2 * k * k // n + 4 * math.isqrt(k * k // n + 1)


def uniform_subsets(n: int, sizes: list[int], *, generator: torch.Generator) -> list[torch.Tensor]:
    """For each k in ``sizes``, a uniformly random k-subset of ``range(n)`` in increasing order, independently.

    Row t draws W ≥ k_t indices i.i.d. uniformly and keeps the first k_t distinct ones in draw order (distinct
    values in order of first appearance are a uniform draw without replacement). All rows are drawn, sorted and
    selected at once; a row with fewer than k_t distinct values is drawn again (any draw is symmetric in the n
    values, so what is kept stays uniform). Dense rows (4k > n: at most 4 steps) take a permutation's first k.
    """
    rows, short = _first_distinct(n, sizes, generator)
    while short:
        again, still = _first_distinct(n, [sizes[t] for t in short], generator)
        for t, row in zip(short, again):
            rows[t] = row
        short = [short[i] for i in still]
    return rows


def _first_distinct(n: int, sizes: list[int], generator: torch.Generator) -> tuple[list[torch.Tensor], list[int]]:
    """The rows of ``uniform_subsets`` and the positions of those that drew too few distinct values (one host read)."""
    device = generator.device
    top = max(sizes, default=0)
    if 4 * top > n:
        return [torch.randperm(n, generator=generator, device=device)[:k].sort().values for k in sizes], []
    width = draws_for(top, n)
    draws = torch.randint(n, (len(sizes), width), generator=generator, device=device)
    values, position = draws.sort(dim=1, stable=True)  # equal values: the earliest draw first
    first = torch.ones_like(values, dtype=torch.bool)
    first[:, 1:] = values[:, 1:] != values[:, :-1]
    key = torch.where(first, position, width)  # a repeat never counts
    k = torch.tensor(sizes, device=device)
    kth = key.sort(dim=1).values.gather(1, (k - 1).clamp(min=0).unsqueeze(1)).squeeze(1)
    select = (key <= kth.unsqueeze(1)) & (k > 0).unsqueeze(1)
    short = (kth >= width).nonzero().flatten().tolist()
    select[short] = False
    kept = [0 if t in short else size for t, size in enumerate(sizes)] if short else sizes
    return list(values[select].split(kept)), short


def poisson_batches(n: int, sample_rate: float, *, generator: torch.Generator, device: torch.device):
    """An epoch of Poisson batches, unpadded: each a Binomial(n, q) size, then a uniform subset of that size."""
    sizes = poisson_sizes(n, sample_rate, steps_per_epoch(sample_rate), generator=generator)
    return [idx.to(device) for idx in uniform_subsets(n, sizes, generator=generator)]


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
    for idx in poisson_batches(n, sample_rate, generator=generator, device=device):
        size = len(idx)
        width = min(n, padded(size))
        weight = torch.zeros(width, device=device)
        weight[:size] = 1.0
        yield PaddedBatch(torch.cat([idx, idx.new_zeros(width - size)]), weight, size)
