"""The warm-up's token counts reach every (bucket, specialisation) pair a call can hit,
and the warm-up does nothing where Triton compiles nothing (CPU)."""

import random

import pytest
import torch

from vllm_gemma4_router.routing.launch_table import bucket_bounds
from vllm_gemma4_router.routing.warmup import (
    specialisation_token_counts,
    warm_routing,
    warmup_token_counts,
)


def _class(num_tokens: int) -> str:
    """What Triton specialises an int on: 1, a multiple of 16, or neither."""
    if num_tokens == 1:
        return "one"
    return "multiple of 16" if num_tokens % 16 == 0 else "other"


def _bucket(num_tokens: int, bounds) -> int:
    return sum(num_tokens > b for b in sorted(bounds))


@pytest.mark.parametrize("trial", range(40))
def test_specialisation_token_counts_cover_each_class_with_its_smallest(trial):
    rng = random.Random()
    first = rng.choice([1, 2, rng.randint(1, 40), rng.randint(1, 5000)])
    last = first + rng.choice([0, 1, 14, 15, 16, rng.randint(0, 100)])
    counts = specialisation_token_counts(first, last)
    assert all(first <= n <= last for n in counts)
    assert counts == sorted(set(counts))
    smallest: dict[str, int] = {}
    for n in range(first, last + 1):
        smallest.setdefault(_class(n), n)
    assert counts == sorted(smallest.values()), (first, last)


def test_specialisation_token_counts_rejects_zero_and_empty_ranges():
    with pytest.raises(ValueError, match="first"):
        specialisation_token_counts(0, 4)
    assert specialisation_token_counts(9, 8) == []


@pytest.mark.parametrize("trial", range(30))
def test_warmup_token_counts_reach_every_pair_a_call_can(trial):
    rng = random.Random()
    bounds = rng.sample(range(1, 3000), rng.randint(0, 6))
    max_tokens = rng.randint(1, 4000)
    counts = warmup_token_counts(bounds, max_tokens)
    assert all(1 <= n <= max_tokens for n in counts)
    warmed = {(_bucket(n, bounds), _class(n)) for n in counts}
    needed = {(_bucket(n, bounds), _class(n)) for n in range(1, max_tokens + 1)}
    assert warmed == needed
    assert len(counts) == len(needed)  # one call per pair, no more


def test_warmup_token_counts_of_the_packaged_table():
    counts = warmup_token_counts(bucket_bounds(), 8192)
    assert counts[0] == 1 and max(counts) <= 8192
    with pytest.raises(ValueError, match="max_tokens"):
        warmup_token_counts(bucket_bounds(), 0)


def test_warm_routing_compiles_nothing_on_the_cpu():
    assert warm_routing(128, 8, max_tokens=64, device=torch.device("cpu")) == 0
