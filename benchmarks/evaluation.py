"""Benchmark evaluation through any rollout engine, scored by the shared math-verify path.

Per benchmark: n samples per prompt (the reference protocol: 32 for AIME24/25 and AMC23, 1 otherwise),
accuracy = avg@n, unbiased pass@k for k = 1, 2, 4, ... <= n (``benchmarks.metrics.pass_at_k``),
bootstrap CIs over prompts, and the macro average over benchmarks (the paper's "Avg") with a joint
bootstrap CI. Prompts longer than the prompt limit are counted, listed and reported, never dropped
silently. Sampling uses a fixed seed in a forked RNG so that evaluation neither depends on nor
disturbs the training RNG stream.

:func:`evaluate` takes an engine, a tokenizer and a scorer and knows nothing of configs or tracking: the trainer
and ``harness eval`` (:mod:`harness.evaluation`, which also stores completions for reuse) call it.
"""

from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from benchmarks.datasets import (
    REFERENCE_SAMPLES,
    expand_benchmarks,
    load_benchmark,
    rows_fingerprint,
)
from benchmarks.metrics import aggregate_benchmark
from harness.rollout import SamplingParams, decode_progress


class CompletionStore(Protocol):
    """Stored completions, reused when the same prompt ids are evaluated again with the same sampling settings
    (``harness.evaluation.CompletionCache``)."""

    def key(self, prompt_ids: list[int], params: SamplingParams, seed: int) -> str: ...
    def get(self, benchmark: str, key: str) -> list[dict] | None: ...
    def put(self, benchmark: str, items: list[tuple[str, str, list[dict]]]) -> None: ...


@dataclass
class EvalSettings:
    temperature: float = 0.2
    top_p: float = 0.95
    top_k: int = 50
    max_new_tokens: int = 2048
    num_samples: int = 1
    samples_per_benchmark: dict | None = (
        None  # None = the reference's (32 for aime24/aime25/amc23); {} = num_samples everywhere
    )
    max_examples: int | None = None
    max_prompt_length: int = (
        2048  # prompts longer than this (in tokens, after the chat template) are skipped and counted
    )
    batch_size: int = 64
    seed: int = 1234
    data_dir: str | None = None  # prepared benchmark files (None: $HARNESS_DATA_DIR / the cache / the hub)

    def samples_for(self, benchmark: str) -> int:
        table = REFERENCE_SAMPLES if self.samples_per_benchmark is None else self.samples_per_benchmark
        return int(table.get(benchmark, self.num_samples))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["samples_per_benchmark"] = dict(
            REFERENCE_SAMPLES if self.samples_per_benchmark is None else self.samples_per_benchmark
        )
        return d


# ------------------------------------------------------------------------------------------------
# evaluation


def _macro_ci(
    per_prompt: list[np.ndarray], num_resamples: int = 1000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float]:
    """Bootstrap CI of the macro average: resample prompts within each benchmark, average the benchmark means."""
    rng = np.random.default_rng(seed)
    means = np.zeros(num_resamples)
    for arr in per_prompt:
        idx = rng.integers(0, arr.size, size=(num_resamples, arr.size))
        means += arr[idx].mean(axis=1)
    means /= len(per_prompt)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def evaluate(
    engine,
    tokenizer,
    benchmarks: list[str],
    settings: EvalSettings,
    scorer,
    encode,
    progress: bool = True,
    *,
    cache: CompletionStore | None = None,
) -> dict[str, Any]:
    """Evaluate on each benchmark. ``encode(problem) -> (ids, truncated)`` applies the chat template;
    truncated prompts are skipped and counted (``skipped_too_long``), their ids listed in ``skipped``.

    Returns ``{"benchmarks": {name: metrics}, "macro_accuracy", "macro_accuracy_ci_low/high",
    "samples": [records], "skipped": {name: [ids]}, "data": {name: {...}}, "settings": {...}}``.
    With ``cache``, prompts already generated with identical prompt ids and sampling settings reuse
    their stored completions (only the rest is generated).
    """
    names = expand_benchmarks(benchmarks)
    results: dict[str, Any] = {
        "benchmarks": {},
        "samples": [],
        "skipped": {},
        "data": {},
        "settings": settings.to_dict(),
    }
    per_prompt_all: list[np.ndarray] = []
    for name in names:
        rows = load_benchmark(name, settings.max_examples, data_dir=settings.data_dir)
        n = settings.samples_for(name)
        t0 = time.perf_counter()
        kept, prompts, skipped = [], [], []
        for r in rows:
            ids, truncated = encode(r["problem"])
            if truncated:
                skipped.append(r["id"])
                continue
            kept.append(r)
            prompts.append(ids)
        params = SamplingParams(
            n=n,
            temperature=settings.temperature,
            top_k=settings.top_k,
            top_p=settings.top_p,
            max_new_tokens=settings.max_new_tokens,
        )
        comps, generated = _completions(engine, tokenizer, name, kept, prompts, params, settings, cache, progress)
        texts = [c["text"] for group in comps for c in group]
        golds = [r["answer"] for r in kept for _ in range(n)]
        scored = scorer.score_batch(texts, golds) if texts else []
        correct = (
            np.array([s.reward for s in scored], dtype=np.float64).reshape(len(kept), n) if kept else np.zeros((0, n))
        )
        metrics = _benchmark_metrics(correct, scored, comps, num_rows=len(rows), skipped=len(skipped))
        metrics.update(reused_prompts=len(prompts) - len(generated), seconds=time.perf_counter() - t0)
        if kept:
            per_prompt_all.append(correct.mean(axis=1))
        results["benchmarks"][name] = metrics
        results["skipped"][name] = skipped
        results["data"][name] = {"num_rows": len(rows), "content_hash": rows_fingerprint(rows)}
        for i, r in enumerate(kept):
            prompt_text = tokenizer.decode(prompts[i], skip_special_tokens=False)
            for j in range(n):
                s, c = scored[i * n + j], comps[i][j]
                results["samples"].append(
                    {
                        "benchmark": name,
                        "id": r["id"],
                        "sample": j,
                        "problem": r["problem"],
                        "prompt": prompt_text,
                        "gold": r["answer"],
                        "completion": c["text"],
                        "extracted": s.extracted,
                        "reward": s.reward,
                        "correct": s.reward > 0.5,
                        "reason": s.reason,
                        "finish_reason": c["finish_reason"],
                        "completion_tokens": c["num_tokens"],
                        "reused": i not in generated,
                    }
                )
    accs = [m["accuracy"] for m in results["benchmarks"].values() if m["num_prompts"]]
    results["macro_accuracy"] = float(np.mean(accs)) if accs else float("nan")
    lo, hi = _macro_ci(per_prompt_all) if per_prompt_all else (float("nan"), float("nan"))
    results["macro_accuracy_ci_low"], results["macro_accuracy_ci_high"] = lo, hi
    results["macro_num_benchmarks"] = len(accs)
    return results


def _completions(
    engine,
    tokenizer,
    name: str,
    kept: list[dict],
    prompts: list[list[int]],
    params: SamplingParams,
    settings: EvalSettings,
    cache: CompletionStore | None,
    progress: bool,
) -> tuple[list[list[dict]], set[int]]:
    """The n completions of every prompt (``{"text", "finish_reason", "num_tokens"}``): stored ones from ``cache`` where it
    has them, the rest generated in batches (and stored); returns them and the indices of the prompts generated."""
    n = params.n
    comps: list[list[dict] | None] = [None] * len(prompts)
    keys: list[str] = []
    if cache is not None:
        keys = [cache.key(p, params, settings.seed) for p in prompts]
        comps = [cache.get(name, k) for k in keys]
        comps = [c if c is not None and len(c) == n else None for c in comps]
    todo = [i for i, c in enumerate(comps) if c is None]
    if not todo:
        return comps, set()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        # Counted in completions, advanced as each one ends where the engine decodes in this process (hf), else per batch:
        # a batch of 64 prompts x 2,048 tokens takes minutes on a CPU.
        bar = tqdm(total=len(todo) * n, desc=f"eval {name}", unit="completion", disable=not progress, leave=False)
        tokens_done = [0]

        def on_step(new_tokens: int, finished: int) -> None:
            tokens_done[0] += new_tokens
            if finished:
                bar.update(finished)
            bar.set_postfix(tokens=tokens_done[0], refresh=False)

        try:
            for s in range(0, len(todo), settings.batch_size):
                chunk = todo[s : s + settings.batch_size]
                with decode_progress(on_step):
                    outs = engine.generate([prompts[i] for i in chunk], params)
                bar.update(min(s + len(chunk), len(todo)) * n - bar.n)
                new = []
                for i, group in zip(chunk, outs):
                    comps[i] = [
                        {
                            "text": tokenizer.decode(c.token_ids, skip_special_tokens=True),
                            "finish_reason": c.finish_reason,
                            "num_tokens": int(len(c.token_ids)),
                        }
                        for c in group
                    ]
                    if cache is not None:
                        new.append((keys[i], kept[i]["id"], comps[i]))
                if cache is not None:
                    cache.put(name, new)
        finally:
            bar.close()
    return comps, set(todo)


def _benchmark_metrics(
    correct: np.ndarray, scored: list, comps: list[list[dict]], *, num_rows: int, skipped: int
) -> dict[str, Any]:
    """A benchmark's metrics from its [prompts, n] correctness: avg@n and pass@k with CIs, and what went wrong how often."""
    num_prompts, n = correct.shape
    flat = [c for group in comps for c in group]
    metrics: dict[str, Any] = {
        "num_rows": num_rows,
        "num_prompts": num_prompts,
        "num_samples": n,
        "skipped_too_long": skipped,
    }
    if num_prompts:
        ks = [k for k in (2**i for i in range(12)) if k <= n]
        agg = aggregate_benchmark(correct.tolist(), ks=ks)
        metrics.update(
            accuracy=agg["avg@n"]["mean"],
            accuracy_ci_low=agg["avg@n"]["ci_low"],
            accuracy_ci_high=agg["avg@n"]["ci_high"],
        )
        for k, v in agg["pass@k"].items():
            metrics[f"pass_at_{k}"] = v["mean"]
            if k > 1:
                metrics[f"pass_at_{k}_ci_low"], metrics[f"pass_at_{k}_ci_high"] = v["ci_low"], v["ci_high"]
    else:
        metrics.update(accuracy=float("nan"), accuracy_ci_low=float("nan"), accuracy_ci_high=float("nan"))
    reasons = [s.reason for s in scored]
    metrics.update(
        truncated_completions_frac=float(np.mean([c["finish_reason"] == "length" for c in flat])) if flat else 0.0,
        no_answer_frac=float(np.mean([r == "no_answer" for r in reasons])) if reasons else 0.0,
        gold_unparseable=int(sum(r == "gold_unparseable" for r in reasons)),
        scoring_timeouts=int(sum(r == "timeout" for r in reasons)),
        scoring_errors=int(sum(bool(r) and r.startswith("error") for r in reasons)),
        mean_completion_tokens=float(np.mean([c["num_tokens"] for c in flat])) if flat else 0.0,
    )
    return metrics


def metric_label(benchmark: str) -> str:
    """A benchmark's name as it appears in metric names: registry names as they are; a file path (``/data/x.jsonl``)
    by its file stem, since MLflow rejects names such as ``eval//data/x.jsonl/num_rows``."""
    if "/" in benchmark or "\\" in benchmark or benchmark.endswith((".jsonl", ".json", ".parquet")):
        benchmark = Path(benchmark).stem or benchmark
    return re.sub(r"[^A-Za-z0-9_.\- ]+", "_", benchmark) or "benchmark"


def flat_metrics(results: dict[str, Any], prefix: str = "eval") -> dict[str, float]:
    """MLflow metric names: ``eval/<benchmark>/<metric>`` and ``eval/macro_accuracy`` (+ ``_ci_low/high``);
    benchmarks named by a path appear by their file stem (:func:`metric_label`)."""
    out = {f"{prefix}/macro_accuracy": results["macro_accuracy"]}
    for k in ("macro_accuracy_ci_low", "macro_accuracy_ci_high", "macro_num_benchmarks"):
        if k in results:
            out[f"{prefix}/{k}"] = float(results[k])
    for name, m in results["benchmarks"].items():
        for k, v in m.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out[f"{prefix}/{metric_label(name)}/{k}"] = float(v)
    return out


def summary_table(model: str, res: dict[str, Any]) -> str:
    lines = [
        f"{model}: macro accuracy {100 * res['macro_accuracy']:.1f}% [{100 * res.get('macro_accuracy_ci_low', float('nan')):.1f}, "
        f"{100 * res.get('macro_accuracy_ci_high', float('nan')):.1f}] over {res.get('macro_num_benchmarks', '?')} benchmark(s)"
    ]
    for b, m in res["benchmarks"].items():
        passk = " ".join(
            f"pass@{k.split('_')[-1]} {100 * v:.1f}"
            for k, v in m.items()
            if re.fullmatch(r"pass_at_\d+", k) and k != "pass_at_1"
        )
        lines.append(
            f"  {b:16s} avg@{m['num_samples']:<3d} {100 * m['accuracy']:5.1f}%  [{100 * m['accuracy_ci_low']:.1f}, {100 * m['accuracy_ci_high']:.1f}]  "
            f"prompts {m['num_prompts']}/{m['num_rows']}  skipped(too long) {m['skipped_too_long']}  no-answer {100 * m['no_answer_frac']:.0f}%  "
            f"reused {m['reused_prompts']}  {passk}".rstrip()
        )
    return "\n".join(lines)
