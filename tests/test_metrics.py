"""Tests for benchmarks.metrics."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from benchmarks.metrics import aggregate_benchmark, avg_at_n, bootstrap_ci, pass_at_k


@pytest.mark.parametrize(
    "n,c,k,expected",
    [
        (5, 2, 1, 0.4),
        (5, 2, 2, 1 - math.comb(3, 2) / math.comb(5, 2)),  # = 0.7
        (5, 0, 3, 0.0),
        (5, 5, 1, 1.0),
        (5, 3, 3, 1.0),  # n - c < k: every 3-subset has a correct sample
        (4, 1, 4, 1.0),
        (1, 1, 1, 1.0),
        (1, 0, 1, 0.0),
        (10, 1, 1, 0.1),
    ],
)
def test_pass_at_k_hand_values(n: int, c: int, k: int, expected: float) -> None:
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_matches_brute_force() -> None:
    # pass@k = probability that a random k-subset of the n samples contains a correct one
    for n in range(1, 8):
        for c in range(n + 1):
            samples = [1] * c + [0] * (n - c)
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(samples, k))
                brute = sum(any(s) for s in subsets) / len(subsets)
                assert pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12)


def test_pass_at_k_large_n_is_stable() -> None:
    val = pass_at_k(1024, 3, 256)
    exact = 1 - math.comb(1021, 256) / math.comb(1024, 256)
    assert val == pytest.approx(exact, rel=1e-9)
    assert 0.0 <= pass_at_k(10_000, 1, 1) <= 1.0


@pytest.mark.parametrize(
    "n,c,k,match",
    [
        (5, 6, 1, "0 <= c <= n"),
        (5, -1, 1, "0 <= c <= n"),
        (5, 2, 0, "1 <= k <= n"),
        (5, 2, 6, "1 <= k <= n"),
        (0, 0, 1, "n must be >= 1"),
    ],
)
def test_pass_at_k_validation(n: int, c: int, k: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        pass_at_k(n, c, k)


def test_pass_at_k_rejects_non_ints() -> None:
    with pytest.raises(TypeError):
        pass_at_k(5.0, 2, 1)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        pass_at_k(5, True, 1)  # type: ignore[arg-type]


def test_avg_at_n() -> None:
    assert avg_at_n([True, False, True, True]) == 0.75
    assert avg_at_n([1.0, 0.0]) == 0.5
    with pytest.raises(ValueError):
        avg_at_n([])


def test_bootstrap_ci() -> None:
    assert bootstrap_ci([0.5, 0.5, 0.5]) == (0.5, 0.5)
    assert bootstrap_ci([1.0]) == (1.0, 1.0)
    rng = np.random.default_rng(1)
    vals = rng.binomial(1, 0.3, size=500).astype(float)
    low, high = bootstrap_ci(vals, num_resamples=2000)
    assert low < vals.mean() < high
    # ~ mean +- 1.96 * sd / sqrt(n)
    half = 1.96 * vals.std() / np.sqrt(vals.size)
    assert high - low == pytest.approx(2 * half, rel=0.15)
    assert bootstrap_ci(vals, seed=3) == bootstrap_ci(vals, seed=3)  # reproducible
    lo90, hi90 = bootstrap_ci(vals, num_resamples=2000, alpha=0.1)
    assert lo90 >= low and hi90 <= high
    with pytest.raises(ValueError):
        bootstrap_ci([])
    with pytest.raises(ValueError):
        bootstrap_ci([1.0], alpha=0.0)


def test_aggregate_benchmark() -> None:
    per_prompt = [
        [1, 0, 0, 0],
        [1, 1, 1, 1],
        [0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],  # prompts may have different n
    ]
    out = aggregate_benchmark(per_prompt, ks=(1, 2, 4, 8))
    assert out["num_prompts"] == 4 and out["num_samples"] == 18 and out["min_n"] == 4
    assert out["avg@n"]["mean"] == pytest.approx((0.25 + 1 + 0 + 2 / 6) / 4)
    assert sorted(out["pass@k"]) == [1, 2, 4]  # k=8 > min n is skipped
    assert out["pass@k"][1]["mean"] == pytest.approx(out["avg@n"]["mean"])  # pass@1 == avg@n
    expected_p2 = np.mean([pass_at_k(4, 1, 2), 1.0, 0.0, pass_at_k(6, 2, 2)])
    assert out["pass@k"][2]["mean"] == pytest.approx(expected_p2)
    for stats in [out["avg@n"], *out["pass@k"].values()]:
        assert stats["ci_low"] <= stats["mean"] <= stats["ci_high"]
    # pass@k grows with k
    means = [out["pass@k"][k]["mean"] for k in (1, 2, 4)]
    assert means == sorted(means)


def test_aggregate_benchmark_validation() -> None:
    with pytest.raises(ValueError, match="at least one prompt"):
        aggregate_benchmark([])
    with pytest.raises(ValueError, match="no samples"):
        aggregate_benchmark([[1], []])
    with pytest.raises(ValueError, match="ks"):
        aggregate_benchmark([[1, 0]], ks=(0, 1))
