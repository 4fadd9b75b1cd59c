"""Synthetic arithmetic benchmark used by the offline CPU demo.

Problems are short two-operand expressions written as the user message, e.g.
``"37+48"``; the gold answer is the plain integer string (``"85"``). Any
completion whose ``\\boxed{}`` holds the answer scores 1 (``benchmarks.scoring``);
the tiny model is taught the short worked form of :func:`worked_solution`
(``7+8=15,3+4+1=8 \\boxed{85}``, at most 27 characters). There is no system prompt.

The problem space is finite and enumerated deterministically:

* ``a+b`` with ``a, b`` in 10..99 (8100 problems),
* ``a-b`` with ``a, b`` in 10..99 and ``a >= b`` (4095 problems, result >= 0),
* ``a*b`` with ``a`` in 2..9 and ``b`` in 10..99 (720 problems).

Each problem is assigned to ``train`` or ``test`` by a stable hash of its text
(about 1 in 8 goes to ``test``), so the two splits are disjoint whatever the
seed; the seed only decides the order in which problems of a split are listed,
and ``n`` truncates that list. ``n`` may exceed the default size up to the size
of the split's pool (about 11.3k train, 1.6k test problems).
"""

from __future__ import annotations

import hashlib
import random
from functools import lru_cache

BENCHMARK = "arith"
SPLITS = ("train", "test")
DEFAULT_SIZES = {"train": 4096, "test": 256}
# One problem in TEST_MODULUS (by hash of its text) belongs to the test split.
TEST_MODULUS = 8


def format_problem(a: int, op: str, b: int) -> str:
    """User message for ``a <op> b``."""
    return f"{a}{op}{b}"


def format_completion(answer: str) -> str:
    """The bare target completion for a gold answer (without the EOS token)."""
    return f"\\boxed{{{answer}}}"


def worked_solution(problem: str) -> str:
    """Short column-arithmetic chain ending in the boxed answer (no EOS token).

    Ones column first, then the tens column with the carry/borrow, so that every
    generated token depends on a few nearby ones (a tiny model learns this far
    faster than the bare answer):

    * ``37+48`` -> ``7+8=15,3+4+1=8 \\boxed{85}`` (``+carry``, always written),
    * ``93-47`` -> ``13-7=6,9-1-4=4 \\boxed{46}`` (``-borrow``, always written),
    * ``7*48``  -> ``7*8=56,7*4+5=33 \\boxed{336}`` (``+carry``, always written).
    """
    a_s, op, b_s = _split_problem(problem)
    if op == "+":
        a1, a10, b1, b10 = int(a_s[1]), int(a_s[0]), int(b_s[1]), int(b_s[0])
        s1 = a1 + b1
        c = s1 // 10
        chain = f"{a1}+{b1}={s1},{a10}+{b10}+{c}={a10 + b10 + c}"
    elif op == "-":
        a1, a10, b1, b10 = int(a_s[1]), int(a_s[0]), int(b_s[1]), int(b_s[0])
        c = 1 if a1 < b1 else 0
        top = a1 + 10 * c
        chain = f"{top}-{b1}={top - b1},{a10}-{c}-{b10}={a10 - c - b10}"
    else:
        m, b1, b10 = int(a_s), int(b_s[1]), int(b_s[0])
        p1 = m * b1
        c = p1 // 10
        chain = f"{m}*{b1}={p1},{m}*{b10}+{c}={m * b10 + c}"
    return f"{chain} {format_completion(str(_apply(int(a_s), op, int(b_s))))}"


def _split_problem(problem: str) -> tuple[str, str, str]:
    for op in "+-*":
        a, sep, b = problem.partition(op)
        if sep and a.isdigit() and b.isdigit():
            return a, op, b
    raise ValueError(f"not an arith problem: {problem!r}")


def _apply(a: int, op: str, b: int) -> int:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    raise ValueError(f"unknown operator {op!r}")


def _split_of(problem: str) -> str:
    digest = hashlib.sha256(problem.encode("utf-8")).digest()
    return "test" if int.from_bytes(digest[:8], "big") % TEST_MODULUS == 0 else "train"


OPS = "+-*"  # operations in the problem space


@lru_cache(maxsize=None)
def _pool(split: str, ops: str) -> tuple[tuple[str, str], ...]:
    """All (problem, answer) pairs of a split, in canonical (enumeration) order."""
    items: list[tuple[str, str]] = []
    if "+" in ops:
        for a in range(10, 100):
            for b in range(10, 100):
                items.append((format_problem(a, "+", b), str(a + b)))
    if "-" in ops:
        for a in range(10, 100):
            for b in range(10, a + 1):
                items.append((format_problem(a, "-", b), str(a - b)))
    if "*" in ops:
        for a in range(2, 10):
            for b in range(10, 100):
                items.append((format_problem(a, "*", b), str(a * b)))
    return tuple(it for it in items if _split_of(it[0]) == split)


def pool_size(split: str) -> int:
    """Number of distinct problems available in ``split``."""
    _check_split(split)
    return len(_pool(split, OPS))


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"arith: unknown split {split!r}; expected one of {', '.join(SPLITS)}")


def make_arith(split: str, n: int | None = None, seed: int = 0) -> list[dict]:
    """Rows ``{"id", "problem", "answer", "benchmark"}`` of the arithmetic task.

    ``split`` is ``"train"`` or ``"test"``; ``n`` defaults to 4096 (train) or
    256 (test) and may go up to :func:`pool_size`. Deterministic for a seed;
    train and test never share a problem.
    """
    _check_split(split)
    pool = list(_pool(split, OPS))
    if n is None:
        n = DEFAULT_SIZES[split]
    if n < 0:
        raise ValueError(f"arith: n must be >= 0, got {n}")
    if n > len(pool):
        raise ValueError(f"arith: split {split!r} has only {len(pool)} problems, asked for {n}")
    random.Random(f"arith-{split}-{seed}").shuffle(pool)
    return [
        {"id": f"arith-{split}-{i}", "problem": p, "answer": ans, "benchmark": BENCHMARK}
        for i, (p, ans) in enumerate(pool[:n])
    ]


def evaluate_expression(problem: str) -> int:
    """Recompute the answer of a problem string (used by tests)."""
    a, op, b = _split_problem(problem)
    return _apply(int(a), op, int(b))
