"""Benchmark the RePO replay machinery (CPU only, < ~1 minute).

* ``max_variance_k``: time per call of the O(n log n) implementation vs. the
  brute force over ``itertools.combinations`` (same tie rules), measured in the
  same run, at (n=16, k=8) and (n=256, k=128) (brute force skipped there).
* ``ReplayBuffer``: bytes per stored token for a realistic fill and a tiny-model fill.

Run: ``python bench/bench_replay.py``
"""

from __future__ import annotations

import argparse
import itertools
import math
import random
import time

import numpy as np

from algorithms.replay_buffer import ReplayBuffer
from algorithms.replay_strategies import max_variance_k

BRUTE_FORCE_MAX_SUBSETS = 5_000_000


def brute_force_max_variance(rewards, k):
    """Reference: first combination with the largest (population variance, sum).

    Exact (integer images of the floats over a common power-of-two denominator)."""
    n = len(rewards)
    ratios = [float(r).as_integer_ratio() for r in rewards]
    den = max(d for _, d in ratios)
    a = [p * (den // d) for p, d in ratios]
    best, best_key = None, None
    for comb in itertools.combinations(range(n), k):
        s = q = 0
        for i in comb:
            x = a[i]
            s += x
            q += x * x
        key = (k * q - s * s, s)
        if best_key is None or key > best_key:
            best, best_key = comb, key
    return list(best)


def time_call(fn, *, min_time=0.2, max_reps=100_000):
    """Mean seconds per call, repeating until ``min_time`` has passed."""
    reps, start = 0, time.perf_counter()
    while True:
        fn()
        reps += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_time or reps >= max_reps:
            return elapsed / reps


def fmt_t(sec: float) -> str:
    if sec < 1e-3:
        return f"{sec * 1e6:.1f} us"
    if sec < 1:
        return f"{sec * 1e3:.2f} ms"
    return f"{sec:.2f} s"


def bench_max_variance(seed: int) -> None:
    print("== max_variance_k: O(n log n) exact vs brute force over combinations ==")
    rng = random.Random(seed)
    for n, k in [(16, 8), (256, 128)]:
        for label, draw in [
            ("rewards in {0,0.5,1}", lambda: rng.choice([0.0, 0.5, 1.0])),
            ("uniform float rewards", rng.random),
        ]:
            rewards = [draw() for _ in range(n)]
            fast = time_call(lambda: max_variance_k(rewards, k, rng))
            n_sub = math.comb(n, k)
            line = f"n={n:<4d} k={k:<4d} {label:<22s} fast: {fmt_t(fast):>10s}/call"
            if n_sub <= BRUTE_FORCE_MAX_SUBSETS:
                t0 = time.perf_counter()
                ref = brute_force_max_variance(rewards, k)
                brute = time.perf_counter() - t0
                got = max_variance_k(rewards, k, rng)
                assert got == ref, (got, ref)
                line += (
                    f" | brute force over C({n},{k})={n_sub:,} subsets: {fmt_t(brute)}/call"
                    f" ({brute / fast:,.0f}x slower, same answer)"
                )
            else:
                line += (
                    f" | brute force SKIPPED: C({n},{k}) = {n_sub:.3e} subsets "
                    f"({len(str(n_sub))} digits), infeasible to enumerate"
                )
            print(line)


def fill_buffer(
    n_prompts: int, n_entries: int, mean_len: int, max_cache: int, seed: int, jitter: float = 0.5
) -> tuple[ReplayBuffer, float]:
    rng = np.random.default_rng(seed)
    lo, hi = max(1, int(mean_len * (1 - jitter))), int(mean_len * (1 + jitter))
    buf = ReplayBuffer(max_cache)
    t0 = time.perf_counter()
    for p in range(n_prompts):
        lengths = rng.integers(lo, hi + 1, size=n_entries)
        total = int(lengths.sum())
        ids = rng.integers(0, 151_000, size=total, dtype=np.int32)
        lps = -rng.exponential(0.7, size=total).astype(np.float32)
        cuts = np.cumsum(lengths)[:-1]
        buf.add_many(
            f"prompt-{p:06d}", np.split(ids, cuts), np.split(lps, cuts), rng.integers(0, 3, size=n_entries) / 2, 0
        )
    return buf, time.perf_counter() - t0


def bench_buffer(seed: int) -> None:
    print("\n== ReplayBuffer bytes per stored token ==")
    print(
        "(nbytes = stored array bytes: int32 ids + float32 logprobs per token, "
        "int32 length + float64 reward + int64 version per entry)"
    )
    cases = [
        ("realistic: 1,024 prompts x 16 entries x ~300 tokens", 1024, 16, 300, 16),
        ("tiny model: 1 prompt x 16 entries x 12 tokens", 1, 16, 12, 16),
    ]
    for label, n_prompts, n_entries, mean_len, cache in cases:
        jitter = 0.5 if mean_len > 12 else 0.0
        buf, secs = fill_buffer(n_prompts, n_entries, mean_len, cache, seed, jitter)
        print(f"{label}:")
        print(
            f"   entries={buf.num_entries():,} tokens={buf.num_tokens():,} "
            f"nbytes={buf.nbytes():,} ({buf.nbytes() / 2**20:.1f} MiB), fill {fmt_t(secs)}"
        )
        print(
            f"   bytes/token = {buf.bytes_per_token():.3f} (arrays); "
            f"{buf.bytes_per_token(include_overhead=True):.3f} incl. Python object overhead"
        )
        # FIFO eviction steady state: one more round of adds on a full buffer
        if n_prompts > 1:
            rng = np.random.default_rng(seed + 1)
            t0 = time.perf_counter()
            for p in range(n_prompts):
                ln = int(rng.integers(150, 451))
                buf.add(
                    f"prompt-{p:06d}",
                    rng.integers(0, 151_000, size=ln, dtype=np.int32),
                    np.zeros(ln, np.float32),
                    1.0,
                    1,
                )
            dt = (time.perf_counter() - t0) / n_prompts
            print(f"   add() with eviction on a full 16-entry prompt: {fmt_t(dt)}/call")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    t0 = time.perf_counter()
    bench_max_variance(args.seed)
    bench_buffer(args.seed)
    print(f"\ntotal bench time {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
