"""Benchmark metrics: avg@n, unbiased pass@k and bootstrap confidence intervals.

pass@k uses the unbiased estimator of Chen et al. (2021), computed from all ``n``
samples, rather than "any correct among the first k samples" (what the RePO reference
script reports): the first-k version has much higher variance and depends on sample
order. Confidence intervals are percentile bootstraps over *prompts*, since prompts,
not samples, are the independent units of a benchmark.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

DEFAULT_KS: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k = 1 - C(n-c, k) / C(n, k) for ``c`` correct out of ``n`` samples.

    Computed as ``1 - prod_{i=n-c+1}^{n} (1 - k/i)``, which avoids huge binomials.
    """
    for name, v in (("n", n), ("c", c), ("k", k)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got n={n}")
    if not 0 <= c <= n:
        raise ValueError(f"c must satisfy 0 <= c <= n, got c={c}, n={n}")
    if not 1 <= k <= n:
        raise ValueError(f"k must satisfy 1 <= k <= n, got k={k}, n={n}")
    if n - c < k:
        return 1.0  # every size-k subset contains a correct sample
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))


def avg_at_n(correct: Sequence[bool | float]) -> float:
    """Mean accuracy over the samples of one prompt (booleans or rewards in [0, 1])."""
    arr = np.asarray(correct, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"avg_at_n needs a non-empty 1-D sequence, got shape {arr.shape}")
    return float(arr.mean())


def bootstrap_ci(
    values: Sequence[float],
    num_resamples: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap ``(1 - alpha)`` CI of the mean of ``values``.

    Deterministic for a given ``seed`` so reports are reproducible. A single value gives
    a zero-width interval.
    """
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"bootstrap_ci needs a non-empty 1-D sequence, got shape {arr.shape}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if num_resamples < 1:
        raise ValueError(f"num_resamples must be >= 1, got {num_resamples}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, arr.size, size=(num_resamples, arr.size))
    means = arr[idx].mean(axis=1)
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def aggregate_benchmark(
    per_prompt_correct: Sequence[Sequence[float]],
    ks: Sequence[int] = DEFAULT_KS,
    *,
    num_resamples: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, Any]:
    """Summarise one benchmark from per-prompt sample correctness.

    Args:
        per_prompt_correct: one list per prompt of 0/1 (or bool) per sample; prompts may
            have different sample counts.
        ks: pass@k values wanted; those above the smallest per-prompt ``n`` are skipped
            (pass@k is undefined for k > n).

    Returns:
        ``{"num_prompts", "num_samples", "min_n",
        "avg@n": {"mean", "ci_low", "ci_high"},
        "pass@k": {k: {"mean", "ci_low", "ci_high"}, ...}}``.
        avg@n is the mean over prompts of each prompt's sample accuracy; pass@k is the
        mean over prompts of the unbiased per-prompt estimate. CIs resample prompts.
        Values above 0.5 count as correct for pass@k (rewards are 0/1 here).
    """
    if len(per_prompt_correct) == 0:
        raise ValueError("aggregate_benchmark needs at least one prompt")
    ns = [len(p) for p in per_prompt_correct]
    if min(ns) == 0:
        raise ValueError(f"prompt {ns.index(0)} has no samples")
    bad = [k for k in ks if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1]
    if bad:
        raise ValueError(f"ks must be positive ints, got {bad}")
    min_n = min(ns)

    def summary(per_prompt: list[float]) -> dict[str, float]:
        low, high = bootstrap_ci(per_prompt, num_resamples=num_resamples, alpha=alpha, seed=seed)
        return {"mean": float(np.mean(per_prompt)), "ci_low": low, "ci_high": high}

    avg = [avg_at_n(p) for p in per_prompt_correct]
    counts = [int(np.sum(np.asarray(p, dtype=np.float64) > 0.5)) for p in per_prompt_correct]
    pass_k: dict[int, dict[str, float]] = {}
    for k in sorted(set(int(k) for k in ks)):
        if k > min_n:
            continue
        pass_k[k] = summary([pass_at_k(n, c, k) for n, c in zip(ns, counts)])
    return {
        "num_prompts": len(per_prompt_correct),
        "num_samples": int(sum(ns)),
        "min_n": min_n,
        "avg@n": summary(avg),
        "pass@k": pass_k,
    }


__all__ = ["DEFAULT_KS", "aggregate_benchmark", "avg_at_n", "bootstrap_ci", "pass_at_k"]
