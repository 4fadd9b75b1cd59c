"""Replay-selection strategies for RePO (Replay-Enhanced Policy Optimization).

Every strategy is a small pure function with the signature::

    select(rewards: Sequence[float], k: int, rng: random.Random) -> list[int]

``rewards`` lists the entries of one prompt's replay buffer **oldest first**
(one scalar reward per entry, e.g. ``ReplayBuffer.rewards(prompt_id)``) and the
result is a list of indices into it.  Strategies never mutate their inputs and
are deterministic given ``rng``'s state (only ``random_k`` consumes ``rng``).

Order of the returned indices (part of the contract, tested):

=================  ==========================================================
``none``           ``[]``
``all``            ascending, every entry, ``k`` is ignored
``random_k``       the order ``rng.sample(range(n), min(k, n))`` returns
``recent_k``       ascending (the ``min(k, n)`` newest entries)
``highest_k``      by reward descending, ties oldest first (stable sort)
``max_variance_k`` ascending (the ``itertools.combinations`` tuple)
=================  ==========================================================

``k <= 0`` selects nothing (except for ``all``, which ignores ``k``).

Strategies are looked up by name (:func:`get_strategy`); users can add their own
with :func:`register_strategy`.
"""

from __future__ import annotations

import bisect
import operator
import random
from typing import Callable, Optional, Sequence

import numpy as np

__all__ = [
    "StrategyFn",
    "UnknownStrategyError",
    "register_strategy",
    "get_strategy",
    "available_strategies",
    "select_indices",
    "none",
    "all_entries",
    "random_k",
    "recent_k",
    "highest_k",
    "max_variance_k",
]

StrategyFn = Callable[[Sequence[float], int, random.Random], "list[int]"]

_REGISTRY: dict[str, StrategyFn] = {}


class UnknownStrategyError(KeyError, ValueError):
    """Raised by :func:`get_strategy` for an unregistered name.

    Subclasses both ``KeyError`` and ``ValueError`` so either can be caught; unlike a
    plain ``KeyError`` its ``str()`` is the readable message (not its ``repr``).
    """

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def register_strategy(name: str, fn: Optional[StrategyFn] = None, *, override: bool = False):
    """Register a strategy under ``name``.

    Use as a decorator (``@register_strategy("mine")``) or directly
    (``register_strategy("mine", fn)``).  Registering an existing name raises
    ``ValueError`` unless ``override=True``.  Returns the function unchanged.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"strategy name must be a non-empty string, got {name!r}")

    def _register(f: StrategyFn) -> StrategyFn:
        if not callable(f):
            raise TypeError(f"strategy {name!r} must be callable, got {type(f).__name__}")
        if name in _REGISTRY and not override and _REGISTRY[name] is not f:
            raise ValueError(f"replay strategy {name!r} is already registered; pass override=True to replace it")
        _REGISTRY[name] = f
        return f

    if fn is not None:
        return _register(fn)
    return _register


def available_strategies() -> list[str]:
    """Names of all registered strategies, sorted."""
    return sorted(_REGISTRY)


def get_strategy(name: str) -> StrategyFn:
    """Return the strategy registered as ``name``.

    Raises :class:`UnknownStrategyError` (a ``KeyError`` and a ``ValueError``) whose
    message lists the valid names.
    """
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise UnknownStrategyError(
            f"unknown replay strategy {name!r}; valid strategies: " + ", ".join(available_strategies())
        ) from None


def select_indices(strategy: "str | StrategyFn", rewards: Sequence[float], k: int, rng: random.Random) -> list[int]:
    """Run a strategy (by name or function) and validate its output.

    Checks that the result is a list of distinct ints in ``range(len(rewards))``;
    useful around user-registered strategies.  Returns the indices as plain ints.
    """
    fn = get_strategy(strategy) if isinstance(strategy, str) else strategy
    n = len(rewards)
    out = [operator.index(i) for i in fn(rewards, k, rng)]
    if len(set(out)) != len(out):
        raise ValueError(f"strategy returned duplicate indices: {out}")
    bad = [i for i in out if not 0 <= i < n]
    if bad:
        raise ValueError(f"strategy returned indices out of range(0, {n}): {bad}")
    return out


# ---------------------------------------------------------------------------
# helpers


def _k(k) -> int:
    return operator.index(k)


def _finite_floats(rewards: Sequence[float]) -> list[float]:
    """Rewards as a list of Python floats; rejects non-1-D input and NaN/inf."""
    arr = np.asarray(rewards, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"rewards must be 1-D, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("rewards must be finite (got NaN or inf)")
    return arr.tolist()


# ---------------------------------------------------------------------------
# built-in strategies


@register_strategy("none")
def none(rewards: Sequence[float], k: int, rng: random.Random) -> list[int]:
    """Replay nothing."""
    return []


@register_strategy("all")
def all_entries(rewards: Sequence[float], k: int, rng: random.Random) -> list[int]:
    """Replay every entry, ascending; ``k`` is ignored."""
    return list(range(len(rewards)))


@register_strategy("random_k")
def random_k(rewards: Sequence[float], k: int, rng: random.Random) -> list[int]:
    """``rng.sample(range(n), min(k, n))`` (in sample order, not sorted)."""
    n, k = len(rewards), _k(k)
    if k <= 0:
        return []
    return rng.sample(range(n), min(k, n))


@register_strategy("recent_k")
def recent_k(rewards: Sequence[float], k: int, rng: random.Random) -> list[int]:
    """The ``min(k, n)`` newest entries, ascending."""
    n, k = len(rewards), _k(k)
    if k <= 0:
        return []
    return list(range(n - min(k, n), n))


@register_strategy("highest_k")
def highest_k(rewards: Sequence[float], k: int, rng: random.Random) -> list[int]:
    """Top-``k`` by reward, descending; ties keep older-first order (stable sort)."""
    k = _k(k)
    if k <= 0:
        return []
    vals = _finite_floats(rewards)
    return sorted(range(len(vals)), key=lambda i: -vals[i])[:k]


@register_strategy("max_variance_k")
def max_variance_k(rewards: Sequence[float], k: int, rng: random.Random) -> list[int]:
    """The ``k``-subset with the largest population variance of rewards.

    Ties on variance are broken by the larger reward sum, then by the first subset in
    ``itertools.combinations(range(n), k)`` order (= the lexicographically smallest
    ascending index tuple), which is what the reference's "enumerate the combinations,
    keep the first best" does.  Returned ascending.  ``k >= n`` returns all indices,
    ``k <= 0`` returns ``[]``.

    Comparisons are **exact** on the given float values (they are converted to
    integers over a common power-of-two denominator), so e.g. ``{0.1, 0.3}`` and
    ``{0.2, 0.4}`` tie only if their binary floats really have equal variance.

    Runs in O(n log n) for the sort, then O(k) over the k + 1 candidate splits (prefix sums of the k lowest and the
    k highest values) and O(k log n) to pick indices, without enumerating subsets.  Why this is exact:

    1. With ``m`` the subset mean and ``f(S) = k * var(S) = sum x^2 - (sum x)^2 / k``,
       swapping an included ``x`` for an excluded ``y = x + d`` changes ``f`` by
       ``d * (2 (x - m) + d (1 - 1/k))``.  For ``k >= 2`` this is > 0 whenever
       ``x >= m, d > 0`` or ``x <= m, d < 0``.  So in a variance-maximising subset every
       included value is <= all excluded values or >= all of them: as a multiset the
       subset is ``v[:j] + v[n-k+j:]`` of the sorted values ``v``, for some
       ``j in 0..k``.  (For ``k = 1`` all variances are 0 and the sum tie-break picks the
       maximum, which is candidate ``j = 0``.)
    2. The candidate sum ``S(j)`` is non-increasing in j: ``S(j+1) - S(j) =
       v[j] - v[n-k+j] <= 0``.  If two candidates tie on the sum, every step between
       them is 0, i.e. ``v[j] == v[n-k+j]``, which swaps a value for an equal value: they
       are the same multiset.  Hence the best (variance, sum) multiset is unique and is
       the first ``j`` reaching the maximum variance.
    3. Every index subset with that multiset is optimal; the first in combinations
       order is the lexicographically smallest ascending tuple, obtained by taking,
       for each distinct value, its earliest occurrences (replacing any chosen index by
       an earlier one of equal value can only lower the sorted tuple component-wise).
    """
    n, k = len(rewards), _k(k)
    if k <= 0:
        return []
    vals = _finite_floats(rewards)
    if k >= n:
        return list(range(n))

    # Exact integer images: x_i = a_i / D with D a power of two (common denominator).
    ratios = [v.as_integer_ratio() for v in vals]
    den = max(d for _, d in ratios)
    a = [p * (den // d) for p, d in ratios]

    order = sorted(range(n), key=lambda i: (a[i], i))  # sorted by value, then index
    sv = [a[i] for i in order]
    # O(k) from here: the k + 1 candidates need the sums of the k lowest and the k highest values only.
    lo, lo2 = [0] * (k + 1), [0] * (k + 1)  # sums of the j lowest values (and of their squares), j = 0..k
    hi, hi2 = [0] * (k + 1), [0] * (k + 1)  # sums of the m highest values, m = 0..k
    for t in range(k):
        x, y = sv[t], sv[n - 1 - t]
        lo[t + 1], lo2[t + 1] = lo[t] + x, lo2[t] + x * x
        hi[t + 1], hi2[t + 1] = hi[t] + y, hi2[t] + y * y

    best_j, best_key = 0, None
    for j in range(k + 1):  # j smallest + (k - j) largest
        s = lo[j] + hi[k - j]
        q = lo2[j] + hi2[k - j]
        key = k * q - s * s  # = k^2 * D^2 * population variance, exact
        if best_key is None or key > best_key:  # strict: first j = largest sum
            best_j, best_key = j, key

    # Multiset = sorted positions [0, best_j) U [n-k+best_j, n).  For each value among them take as many indices
    # as it has there from the start of its block of equal values (its earliest indices; one bisect per value).
    chosen = list(range(best_j)) + list(range(n - k + best_j, n))
    out: list[int] = []
    t = 0
    while t < k:
        u = t
        while u < k and sv[chosen[u]] == sv[chosen[t]]:
            u += 1
        start = bisect.bisect_left(sv, sv[chosen[t]])
        out.extend(order[start : start + (u - t)])
        t = u
    out.sort()
    return out
