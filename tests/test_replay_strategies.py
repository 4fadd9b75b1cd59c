import itertools
import math
import random
import zlib
from fractions import Fraction

import numpy as np
import pytest

import algorithms
from algorithms import replay_strategies as rs
from algorithms.replay_strategies import (
    UnknownStrategyError,
    available_strategies,
    get_strategy,
    register_strategy,
    select_indices,
)

BUILTINS = ["all", "highest_k", "max_variance_k", "none", "random_k", "recent_k"]


# --------------------------------------------------------------------------- references


def brute_max_variance(rewards, k):
    """Enumerate itertools.combinations; keep the first subset with the largest
    (population variance, sum), compared exactly with Fractions."""
    n = len(rewards)
    if k <= 0:
        return []
    if k >= n:
        return list(range(n))
    fr = [Fraction(float(r)) for r in rewards]
    # common denominator -> integers, so the enumeration is fast yet exact
    den = math.lcm(*(f.denominator for f in fr))
    a = [int(f * den) for f in fr]
    best, best_key = None, None
    for comb in itertools.combinations(range(n), k):
        s = sum(a[i] for i in comb)
        q = sum(a[i] * a[i] for i in comb)
        key = (k * q - s * s, s)  # k^2 den^2 var, then sum
        if best_key is None or key > best_key:
            best, best_key = comb, key
    return list(best)


def exact_pvariance(vals):
    fr = [Fraction(float(v)) for v in vals]
    m = sum(fr) / len(fr)
    return sum((x - m) ** 2 for x in fr) / len(fr)


def ref_highest(rewards, k):
    n = len(rewards)
    return sorted(range(n), key=lambda i: -rewards[i])[:k] if k > 0 else []


def ref_recent(rewards, k):
    n = len(rewards)
    return list(range(n))[-min(k, n) :] if k > 0 and n > 0 else []


# --------------------------------------------------------------------------- registry


def test_builtins_registered():
    assert set(BUILTINS) <= set(available_strategies())
    assert available_strategies() == sorted(available_strategies())


def test_package_exports():
    assert algorithms.get_strategy is get_strategy
    assert algorithms.register_strategy is register_strategy
    assert algorithms.available_strategies is available_strategies


def test_unknown_strategy_error_lists_valid_names():
    with pytest.raises(KeyError) as ei:
        get_strategy("max_varianse_k")
    msg = str(ei.value)
    assert "max_varianse_k" in msg
    for name in BUILTINS:
        assert name in msg
    with pytest.raises(ValueError):
        get_strategy("nope")
    assert isinstance(ei.value, UnknownStrategyError)
    with pytest.raises(KeyError):
        get_strategy(None)  # unhashable/odd names give the same clean error
    with pytest.raises(KeyError):
        get_strategy(["x"])


def test_custom_registration_and_duplicates():
    name = "test_lowest_k_custom"
    try:

        @register_strategy(name)
        def lowest_k(rewards, k, rng):
            return sorted(range(len(rewards)), key=lambda i: rewards[i])[:k]

        assert name in available_strategies()
        assert get_strategy(name) is lowest_k
        assert get_strategy(name)([3, 1, 2], 2, random.Random(0)) == [1, 2]
        assert select_indices(name, [3, 1, 2], 2, random.Random(0)) == [1, 2]

        with pytest.raises(ValueError, match="already registered"):
            register_strategy(name)(lambda r, k, rng: [])
        with pytest.raises(ValueError, match="already registered"):
            register_strategy("max_variance_k", lambda r, k, rng: [])
        assert get_strategy("max_variance_k") is rs.max_variance_k

        def replacement(rewards, k, rng):
            return []

        register_strategy(name, override=True)(replacement)
        assert get_strategy(name) is replacement
        register_strategy(name, replacement)  # re-registering the same function is a no-op
    finally:
        rs._REGISTRY.pop(name, None)
    assert name not in available_strategies()


def test_register_rejects_bad_input():
    with pytest.raises(ValueError):
        register_strategy("")
    with pytest.raises(TypeError):
        register_strategy("test_not_callable", 42)
    assert "test_not_callable" not in available_strategies()


def test_select_indices_validates_custom_output():
    with pytest.raises(ValueError, match="duplicate"):
        select_indices(lambda r, k, rng: [0, 0], [1, 2, 3], 2, random.Random(0))
    with pytest.raises(ValueError, match="out of range"):
        select_indices(lambda r, k, rng: [3], [1, 2, 3], 1, random.Random(0))
    assert select_indices("max_variance_k", [0, 1, 1, 0], 2, random.Random(0)) == [0, 1]


# --------------------------------------------------------------------------- simple strategies


def test_none_and_all():
    rng = random.Random(0)
    for n in range(0, 6):
        r = [0.0] * n
        for k in range(-1, 8):
            assert get_strategy("none")(r, k, rng) == []
            assert get_strategy("all")(r, k, rng) == list(range(n))


@pytest.mark.parametrize("seed", range(5))
def test_random_k_matches_random_sample(seed):
    for n in range(0, 13):
        for k in range(-1, n + 3):
            r = [0.5] * n
            a, b = random.Random(seed * 1000 + n), random.Random(seed * 1000 + n)
            got = get_strategy("random_k")(r, k, a)
            exp = b.sample(range(n), min(k, n)) if k > 0 else []
            assert got == exp
            assert a.getstate() == b.getstate()
            assert len(set(got)) == len(got)


def test_random_k_reproducible_and_not_mutating():
    r = [0.1, 0.9, 0.5, 0.5, 0.2]
    snap = list(r)
    x = get_strategy("random_k")(r, 3, random.Random(7))
    y = get_strategy("random_k")(r, 3, random.Random(7))
    assert x == y and r == snap


def test_recent_k():
    rng = random.Random(0)
    for n in range(0, 13):
        for k in range(-1, n + 3):
            r = list(range(n))
            assert get_strategy("recent_k")(r, k, rng) == ref_recent(r, k)
    assert get_strategy("recent_k")([0, 1, 2, 3, 4], 2, rng) == [3, 4]


def test_highest_k_against_reference():
    rng = random.Random(123)
    pools = [[0.0, 1.0], [0.0, 0.5, 1.0], None]
    for n in range(0, 13):
        for pool in pools:
            for _ in range(5):
                r = [rng.choice(pool) if pool else rng.uniform(-1, 1) for _ in range(n)]
                for k in range(-1, n + 3):
                    assert get_strategy("highest_k")(r, k, rng) == ref_highest(r, k)


def test_highest_k_ties_keep_older_first():
    r = [1.0, 0.0, 1.0, 0.5, 1.0]
    assert get_strategy("highest_k")(r, 2, random.Random(0)) == [0, 2]
    assert get_strategy("highest_k")(r, 4, random.Random(0)) == [0, 2, 4, 3]
    assert get_strategy("highest_k")(np.array(r), 4, random.Random(0)) == [0, 2, 4, 3]


def test_reward_validation():
    for name in ("highest_k", "max_variance_k"):
        with pytest.raises(ValueError, match="finite"):
            get_strategy(name)([0.0, float("nan"), 1.0], 2, random.Random(0))
        with pytest.raises(ValueError, match="1-D"):
            get_strategy(name)([[0.0, 1.0]], 1, random.Random(0))


# --------------------------------------------------------------------------- max_variance_k


def _pools():
    return {
        "binary": lambda rng: rng.choice([0.0, 1.0]),
        "ternary": lambda rng: rng.choice([0.0, 0.5, 1.0]),
        "quarters_signed": lambda rng: rng.choice([-1.0, -0.25, 0.0, 0.25, 0.5, 1.0]),
        "decimal_tenths": lambda rng: rng.randint(0, 9) / 10,  # non-dyadic near-ties
        "ints": lambda rng: rng.randint(-3, 3),
        "floats": lambda rng: rng.random(),
    }


@pytest.mark.parametrize("pool", list(_pools()))
def test_max_variance_matches_brute_force_all_n_k(pool):
    draw = _pools()[pool]
    rng = random.Random(zlib.crc32(pool.encode()))
    trials = 25 if pool != "floats" else 10
    mv = get_strategy("max_variance_k")
    for n in range(0, 13):
        for _ in range(trials if n > 0 else 1):
            r = [draw(rng) for _ in range(n)]
            for k in range(-1, n + 2):
                got = mv(r, k, random.Random(0))
                exp = brute_max_variance(r, k)
                assert got == exp, (r, k, got, exp)


def test_max_variance_hand_examples():
    mv = get_strategy("max_variance_k")
    rng = random.Random(0)
    # first best combination: the earliest 0 and the earliest 1
    assert mv([1, 1, 0, 0, 1, 0], 2, rng) == [0, 2]
    # k=1: every variance is 0, the sum tie-break picks the (earliest) maximum
    assert mv([0.2, 0.9, 0.1, 0.9], 1, rng) == [1]
    # all equal: first k indices
    assert mv([0.5] * 6, 3, rng) == [0, 1, 2]
    # k=3 from {0,0,1,1}: {0,1,1} (sum 2) beats {0,0,1} (same variance, sum 1)
    assert mv([0, 0, 1, 1], 3, rng) == [0, 2, 3]
    assert mv([1, 1, 0, 0], 3, rng) == [0, 1, 2]
    # tie value across the prefix/suffix boundary
    assert mv([0.5, 0.0, 0.5, 1.0, 0.5], 3, rng) == brute_max_variance([0.5, 0.0, 0.5, 1.0, 0.5], 3)
    assert mv([0.0, 1.0, 0.0, 1.0], 0, rng) == []
    assert mv([0.0, 1.0], 5, rng) == [0, 1]
    assert mv([], 3, rng) == []


def test_max_variance_accepts_numpy_and_float32():
    r = np.array([0.1, 0.7, 0.3, 0.9, 0.2, 0.7], dtype=np.float32)
    got = get_strategy("max_variance_k")(r, 3, random.Random(0))
    assert got == brute_max_variance([float(x) for x in r], 3)


def test_max_variance_large_n_against_candidate_enumeration():
    """For n beyond brute force: exact Fraction check of all k+1 prefix/suffix
    candidates, plus random subsets never beating the answer."""
    rng = random.Random(5)
    mv = get_strategy("max_variance_k")
    for n, pool in [(64, [0.0, 0.5, 1.0]), (100, None), (256, [0.0, 1.0]), (256, None)]:
        r = [rng.choice(pool) if pool else rng.random() for _ in range(n)]
        for k in (2, 7, n // 2, n - 1) if n < 256 else (3, n // 2):
            got = mv(r, k, rng)
            assert got == sorted(got) and len(set(got)) == k and len(got) == k
            v = exact_pvariance([r[i] for i in got])
            s = sorted(r)
            best = max(exact_pvariance(s[:j] + s[n - k + j :]) for j in range(k + 1))
            assert v == best
            for _ in range(20):
                sub = rng.sample(range(n), k)
                assert exact_pvariance([r[i] for i in sub]) <= v


def test_max_variance_is_fast():
    import time

    rng = random.Random(0)
    r = [rng.random() for _ in range(4096)]
    t = time.perf_counter()
    get_strategy("max_variance_k")(r, 2048, rng)
    assert time.perf_counter() - t < 2.0  # O(n log n); C(4096, 2048) is astronomically large
