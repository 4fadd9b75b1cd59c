"""Peak memory of one training step: the full-logits path vs chunked log-probs (CPU, a few minutes).

Run: ``python bench/bench_memory.py [--rows 16] [--length 1024] [--vocabs 151936,49152] [--chunk 512] [--threads 1]``

Cases, all in the same run: for each vocabulary, a small random model with that real vocabulary size
(V=151,936: Qwen2 architecture, as Qwen2.5; V=49,152: Llama architecture, as SmolLM2; 2 layers, hidden 64,
tied embeddings, float32), ``--rows`` rows of a 16-token prompt and a ``--length``-token completion
(every row full length, so no padding flatters either path), temperature 0.7, trained through
``harness.logprobs.full_logprobs`` (``train.logprob_chunk_size=0``, the old path) and
``harness.logprobs.chunked_logprobs`` (``--chunk`` tokens per chunk, default the trainer's 512) - the functions the trainer calls.

What is measured, and how: every case runs in a fresh subprocess (``--child``). It builds the model, creates
AdamW and initialises its state (one step on zero gradients, so the measured step carries the steady-state
optimizer memory), resets the kernel's resident-set high-water mark (``/proc/self/clear_refs``), then runs
one training step: forward, the selected-token log-probs, a GRPO clipped loss (``algorithms.grpo``),
backward, AdamW step. It reports ``VmHWM`` from ``/proc/self/status``: the peak of the memory the process
really held - torch's tensors, what the allocator kept, Python and the libraries - not a sum of tensor
sizes. ``step`` is that peak minus the resident size just before the step (the step's own cost). The ratio
uses the whole-process peaks, the conservative choice (the part both paths share pushes it towards 1).

Memory guard: the full path needs ~2.5 float32 ``[rows, length, V]`` blocks (~25 GB at 16 x 1,024 x 151,936).
Before a vocabulary's cases, that estimate (``harness.memory.estimate_peak_memory``) is checked against
``MemAvailable``; if it does not fit in 70% of it, that vocabulary's rows are halved (for both paths) until
it does, and the table shows the rows actually run. Fewer rows can only raise chunked/full (the chunked
peak hardly depends on rows, the full one grows linearly with them), so a reduced run's ratio is an upper
bound for the requested size. ``--no-guard`` turns the guard off.

The last line reads ``memory ratio chunked/full: X.XX``: the highest (worst) ratio over the vocabularies.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.logprobs import DEFAULT_CHUNK_SIZE  # noqa: E402  (imports torch only)
from harness.memory import peak_rss_bytes, reset_peak_rss, rss_bytes  # noqa: E402

PROMPT = 16
ARCH = {151936: "qwen2", 49152: "llama"}


def _status_kb(key: str) -> int:
    value = {"VmRSS": rss_bytes, "VmHWM": peak_rss_bytes}[key]()
    if value is None:
        raise RuntimeError("bench_memory.py reads /proc/self/status: Linux only")
    return value // 1024


def model_config(
    vocab: int,
    hidden: int = 64,
    layers: int = 2,
    intermediate: int = 256,
    heads: int = 4,
    kv_heads: int = 2,
    arch: str | None = None,
):
    from transformers import AutoConfig

    return AutoConfig.for_model(
        arch or ARCH.get(vocab, "qwen2"),
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
    )


def child(spec: dict) -> dict:
    """One case in this (fresh) process; returns peak/pre-step resident sizes in bytes and the step time."""
    import torch
    from transformers import AutoModelForCausalLM

    from algorithms.grpo import aggregate, clipped_token_loss
    from harness.logprobs import chunked_logprobs, full_logprobs

    torch.set_num_threads(spec.get("threads", 1))
    torch.manual_seed(0)
    base = _status_kb("VmRSS") * 1024
    cfg = model_config(
        spec["vocab"],
        spec.get("hidden", 64),
        spec.get("layers", 2),
        spec.get("intermediate", 256),
        arch=spec.get("arch"),
    )
    model = AutoModelForCausalLM.from_config(
        cfg, dtype=getattr(torch, spec.get("dtype", "float32")), attn_implementation="sdpa"
    )
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()  # allocates AdamW's moments: the measured step is a steady-state step
    opt.zero_grad(set_to_none=True)
    R, P, C = spec["rows"], spec.get("prompt", PROMPT), spec["length"]
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, spec["vocab"], (R, P + C), generator=g)
    mask = torch.ones(R, P + C, dtype=torch.long)
    pos = torch.arange(P + C).expand(R, -1)
    cmask = torch.ones(R, C)
    adv = torch.randn(R, generator=g)
    temperature = 0.7
    pre = _status_kb("VmRSS") * 1024
    if not reset_peak_rss():  # VmHWM back to the current RSS
        raise RuntimeError("bench_memory.py needs /proc/self/clear_refs (Linux) to measure one step's peak")
    t0 = time.perf_counter()
    if spec["chunk"] > 0:
        lp = chunked_logprobs(model, ids, mask, pos, ids[:, P:], cmask, temperature, spec["chunk"])
    else:
        lp = full_logprobs(model, ids, mask, pos, ids[:, P:], temperature)
    token_loss = clipped_token_loss(lp, lp.detach(), adv, 0.2, 0.2)[0]
    loss = aggregate(token_loss, cmask, torch.full((R,), 1.0 / R), torch.zeros(R, dtype=torch.bool))
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    secs = time.perf_counter() - t0
    return {"peak": _status_kb("VmHWM") * 1024, "pre_step": pre, "base": base, "seconds": secs, "loss": float(loss)}


def run_case(spec: dict) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(spec.get("threads", 1)), "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)], env=env, capture_output=True, text=True, cwd=str(ROOT)
    )
    if proc.returncode != 0:
        raise RuntimeError(f"case {spec} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def full_path_fits(vocab: int, rows: int, length: int, available: float) -> tuple[bool, float]:
    from harness.memory import arch_from_config, estimate_peak_memory

    arch = arch_from_config(model_config(vocab).to_dict())
    need = estimate_peak_memory(
        arch, tokens=rows * (PROMPT + length), completion_tokens=rows * (length + 1), chunk_size=0
    )["total"]
    return need <= 0.7 * available, need


def mem_available() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024.0
    return float("inf")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--length", type=int, default=1024, help="completion tokens per row (the prompt adds 16)")
    ap.add_argument("--vocabs", default="151936,49152")
    ap.add_argument(
        "--chunk",
        type=int,
        default=DEFAULT_CHUNK_SIZE,
        help="tokens per log-prob chunk (default: train.logprob_chunk_size's)",
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--no-guard",
        action="store_true",
        help="run the requested rows even if the full path looks too big for this machine",
    )
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return

    def gb(b: float) -> str:
        return f"{b / 1e9:7.2f}"

    print(
        f"one training step, {args.length} completion + {PROMPT} prompt tokens per row, float32, chunk {args.chunk} tokens; peak = process VmHWM, step = peak - RSS before the step"
    )
    print(f"{'V':>8s} {'arch':6s} {'rows':>4s} {'path':8s} {'peak GB':>8s} {'step GB':>8s} {'time s':>7s}")
    ratios = {}
    for vocab in [int(v) for v in args.vocabs.split(",") if v.strip()]:
        rows = args.rows
        while not args.no_guard and rows > 1:
            fits, need = full_path_fits(vocab, rows, args.length, mem_available())
            if fits:
                break
            print(
                f"  (V={vocab}: the full path at {rows} rows needs ~{need / 1e9:.1f} GB, more than 70% of the {mem_available() / 1e9:.1f} GB available: halving the rows)"
            )
            rows //= 2
        res = {}
        for path, chunk in (("full", 0), ("chunked", args.chunk)):
            r = run_case({"vocab": vocab, "rows": rows, "length": args.length, "chunk": chunk, "threads": args.threads})
            res[path] = r
            print(
                f"{vocab:8d} {ARCH.get(vocab, 'qwen2'):6s} {rows:4d} {path:8s} {gb(r['peak'])} {gb(r['peak'] - r['pre_step'])} {r['seconds']:7.1f}",
                flush=True,
            )
        ratios[vocab] = res["chunked"]["peak"] / res["full"]["peak"]
        print(
            f"  V={vocab}: chunked/full {ratios[vocab]:.3f} (step only: {(res['chunked']['peak'] - res['chunked']['pre_step']) / (res['full']['peak'] - res['full']['pre_step']):.3f}); "
            f"loss full {res['full']['loss']:.6f} vs chunked {res['chunked']['loss']:.6f}",
            flush=True,
        )
    worst = max(ratios, key=ratios.get)
    print(f"worst vocabulary: V={worst} (the ratio below is the highest over {', '.join(str(v) for v in ratios)})")
    print(f"memory ratio chunked/full: {ratios[worst]:.2f}")


if __name__ == "__main__":
    main()
