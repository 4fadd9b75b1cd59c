"""Benchmark evaluation through any rollout engine, scored by the shared math-verify path.

Per benchmark: n samples per prompt (the reference protocol: 32 for AIME24/25 and AMC23, 1 otherwise),
accuracy = avg@n, unbiased pass@k for k = 1, 2, 4, ... <= n (``benchmarks.metrics.pass_at_k``),
bootstrap CIs over prompts, and the macro average over benchmarks (the paper's "Avg") with a joint
bootstrap CI. Prompts longer than the prompt limit are counted, listed and reported, never dropped
silently. Sampling uses a fixed seed in a forked RNG so that evaluation neither depends on nor
disturbs the training RNG stream.

:func:`evaluate` is the core (used inside training); :func:`run_eval` is ``harness eval``: it loads
each model, evaluates, logs to MLflow (metrics + a per-sample JSONL artifact with prompt, completion,
extracted answer and verdict), appends a line to a local results file and reuses stored completions
when the same prompt is evaluated again with the same model and sampling settings.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from benchmarks.datasets import REFERENCE_SAMPLES, expand_benchmarks, load_benchmark, rows_fingerprint
from harness.rollout import SamplingParams
from harness.sampling import decode_progress


@dataclass
class EvalSettings:
    temperature: float = 0.2
    top_p: float = 0.95
    top_k: int = 50
    max_new_tokens: int = 2048
    num_samples: int = 1
    samples_per_benchmark: dict | None = None  # None = the reference's (32 for aime24/aime25/amc23); {} = num_samples everywhere
    max_examples: int | None = None
    max_prompt_length: int = 2048  # prompts longer than this (in tokens, after the chat template) are skipped and counted
    batch_size: int = 64
    seed: int = 1234
    data_dir: str | None = None  # prepared benchmark files (None: $HARNESS_DATA_DIR / the cache / the hub)

    def samples_for(self, benchmark: str) -> int:
        table = REFERENCE_SAMPLES if self.samples_per_benchmark is None else self.samples_per_benchmark
        return int(table.get(benchmark, self.num_samples))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["samples_per_benchmark"] = dict(REFERENCE_SAMPLES if self.samples_per_benchmark is None else self.samples_per_benchmark)
        return d


def settings_from_config(cfg, model=None, spec=None, data_dir: str | None = None) -> EvalSettings:
    """EvalSettings from a HarnessConfig; the prompt limit follows the reference where it can.

    The reference skips prompts longer than ``max_tokens`` (2,048) and the prompt must leave room for
    the whole generation in the context window, so the limit is
    ``min(max(eval.max_new_tokens, data.max_prompt_length), context - eval.max_new_tokens)``:
    2,048 for every paper model (Qwen2.5-Math's 4,096-token context gives the same), 64 for ``tiny``.
    An ``eval.max_prompt_length`` config field, if one exists, wins.
    """
    from harness.models import context_length

    e = cfg.eval
    limit = getattr(e, "max_prompt_length", None)
    if not limit:
        limit = max(e.max_new_tokens, cfg.data.max_prompt_length)
        ctx = context_length(model, spec)
        if ctx is not None:
            if ctx - e.max_new_tokens <= 0:
                raise ValueError(f"eval.max_new_tokens={e.max_new_tokens} leaves no room for a prompt in the model's {ctx}-token context")
            limit = min(limit, ctx - e.max_new_tokens)
    return EvalSettings(temperature=e.temperature, top_p=e.top_p, top_k=e.top_k, max_new_tokens=e.max_new_tokens, num_samples=e.num_samples,
                        samples_per_benchmark=e.samples_per_benchmark, max_examples=e.max_examples, max_prompt_length=int(limit),
                        batch_size=e.batch_size, seed=e.seed, data_dir=data_dir)


# ------------------------------------------------------------------------------------------------
# stored completions


class CompletionCache:
    """Completions stored per (model, benchmark), keyed by prompt token ids + sampling settings.

    Files: ``<root>/<model_key>/<benchmark>.jsonl``, one line per prompt:
    ``{"key", "id", "completions": [{"text", "finish_reason", "num_tokens"}, ...]}``. The key hashes
    the exact prompt ids (so any change of chat template or problem text misses) and every sampling
    setting (temperature, top_p, top_k, max_new_tokens, n, seed). Scoring is always redone, so
    a verifier fix applies to stored completions too.
    """

    def __init__(self, root: str | os.PathLike, model_key: str):
        self.dir = Path(root) / model_key
        self._loaded: dict[str, dict[str, dict]] = {}

    def _file(self, benchmark: str) -> Path:
        return self.dir / f"{re.sub(r'[^A-Za-z0-9._-]+', '_', benchmark)}.jsonl"

    def _entries(self, benchmark: str) -> dict[str, dict]:
        if benchmark not in self._loaded:
            entries: dict[str, dict] = {}
            f = self._file(benchmark)
            if f.is_file():
                for line in f.read_text().splitlines():
                    try:
                        obj = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # a torn last line from an interrupted run
                    entries[obj["key"]] = obj
            self._loaded[benchmark] = entries
        return self._loaded[benchmark]

    @staticmethod
    def key(prompt_ids: list[int], params: SamplingParams, seed: int) -> str:
        blob = json.dumps({"ids": list(map(int, prompt_ids)), "n": params.n, "t": params.temperature, "top_p": params.top_p,
                           "top_k": params.top_k, "max_new": params.max_new_tokens, "seed": seed})
        return hashlib.sha256(blob.encode()).hexdigest()[:32]

    def get(self, benchmark: str, key: str) -> list[dict] | None:
        e = self._entries(benchmark).get(key)
        return e["completions"] if e else None

    def put(self, benchmark: str, items: list[tuple[str, str, list[dict]]]) -> None:
        if not items:
            return
        entries = self._entries(benchmark)
        self.dir.mkdir(parents=True, exist_ok=True)
        with self._file(benchmark).open("a") as fh:
            for key, rid, comps in items:
                obj = {"key": key, "id": rid, "completions": comps}
                entries[key] = obj
                fh.write(json.dumps(obj, ensure_ascii=False) + "\n")


def model_key(name: str, path: str | None = None) -> str:
    """Identity of a model's weights for the completion cache: a slug plus a hash of what is on disk
    (config, weight file names, sizes and mtimes) for local models, or of the name for hub ids."""
    h = hashlib.sha256(name.encode())
    p = Path(path) if path else None
    if p is not None and p.exists():
        files = [p] if p.is_file() else sorted(f for f in p.iterdir() if f.is_file() and (f.suffix in (".safetensors", ".bin", ".gguf", ".pt") or f.name == "config.json"))
        for f in files:
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name.strip("/").split("/")[-1])[:60]
    return f"{slug}-{h.hexdigest()[:12]}"


# ------------------------------------------------------------------------------------------------
# evaluation


def _macro_ci(per_prompt: list[np.ndarray], num_resamples: int = 1000, alpha: float = 0.05, seed: int = 0) -> tuple[float, float]:
    """Bootstrap CI of the macro average: resample prompts within each benchmark, average the benchmark means."""
    rng = np.random.default_rng(seed)
    means = np.zeros(num_resamples)
    for arr in per_prompt:
        idx = rng.integers(0, arr.size, size=(num_resamples, arr.size))
        means += arr[idx].mean(axis=1)
    means /= len(per_prompt)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def evaluate(engine, tokenizer, benchmarks: list[str], settings: EvalSettings, scorer, encode, progress: bool = True, *,
             cache: CompletionCache | None = None) -> dict[str, Any]:
    """Evaluate on each benchmark. ``encode(problem) -> (ids, truncated)`` applies the chat template;
    truncated prompts are skipped and counted (``skipped_too_long``), their ids listed in ``skipped``.

    Returns ``{"benchmarks": {name: metrics}, "macro_accuracy", "macro_accuracy_ci_low/high",
    "samples": [records], "skipped": {name: [ids]}, "data": {name: {...}}, "settings": {...}}``.
    With ``cache``, prompts already generated with identical prompt ids and sampling settings reuse
    their stored completions (only the rest is generated).
    """
    from tqdm.auto import tqdm

    from benchmarks.metrics import aggregate_benchmark

    names = expand_benchmarks(benchmarks)
    results: dict[str, Any] = {"benchmarks": {}, "samples": [], "skipped": {}, "data": {}, "settings": settings.to_dict()}
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
        params = SamplingParams(n=n, temperature=settings.temperature, top_k=settings.top_k, top_p=settings.top_p, max_new_tokens=settings.max_new_tokens)
        comps: list[list[dict] | None] = [None] * len(prompts)
        keys: list[str] = []
        if cache is not None:
            keys = [CompletionCache.key(p, params, settings.seed) for p in prompts]
            comps = [cache.get(name, k) for k in keys]
            comps = [c if c is not None and len(c) == n else None for c in comps]
        todo = [i for i, c in enumerate(comps) if c is None]
        todo_set = set(todo)
        reused = len(prompts) - len(todo)
        if todo:
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
                        chunk = todo[s:s + settings.batch_size]
                        with decode_progress(on_step):
                            outs = engine.generate([prompts[i] for i in chunk], params)
                        bar.update(min(s + len(chunk), len(todo)) * n - bar.n)
                        new = []
                        for i, group in zip(chunk, outs):
                            comps[i] = [{"text": tokenizer.decode(c.token_ids, skip_special_tokens=True), "finish_reason": c.finish_reason,
                                         "num_tokens": int(len(c.token_ids))} for c in group]
                            if cache is not None:
                                new.append((keys[i], kept[i]["id"], comps[i]))
                        if cache is not None:
                            cache.put(name, new)
                finally:
                    bar.close()
        texts = [c["text"] for group in comps for c in group]
        golds = [r["answer"] for r in kept for _ in range(n)]
        scored = scorer.score_batch(texts, golds) if texts else []
        correct = np.array([s.reward for s in scored], dtype=np.float64).reshape(len(kept), n) if kept else np.zeros((0, n))
        flat = [c for group in comps for c in group]
        metrics: dict[str, Any] = {"num_rows": len(rows), "num_prompts": len(kept), "num_samples": n, "skipped_too_long": len(skipped)}
        if kept:
            ks = [k for k in (2 ** i for i in range(12)) if k <= n]
            agg = aggregate_benchmark(correct.tolist(), ks=ks)
            metrics.update(accuracy=agg["avg@n"]["mean"], accuracy_ci_low=agg["avg@n"]["ci_low"], accuracy_ci_high=agg["avg@n"]["ci_high"])
            for k, v in agg["pass@k"].items():
                metrics[f"pass_at_{k}"] = v["mean"]
                if k > 1:
                    metrics[f"pass_at_{k}_ci_low"], metrics[f"pass_at_{k}_ci_high"] = v["ci_low"], v["ci_high"]
            per_prompt_all.append(correct.mean(axis=1))
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
            reused_prompts=reused,
            seconds=time.perf_counter() - t0,
        )
        results["benchmarks"][name] = metrics
        results["skipped"][name] = skipped
        results["data"][name] = {"num_rows": len(rows), "content_hash": rows_fingerprint(rows)}
        for i, r in enumerate(kept):
            prompt_text = tokenizer.decode(prompts[i], skip_special_tokens=False)
            for j in range(n):
                s, c = scored[i * n + j], comps[i][j]
                results["samples"].append({"benchmark": name, "id": r["id"], "sample": j, "problem": r["problem"], "prompt": prompt_text, "gold": r["answer"],
                                           "completion": c["text"], "extracted": s.extracted, "reward": s.reward, "correct": s.reward > 0.5, "reason": s.reason,
                                           "finish_reason": c["finish_reason"], "completion_tokens": c["num_tokens"], "reused": i not in todo_set})
    accs = [m["accuracy"] for m in results["benchmarks"].values() if m["num_prompts"]]
    results["macro_accuracy"] = float(np.mean(accs)) if accs else float("nan")
    lo, hi = _macro_ci(per_prompt_all) if per_prompt_all else (float("nan"), float("nan"))
    results["macro_accuracy_ci_low"], results["macro_accuracy_ci_high"] = lo, hi
    results["macro_num_benchmarks"] = len(accs)
    return results


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
    lines = [f"{model}: macro accuracy {100 * res['macro_accuracy']:.1f}% [{100 * res.get('macro_accuracy_ci_low', float('nan')):.1f}, "
             f"{100 * res.get('macro_accuracy_ci_high', float('nan')):.1f}] over {res.get('macro_num_benchmarks', '?')} benchmark(s)"]
    for b, m in res["benchmarks"].items():
        passk = " ".join(f"pass@{k.split('_')[-1]} {100 * v:.1f}" for k, v in m.items() if re.fullmatch(r"pass_at_\d+", k) and k != "pass_at_1")
        lines.append(f"  {b:16s} avg@{m['num_samples']:<3d} {100 * m['accuracy']:5.1f}%  [{100 * m['accuracy_ci_low']:.1f}, {100 * m['accuracy_ci_high']:.1f}]  "
                     f"prompts {m['num_prompts']}/{m['num_rows']}  skipped(too long) {m['skipped_too_long']}  no-answer {100 * m['no_answer_frac']:.0f}%  "
                     f"reused {m['reused_prompts']}  {passk}".rstrip())
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# harness eval


def _default_config(model: str):
    from harness.config import build_config
    from harness.models import get_spec

    return build_config(get_spec(model).preset, {"model": {"name": model}})


def run_eval(models: list[str] | str, benchmarks: list[str] | str | None = None, config_for: Callable[[str], Any] | None = None, *,
             results_dir: str | os.PathLike = "eval_results", reuse: bool = True, data_dir: str | None = None, max_examples: int | None = None,
             progress: bool = True, tracking: bool = True, out: Callable[[str], None] | None = print) -> list[dict[str, Any]]:
    """``harness eval``: evaluate each model on the benchmarks with the reference protocol.

    Args:
        models: names (registry, hub ids, local paths; ``all`` = the paper's five), list or comma string.
        benchmarks: benchmark names (``all`` = the paper's seven); None = each model config's ``eval.benchmarks``.
        config_for: ``model -> HarnessConfig`` (the CLI passes its layered config); default: the model's preset.
        results_dir: local results: ``results.jsonl`` (one line per model run: metrics, settings, data hashes,
            MLflow run id), ``samples/<model>-<time>.jsonl`` (per-sample records), ``completions/`` (reuse store).
        reuse: reuse stored completions for identical (model weights, prompt ids, sampling settings).
        data_dir: prepared benchmark files (``harness data prepare``); default ``$HARNESS_DATA_DIR`` / cache / hub.
        max_examples: cap per benchmark (overrides ``eval.max_examples``).
        tracking: log to MLflow (also needs ``tracking.enabled`` in the config).
    Returns one summary dict per model (what was appended to ``results.jsonl``).
    """
    from benchmarks.scoring import get_default_scorer
    from harness.models import encode_prompt, expand_models, get_spec, instruction_for, load_model, load_tokenizer, resolve_path
    from harness.engines import engine_options
    from harness.rollout import create_engine
    from harness.tracking import Tracker

    config_for = config_for or _default_config
    results_dir = Path(results_dir)
    records = []
    for model in expand_models(models):
        cfg = config_for(model)
        spec = get_spec(model)
        names = expand_benchmarks(benchmarks if benchmarks is not None else cfg.eval.benchmarks)
        tok = load_tokenizer(model, cfg.model.trust_remote_code)
        mdl = load_model(model, cfg.model.dtype, cfg.model.trust_remote_code, cfg.model.attn_implementation)
        engine = create_engine(cfg.generation.engine, model=mdl, tokenizer=tok, **engine_options(cfg))
        settings = settings_from_config(cfg, model=mdl, spec=spec, data_dir=data_dir)
        if max_examples is not None:
            settings.max_examples = max_examples
        system_prompt, suffix = instruction_for(spec, cfg.data.system_prompt, cfg.data.prompt_suffix)
        mkey = model_key(model, resolve_path(spec))
        cache = CompletionCache(results_dir / "completions", mkey) if reuse else None
        res = evaluate(engine, tok, names, settings, get_default_scorer(cfg.data.answer_fallback),
                       lambda p: encode_prompt(tok, p, settings.max_prompt_length, spec.chat_template_kwargs, system_prompt=system_prompt, suffix=suffix),
                       progress=progress, cache=cache)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        samples_file = results_dir / "samples" / f"{mkey}-{stamp}.jsonl"
        samples_file.parent.mkdir(parents=True, exist_ok=True)
        samples_text = "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in res["samples"])
        samples_file.write_text(samples_text)
        summary = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "model": model, "model_source": spec.source, "model_key": mkey,
                   "model_confirmed": spec.confirmed, "chat_template_kwargs": spec.chat_template_kwargs, "engine": cfg.generation.engine,
                   "dtype": cfg.model.dtype, "benchmarks": res["benchmarks"], "macro_accuracy": res["macro_accuracy"],
                   "macro_accuracy_ci_low": res["macro_accuracy_ci_low"], "macro_accuracy_ci_high": res["macro_accuracy_ci_high"],
                   "settings": res["settings"], "data": res["data"], "skipped": res["skipped"], "samples_file": str(samples_file), "mlflow_run_id": None}
        if tracking and cfg.tracking.enabled:
            tracker = Tracker(enabled=True, tracking_uri=cfg.tracking.tracking_uri, experiment=cfg.tracking.experiment_name,
                              run_name=f"eval-{model.split('/')[-1]}", tags={"kind": "eval", "model": model})
            tracker.log_params({"eval": res["settings"], "model": {"name": model, "source": spec.source, "confirmed": spec.confirmed,
                                "chat_template_kwargs": spec.chat_template_kwargs, "dtype": cfg.model.dtype, "engine": cfg.generation.engine},
                                "benchmarks": ",".join(names)})
            tracker.log_metrics(flat_metrics(res), step=0)
            tracker.log_text(samples_text, "eval/samples.jsonl")
            summary["mlflow_run_id"] = tracker.run_id
            tracker.log_dict({k: v for k, v in summary.items()}, "eval/results.json")
            tracker.finish()
        with (results_dir / "results.jsonl").open("a") as fh:
            fh.write(json.dumps(summary, ensure_ascii=False, default=str) + "\n")
        records.append(summary)
        if out:
            out("\n" + summary_table(model, res) + f"\n  (MLflow run {summary['mlflow_run_id']}; samples {samples_file})")
        engine.close()
        del engine, mdl
    return records
