"""Evaluation driven by a run config: the settings a config implies, the completion store, and ``harness eval``.

The evaluation itself (prompts -> engine -> scores -> metrics with CIs) is :func:`benchmarks.evaluation.evaluate`,
which knows nothing of configs, models or tracking; this module connects it to them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any, Callable

from benchmarks.datasets import expand_benchmarks
from benchmarks.evaluation import EvalSettings, evaluate, flat_metrics, summary_table
from benchmarks.scoring import get_default_scorer
from harness.config import build_config
from harness.engines import create_engine, engine_options
from harness.models import (
    context_length,
    encode_prompt,
    expand_models,
    get_spec,
    instruction_for,
    load_model,
    load_tokenizer,
    resolve_path,
)
from harness.rollout import SamplingParams
from harness.tracking import Tracker


def settings_from_config(cfg, model=None, spec=None, data_dir: str | None = None) -> EvalSettings:
    """EvalSettings from a HarnessConfig; the prompt limit follows the reference where it can.

    The reference skips prompts longer than ``max_tokens`` (2,048) and the prompt must leave room for
    the whole generation in the context window, so the limit is
    ``min(max(eval.max_new_tokens, data.max_prompt_length), context - eval.max_new_tokens)``:
    2,048 for every paper model (Qwen2.5-Math's 4,096-token context gives the same), 64 for ``tiny``.
    """
    e = cfg.eval
    limit = max(e.max_new_tokens, cfg.data.max_prompt_length)
    ctx = context_length(model, spec)
    if ctx is not None:
        if ctx - e.max_new_tokens <= 0:
            raise ValueError(
                f"eval.max_new_tokens={e.max_new_tokens} leaves no room for a prompt in the model's {ctx}-token context"
            )
        limit = min(limit, ctx - e.max_new_tokens)
    return EvalSettings(
        temperature=e.temperature,
        top_p=e.top_p,
        top_k=e.top_k,
        max_new_tokens=e.max_new_tokens,
        num_samples=e.num_samples,
        samples_per_benchmark=e.samples_per_benchmark,
        max_examples=e.max_examples,
        max_prompt_length=int(limit),
        batch_size=e.batch_size,
        seed=e.seed,
        data_dir=data_dir,
    )


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
        blob = json.dumps(
            {
                "ids": list(map(int, prompt_ids)),
                "n": params.n,
                "t": params.temperature,
                "top_p": params.top_p,
                "top_k": params.top_k,
                "max_new": params.max_new_tokens,
                "seed": seed,
            }
        )
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
        files = (
            [p]
            if p.is_file()
            else sorted(
                f
                for f in p.iterdir()
                if f.is_file() and (f.suffix in (".safetensors", ".bin", ".gguf", ".pt") or f.name == "config.json")
            )
        )
        for f in files:
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name.strip("/").split("/")[-1])[:60]
    return f"{slug}-{h.hexdigest()[:12]}"


# ------------------------------------------------------------------------------------------------
# harness eval


def _eval_summary(model: str, spec, mkey: str, cfg, res: dict[str, Any], samples_file: Path) -> dict[str, Any]:
    """One line of ``results.jsonl``: the model, its settings, the metrics and where the samples are."""
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model": model,
        "model_source": spec.source,
        "model_key": mkey,
        "model_confirmed": spec.confirmed,
        "chat_template_kwargs": spec.chat_template_kwargs,
        "engine": cfg.generation.engine,
        "dtype": cfg.model.dtype,
        "benchmarks": res["benchmarks"],
        "macro_accuracy": res["macro_accuracy"],
        "macro_accuracy_ci_low": res["macro_accuracy_ci_low"],
        "macro_accuracy_ci_high": res["macro_accuracy_ci_high"],
        "settings": res["settings"],
        "data": res["data"],
        "skipped": res["skipped"],
        "samples_file": str(samples_file),
        "mlflow_run_id": None,
    }


def _log_eval_run(
    cfg, model: str, spec, names: list[str], res: dict[str, Any], samples_text: str, summary: dict
) -> str | None:
    """An MLflow run of kind ``eval``: settings and model as params, metrics at step 0, samples and the summary."""
    tracker = Tracker(
        enabled=True,
        tracking_uri=cfg.tracking.tracking_uri,
        experiment=cfg.tracking.experiment_name,
        run_name=f"eval-{model.split('/')[-1]}",
        tags={"kind": "eval", "model": model},
    )
    model_params = {
        "name": model,
        "source": spec.source,
        "confirmed": spec.confirmed,
        "chat_template_kwargs": spec.chat_template_kwargs,
        "dtype": cfg.model.dtype,
        "engine": cfg.generation.engine,
    }
    tracker.log_params({"eval": res["settings"], "model": model_params, "benchmarks": ",".join(names)})
    tracker.log_metrics(flat_metrics(res), step=0)
    tracker.log_text(samples_text, "eval/samples.jsonl")
    tracker.log_dict({**summary, "mlflow_run_id": tracker.run_id}, "eval/results.json")
    tracker.finish()
    return tracker.run_id


def _default_config(model: str):
    return build_config(get_spec(model).preset, {"model": {"name": model}})


def run_eval(
    models: list[str] | str,
    benchmarks: list[str] | str | None = None,
    config_for: Callable[[str], Any] | None = None,
    *,
    results_dir: str | os.PathLike = "eval_results",
    reuse: bool = True,
    data_dir: str | None = None,
    max_examples: int | None = None,
    progress: bool = True,
    tracking: bool = True,
    out: Callable[[str], None] | None = print,
) -> list[dict[str, Any]]:
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
        res = evaluate(
            engine,
            tok,
            names,
            settings,
            get_default_scorer(cfg.data.answer_fallback),
            lambda p: encode_prompt(
                tok,
                p,
                settings.max_prompt_length,
                spec.chat_template_kwargs,
                system_prompt=system_prompt,
                suffix=suffix,
            ),
            progress=progress,
            cache=cache,
        )
        stamp = time.strftime("%Y%m%d-%H%M%S")
        samples_file = results_dir / "samples" / f"{mkey}-{stamp}.jsonl"
        samples_file.parent.mkdir(parents=True, exist_ok=True)
        samples_text = "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in res["samples"])
        samples_file.write_text(samples_text)
        summary = _eval_summary(model, spec, mkey, cfg, res, samples_file)
        if tracking and cfg.tracking.enabled:
            summary["mlflow_run_id"] = _log_eval_run(cfg, model, spec, names, res, samples_text, summary)
        with (results_dir / "results.jsonl").open("a") as fh:
            fh.write(json.dumps(summary, ensure_ascii=False, default=str) + "\n")
        records.append(summary)
        if out:
            out(
                "\n"
                + summary_table(model, res)
                + f"\n  (MLflow run {summary['mlflow_run_id']}; samples {samples_file})"
            )
        engine.close()
        del engine, mdl
    return records
