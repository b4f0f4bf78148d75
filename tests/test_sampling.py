"""Poisson sampling as Binomial(n, q) sizes and uniform subsets: the distribution of n Bernoulli(q) masks.

Every check is a chi-square test against the exact probabilities with a fixed seed, so each p-value is a fixed
number; a deliberately biased sampler fails the same checks (the tests can fail).
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from scipy import stats

from gsdefense.training import batches
from gsdefense.training.batches import poisson_batches, poisson_plan, uniform_subsets
from gsdefense.training.engine import poisson_rate, steps_per_epoch

CPU = torch.device("cpu")


def _subset_counts(subsets, n: int, k: int) -> list[int]:
    index = {c: i for i, c in enumerate(itertools.combinations(range(n), k))}
    counts = [0] * len(index)
    for s in subsets:
        counts[index[tuple(s.tolist())]] += 1
    return counts


def _uniform_p(counts: list[int]) -> float:
    return float(stats.chisquare(counts).pvalue)


@pytest.mark.parametrize("n, k", [(8, 2), (9, 2), (20, 1)])
def test_subsets_are_uniform(n, k):
    subsets = uniform_subsets(n, [k] * 200 * math.comb(n, k), generator=torch.Generator().manual_seed(0))
    assert all(len(s) == k and bool((s[1:] > s[:-1]).all()) for s in subsets)  # distinct, increasing
    assert _uniform_p(_subset_counts(subsets, n, k)) > 1e-3


def test_subsets_stay_uniform_when_rows_are_drawn_again(monkeypatch):
    """With exactly k draws per row most rows repeat a value and are drawn again; what is kept stays uniform."""
    monkeypatch.setattr(batches, "draws_for", lambda k, n: k)
    n, k = 8, 2
    subsets = uniform_subsets(n, [k] * 200 * math.comb(n, k), generator=torch.Generator().manual_seed(1))
    assert _uniform_p(_subset_counts(subsets, n, k)) > 1e-3


def test_a_biased_sampler_fails_the_uniformity_check():
    """The k smallest of the drawn values instead of the first k distinct ones: biased to small indices."""
    gen = torch.Generator().manual_seed(0)
    n, k = 8, 2
    biased = [torch.randint(n, (k + 2,), generator=gen).unique()[:k] for _ in range(200 * math.comb(n, k))]
    biased = [s for s in biased if len(s) == k]
    assert _uniform_p(_subset_counts(biased, n, k)) < 1e-6


@pytest.mark.parametrize("n, q, epochs", [(6, 0.5, 12000), (5, 0.25, 6000)])
def test_poisson_batches_have_the_bernoulli_masks_distribution(n, q, epochs):
    """Every subset S of range(n) has probability q^|S| (1−q)^(n−|S|), as under independent Bernoulli(q) masks."""
    gen = torch.Generator().manual_seed(2)
    counts = [0] * 2**n
    for _ in range(epochs):
        for idx in poisson_batches(n, q, generator=gen, device=CPU):
            counts[sum(1 << i for i in idx.tolist())] += 1
    total = sum(counts)
    assert total == epochs * steps_per_epoch(q)
    expected = [total * q ** bin(m).count("1") * (1 - q) ** (n - bin(m).count("1")) for m in range(2**n)]
    assert stats.chisquare(counts, expected).pvalue > 1e-3


def test_sparse_poisson_batches_sizes_pairs_and_inclusion():
    """n = 24, q = 1/24 (the draw-and-deduplicate route): sizes ~ Binomial(n, q), each example is in a batch with
    probability q, and a batch of two is a uniform pair."""
    n, q = 24, 1 / 24
    gen = torch.Generator().manual_seed(3)
    steps = [idx for _ in range(3000) for idx in poisson_batches(n, q, generator=gen, device=CPU)]
    sizes = torch.tensor([len(s) for s in steps])
    observed = torch.bincount(sizes, minlength=6)[:6].tolist() + [int((sizes >= 6).sum())]
    pmf = [stats.binom.pmf(k, n, q) for k in range(6)]
    expected = [len(steps) * p for p in pmf] + [len(steps) * (1 - sum(pmf))]
    assert stats.chisquare(observed[:5] + [sum(observed[5:])], expected[:5] + [sum(expected[5:])]).pvalue > 1e-3
    inclusion = torch.bincount(torch.cat(steps), minlength=n).tolist()
    assert _uniform_p(inclusion) > 1e-3
    assert sum(inclusion) / (len(steps) * n) == pytest.approx(q, rel=0.03)
    pairs = [s for s in steps if len(s) == 2]
    assert len(pairs) > 10_000 and _uniform_p(_subset_counts(pairs, n, 2)) > 1e-3


def test_batches_are_seeded_and_the_accountants_rate_is_unchanged():
    a = poisson_batches(1000, 0.05, generator=torch.Generator().manual_seed(4), device=CPU)
    b = poisson_batches(1000, 0.05, generator=torch.Generator().manual_seed(4), device=CPU)
    c = poisson_batches(1000, 0.05, generator=torch.Generator().manual_seed(5), device=CPU)
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and not all(torch.equal(x, z) for x, z in zip(a, c))
    assert poisson_rate(60000, 100) == (1 / 600, 100) and steps_per_epoch(1 / 600) == 600


def test_the_padded_plan_pads_the_same_batches():
    plain = poisson_batches(60000, 1 / 600, generator=torch.Generator().manual_seed(6), device=CPU)
    plan = list(poisson_plan(60000, 1 / 600, generator=torch.Generator().manual_seed(6), device=CPU))
    assert len(plan) == len(plain) == 600
    for idx, batch in zip(plain, plan):
        assert torch.equal(batch.idx[: batch.size], idx) and batch.weight.sum() == batch.size
