"""Throughput of answer scoring: sequential in-process ``score()`` vs ``Scorer.score_batch``.

Run: ``python bench/bench_scoring.py [--n 2000] [--workers N] [--timeout 5]``

The completions mimic a GRPO batch: groups of 8 samples share one gold answer; most are
a few hundred characters of reasoning ending in a boxed answer (right or wrong, integers,
fractions, radicals, intervals), some are long rambles, some have no answer, and a couple
are pathological (a power tower that sympy tries to evaluate), which cost a full timeout
in both paths. Every completion is unique so the Scorer's result cache does not flatter
it. Both paths are timed in the same run on the same items.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.scoring import Scorer, score  # noqa: E402

GOLDS = [
    ("85", "86"),
    ("\\frac{1}{2}", "\\frac{1}{3}"),
    ("\\frac{3\\sqrt{2}}{4}", "\\frac{3}{4}"),
    ("[2, 5)", "(2, 5]"),
    ("-7", "7"),
    ("\\text{(B)}", "\\text{(D)}"),
    ("x^2 - 1", "x^2 + 1"),
    ("\\{1, 3\\}", "\\{1, 2\\}"),
    ("1000", "999"),
    ("2\\pi", "\\pi"),
]
# equivalent forms a model might write for the gold
EQUIVALENT = {
    "\\frac{1}{2}": ["0.5", "\\dfrac{1}{2}", "1/2"],
    "\\frac{3\\sqrt{2}}{4}": ["\\frac{3}{2\\sqrt{2}}", "0.75\\sqrt{2}"],
    "x^2 - 1": ["(x-1)(x+1)"],
    "\\{1, 3\\}": ["\\{3, 1\\}"],
    "1000": ["1,000", "1000.0"],
}
FILLER = [
    "First, we simplify the expression by expanding both sides.",
    "Let $a = 3$ and $b = 4$, then $a^2 + b^2 = 25$.",
    "We substitute back into the original equation to check.",
    "By the AM-GM inequality, $\\frac{x+y}{2} \\ge \\sqrt{xy}$.",
    "Hence the remaining case gives no new solutions.",
    "Counting the cases separately, we get $3 \\cdot 4 = 12$ arrangements.",
]
PATHOLOGICAL = "Thus the answer is \\boxed{9^{9^{9^{9^{9}}}}}"


def make_items(n: int, seed: int = 0, n_pathological: int = 2) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    comps: list[str] = []
    golds: list[str] = []
    for i in range(n):
        gold, wrong = GOLDS[(i // 8) % len(GOLDS)]
        kind = rng.random()
        steps = " ".join(rng.choice(FILLER) for _ in range(rng.randint(3, 12)))
        if kind < 0.45:
            ans = f"\\boxed{{{rng.choice([gold, *EQUIVALENT.get(gold, [])])}}}"
        elif kind < 0.80:
            ans = f"\\boxed{{{wrong}}}"
        elif kind < 0.90:
            ans = "I am not sure how to finish this."  # no answer
        else:  # long ramble, ~20-40 kB
            steps = " ".join(rng.choice(FILLER) for _ in range(rng.randint(350, 700)))
            ans = f"\\boxed{{{rng.choice([gold, wrong])}}}"
        comps.append(f"[{i}] {steps}\n\nTherefore, the final answer is {ans}.")
        golds.append(gold)
    for j in range(min(n_pathological, n)):
        pos = (j + 1) * n // (n_pathological + 1)
        comps[pos] = f"[{pos}] " + PATHOLOGICAL
    return comps, golds


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="number of completions")
    ap.add_argument("--workers", type=int, default=None, help="Scorer workers (default: cpu count)")
    ap.add_argument("--timeout", type=float, default=5.0, help="per-item time limit (s)")
    ap.add_argument("--pathological", type=int, default=2, help="number of pathological items")
    args = ap.parse_args(argv)

    comps, golds = make_items(args.n, seed=1, n_pathological=args.pathological)
    # Unseen regular items for the pathological-free parallel timing (same distribution).
    reg_comps, reg_golds = make_items(args.n, seed=2, n_pathological=0)
    # Warm-up set scored by both paths first, so neither is timed with cold caches
    # (math-verify/sympy memoise parses); the Scorer's first call also starts workers.
    warm_comps, warm_golds = make_items(min(args.n, 200), seed=3, n_pathological=0)
    chars = sum(map(len, comps))
    print(
        f"{args.n} items, {chars / 1e6:.1f} M chars, {args.pathological} pathological, "
        f"timeout {args.timeout:g}s, os.cpu_count()={os.cpu_count()}"
    )

    for c, g in zip(warm_comps, warm_golds):
        score(c, g, timeout_s=args.timeout)
    seq: list[float] = []
    seq_times: list[float] = []
    for c, g in zip(comps, golds):
        t0 = time.perf_counter()
        seq.append(score(c, g, timeout_s=args.timeout))
        seq_times.append(time.perf_counter() - t0)
    t_seq = sum(seq_times)
    regular = [i for i, c in enumerate(comps) if PATHOLOGICAL not in c]
    t_seq_reg = sum(seq_times[i] for i in regular)

    with Scorer(num_workers=args.workers, timeout_s=args.timeout, cache_size=0) as scorer:
        t0 = time.perf_counter()
        scorer.score_batch(warm_comps, warm_golds)
        t_cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        par = scorer.score_batch(comps, golds)
        t_par = time.perf_counter() - t0
        t0 = time.perf_counter()
        scorer.score_batch(reg_comps, reg_golds)
        t_par_reg = time.perf_counter() - t0
        stats = dict(scorer.stats)
        workers = scorer.num_workers

    mismatch = sum(a != b.reward for a, b in zip(seq, par))
    print(
        f"accuracy: {sum(seq) / len(seq):.3f} (sequential), {sum(r.reward for r in par) / len(par):.3f} (batch); "
        f"{mismatch} sequential/batch disagreements"
    )
    print(f"reasons (batch): {_count(r.reason for r in par)}; scorer stats: {stats}")
    print(
        f"Scorer start-up: first batch of {len(warm_comps)} took {t_cold:.2f}s "
        f"(starting {workers} workers), not counted below"
    )
    n, nr = len(comps), len(regular)
    print(f"-- all {n} items (each pathological one costs ~timeout) --")
    print(f"sequential score():  {t_seq:7.2f}s  {n / t_seq:8.1f} items/s")
    print(f"Scorer.score_batch:  {t_par:7.2f}s  {n / t_par:8.1f} items/s  ({workers} workers)")
    print(f"speed-up: {t_seq / t_par:.2f}x")
    print(f"-- regular items only ({nr} sequential, {len(reg_comps)} unseen ones in the batch) --")
    print(f"sequential score():  {t_seq_reg:7.2f}s  {nr / t_seq_reg:8.1f} items/s")
    print(f"Scorer.score_batch:  {t_par_reg:7.2f}s  {len(reg_comps) / t_par_reg:8.1f} items/s  ({workers} workers)")
    print(f"speed-up: {(len(reg_comps) / t_par_reg) / (nr / t_seq_reg):.2f}x")


def _count(reasons) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in reasons:
        out[str(r)] = out.get(str(r), 0) + 1
    return out


if __name__ == "__main__":
    main()
