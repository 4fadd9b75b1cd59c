"""Benchmark evaluation through any rollout engine, scored by the shared math-verify path.

Per benchmark: n samples per prompt (the reference protocol: 32 for AIME24/25 and AMC23, 1 otherwise),
accuracy = avg@n, unbiased pass@k for k = 1, 2, 4, ... <= n, a bootstrap CI of the accuracy, and
the macro average over benchmarks. Prompts longer than the prompt limit are counted and reported,
never dropped silently. Sampling uses a fixed seed in a forked RNG so that evaluation neither
depends on nor disturbs the training RNG stream.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from benchmarks.datasets import load_benchmark
from harness.rollout import SamplingParams


@dataclass
class EvalSettings:
    temperature: float = 0.2
    top_p: float = 0.95
    top_k: int = 50
    max_new_tokens: int = 2048
    num_samples: int = 1
    samples_per_benchmark: dict | None = None
    max_examples: int | None = None
    max_prompt_length: int = 4096
    batch_size: int = 64
    seed: int = 1234

    def samples_for(self, benchmark: str) -> int:
        return (self.samples_per_benchmark or {}).get(benchmark, self.num_samples)


def evaluate(engine, tokenizer, benchmarks: list[str], settings: EvalSettings, scorer, encode, progress: bool = True) -> dict[str, Any]:
    """Evaluate on each benchmark. ``encode(problem) -> (ids, truncated)`` applies the chat template.

    Returns ``{"benchmarks": {name: metrics}, "macro_accuracy": float, "samples": [records]}``.
    """
    from benchmarks.metrics import bootstrap_ci, pass_at_k

    results: dict[str, Any] = {"benchmarks": {}, "samples": []}
    for name in benchmarks:
        rows = load_benchmark(name, settings.max_examples)
        n = settings.samples_for(name)
        t0 = time.perf_counter()
        kept, too_long = [], 0
        prompts = []
        for r in rows:
            ids, truncated = encode(r["problem"])
            if truncated:
                too_long += 1
                continue
            kept.append(r)
            prompts.append(ids)
        params = SamplingParams(n=n, temperature=settings.temperature, top_k=settings.top_k, top_p=settings.top_p, max_new_tokens=settings.max_new_tokens)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(settings.seed)
            outs = []
            for s in range(0, len(prompts), settings.batch_size):
                outs.extend(engine.generate(prompts[s:s + settings.batch_size], params))
        texts = [tokenizer.decode(c.token_ids, skip_special_tokens=True) for group in outs for c in group]
        golds = [r["answer"] for r in kept for _ in range(n)]
        scored = scorer.score_batch(texts, golds) if texts else []
        correct = np.array([s.reward for s in scored], dtype=np.float64).reshape(len(kept), n) if kept else np.zeros((0, n))
        per_prompt = correct.mean(axis=1) if len(kept) else np.zeros(0)
        acc = float(per_prompt.mean()) if len(kept) else float("nan")
        lo, hi = bootstrap_ci(per_prompt) if len(kept) > 1 else (acc, acc)
        metrics = {"accuracy": acc, "accuracy_ci_low": lo, "accuracy_ci_high": hi, "num_prompts": len(kept), "num_samples": n, "skipped_too_long": too_long,
                   "mean_completion_tokens": float(np.mean([len(c.token_ids) for g in outs for c in g])) if outs else 0.0, "seconds": time.perf_counter() - t0}
        k = 1
        while k <= n and len(kept):
            c = correct.sum(axis=1).astype(int)
            metrics[f"pass_at_{k}"] = float(np.mean([pass_at_k(n, int(ci), k) for ci in c]))
            k *= 2
        results["benchmarks"][name] = metrics
        for i, r in enumerate(kept):
            for j in range(n):
                s = scored[i * n + j]
                results["samples"].append({"benchmark": name, "id": r["id"], "sample": j, "prompt": r["problem"], "gold": r["answer"], "completion": texts[i * n + j], "extracted": s.extracted, "reward": s.reward, "reason": s.reason})
    accs = [m["accuracy"] for m in results["benchmarks"].values() if m["num_prompts"]]
    results["macro_accuracy"] = float(np.mean(accs)) if accs else float("nan")
    return results


def flat_metrics(results: dict[str, Any], prefix: str = "eval") -> dict[str, float]:
    """MLflow metric names: ``eval/<benchmark>/<metric>`` and ``eval/macro_accuracy``."""
    out = {f"{prefix}/macro_accuracy": results["macro_accuracy"]}
    for name, m in results["benchmarks"].items():
        for k, v in m.items():
            if isinstance(v, (int, float)):
                out[f"{prefix}/{name}/{k}"] = float(v)
    return out
