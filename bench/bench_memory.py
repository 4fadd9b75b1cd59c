"""Peak memory per process: the full-logits path vs chunked log-probs, and FSDP vs DDP training (CPU, minutes).

Run: ``python bench/bench_memory.py [--rows 16] [--length 1024] [--vocabs 151936,49152] [--chunk 512] [--threads 1]
[--skip-fsdp | --only-fsdp] [--fsdp-model smollm2-135m-gguf] [--fsdp-preset NAME] [--fsdp-steps 3] [--fsdp-phases] [--fsdp-env K=V]``
(check the result with ``bench/check_memory_ratio.py``).

Part 1, chunked vs full log-probs. Cases, all in the same run: for each vocabulary, a small random model with that real vocabulary size
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

Part 2, FSDP vs DDP (``--only-fsdp`` runs only this part, ``--skip-fsdp`` skips it): two runs of
``python -m torch.distributed.run --nproc_per_node 2`` (gloo, ``OMP_NUM_THREADS=1``) of the real
``harness.trainer.Trainer`` (bench/fsdp_memory_worker.py), ``train.sharding=none`` (DDP through accelerate) then
``fsdp`` (FSDP2, harness/sharding.py), same settings otherwise: ``--fsdp-model`` (default ``smollm2-135m-gguf``, the
real pretrained SmolLM2-135M, float32, ~0.54 GB of weights; its ``smollm2-cpu`` preset, so ``share_prompts`` is on),
GRPO, the ``hf`` engine (under FSDP the whole model is gathered on every process for sampling and freed before
training), gradient checkpointing in both runs (as sharded runs use it; ``--no-fsdp-gradient-checkpointing`` for
without), ``--fsdp-steps`` steps (default 3: AdamW creates its state at the first step, so later steps carry it)
of ``--fsdp-prompts`` (2) prompts x ``--fsdp-generations`` (4) completions per process of at most
``--fsdp-completion`` (16) tokens, prompts cut at 128 tokens, evaluation off, MLflow to a temporary sqlite file,
outputs in a temporary folder. Each process reports its RSS once torch, transformers and the trainer are imported
but before the model exists (``base``: the runtime), the VmHWM of building the Trainer (``setup``: loading, sharding),
and ``peak``: the highest VmHWM over the training steps (rollout, training, optimizer step, weight sync; not the final
checkpoint after them, shown as ``final save``: under FSDP it gathers the weights and AdamW state to the main
process). The worker wraps the trainer's phases to say which phase the peak fell in (``--fsdp-phases`` prints RSS,
peak and glibc's malloc counters at every boundary: memory malloc holds but does not use shows up there).

The ratio is the worst process's peak under FSDP over the worst process's peak under DDP: whole-process peaks, the
conservative choice as in part 1 (what both share - the runtime, activations, the logits - pushes it towards 1);
the ratio of peaks above ``base`` is printed beside it (it leaves out the ~0.3 GB the runtime holds before any
model exists, which sharding cannot touch).

Caveats: CPU memory, not GPU memory. RSS counts what glibc's allocator keeps after ``free``: by default blocks below
its dynamic mmap threshold (up to 32 MB) come from heaps that only shrink from the top, and FSDP's many per-layer
gather/reduce buffers and the rollout's gathered weights were kept that way (2-2.9 GB per process). CPU FSDP runs
therefore set a 1 MiB mmap threshold and trim the heaps after the rollout (harness.memory, called from
harness/sharding.py); DDP runs keep glibc's defaults (``--fsdp-env MALLOC_MMAP_THRESHOLD_=1048576``, applied to both
runs, moved DDP's peak by 0.05 GB). About 1 GB per process is shared by both runs whatever the sharding: the
runtime (0.3 GB before the model; transformers' first model and tokenizer load imports ~2,000 more modules,
scikit-learn among them, +0.5 GB), other heap and activations. What FSDP cannot split is the root unit (the
LM head, and the embeddings when tied), gathered with its full gradient through backward; its peak is the embedding's
backward at the end (harness/sharding.py: a tied embedding's backward is sparse, an untied one is a unit of its own
that is not gathered there; before these two, the ratio was 0.61-0.63 on SmolLM2-135M and on a random untied 201M
Llama). The rollout phase (the whole model gathered for the hf engine) is about as high; README "Several processes"
has the figures. Timings are of a 2-core machine: check ``uptime``.

The last line reads ``memory ratio chunked/full: X.XX; fsdp/ddp: Y.YY``: the highest (worst) chunked/full ratio
over the vocabularies, and the FSDP/DDP whole-process ratio; ``n/a`` for a part that was skipped.
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


FSDP_WORKER = Path(__file__).resolve().parent / "fsdp_memory_worker.py"


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_distributed(spec: dict, processes: int, env_extra: dict[str, str]) -> tuple[list[dict], float]:
    """One ``torch.distributed.run`` of bench/fsdp_memory_worker.py; each process's report and the wall time."""
    import tempfile

    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **env_extra}
    with tempfile.TemporaryDirectory(prefix=f"bench-memory-{spec['sharding']}-") as tmp:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(processes),
            "--master_port",
            str(free_port()),
            str(FSDP_WORKER),
            json.dumps(spec),
            tmp,
        ]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=str(ROOT))
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(
                f"sharding={spec['sharding']} run failed (rc {proc.returncode}):\n{(proc.stdout + proc.stderr)[-4000:]}"
            )
        return [json.loads((Path(tmp) / f"rank{r}.json").read_text()) for r in range(processes)], wall


def fsdp_part(args) -> float:
    """DDP (train.sharding=none) and FSDP runs of the real trainer; prints the table, returns the last line's ratio."""
    env_extra = dict(kv.split("=", 1) for kv in args.fsdp_env)
    spec = {
        "model": args.fsdp_model,
        "preset": args.fsdp_preset,
        "steps": args.fsdp_steps,
        "prompts": args.fsdp_prompts,
        "generations": args.fsdp_generations,
        "completion": args.fsdp_completion,
        "prompt_length": 128,
        "train_size": max(8, args.fsdp_prompts * args.fsdp_processes),
        "gradient_checkpointing": args.fsdp_gradient_checkpointing,
    }

    def gb(b: float) -> str:
        return f"{b / 1e9:7.2f}"

    print(
        f"FSDP vs DDP: {args.fsdp_processes} processes (gloo), real Trainer, {args.fsdp_model} float32, GRPO, hf engine, "
        f"{args.fsdp_steps} steps x {args.fsdp_prompts} prompts x {args.fsdp_generations} generations per process, "
        f"<= {args.fsdp_completion}-token completions, eval off"
        + (", gradient checkpointing" if args.fsdp_gradient_checkpointing else "")
        + (f"; env {' '.join(args.fsdp_env)}" if args.fsdp_env else "")
    )
    print("peak = VmHWM over the steps; base = RSS before the model exists; setup = VmHWM while the Trainer is built")
    print(
        f"{'mode':5s} {'rank':>4s} {'base GB':>8s} {'setup GB':>8s} {'peak GB':>8s} {'peak-base':>9s} "
        f"{'final save':>10s}  {'peak phase':28s} {'run s':>6s}"
    )
    res = {}
    for mode, sharding in (("DDP", "none"), ("FSDP", "fsdp")):
        load = os.getloadavg()[0]
        ranks, wall = run_distributed({**spec, "sharding": sharding}, args.fsdp_processes, env_extra)
        if sharding == "fsdp" and not all(r["fsdp"] for r in ranks):
            raise RuntimeError("train.sharding=fsdp did not shard (one process?)")
        res[mode] = ranks
        for r in ranks:
            print(
                f"{mode:5s} {r['rank']:4d} {gb(r['base'])} {gb(r['setup_peak'])} {gb(r['peak'])}  {gb(r['peak'] - r['base'])} "
                f"{gb(r['final_save_peak'])}    {r['peak_phase']:28s} {wall:6.0f}",
                flush=True,
            )
        print(
            f"      (load average before the run: {load:.2f}; steps' wall times {', '.join(f'{x:.1f}' for x in ranks[0]['step_s'])} s)"
        )
        if args.fsdp_phases:
            for r in ranks:
                print(
                    f"      {mode} rank {r['rank']} phases: RSS at the end / peak over the phase / malloc in use / malloc free held, GB"
                )
                for m in r["marks"]:
                    extra = f" {gb(m['in_use'])} {gb(m['free_held'])}" if "in_use" in m else ""
                    print(f"        step {m['step']:2d} {m['phase']:24s} {gb(m['rss'])} {gb(m['hwm'])}{extra}")
    ddp, fsdp = res["DDP"], res["FSDP"]
    whole = max(r["peak"] for r in fsdp) / max(r["peak"] for r in ddp)
    above = max(r["peak"] - r["base"] for r in fsdp) / max(r["peak"] - r["base"] for r in ddp)
    per_rank = ", ".join(f"{f['peak'] / d['peak']:.3f}" for d, f in zip(ddp, fsdp))
    print(
        f"  fsdp/ddp, worst process of each: whole-process peak {whole:.3f} (the last line's); peak above the runtime "
        f"base {above:.3f}; per rank (whole-process): {per_rank}"
    )
    return whole


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
    part = ap.add_mutually_exclusive_group()
    part.add_argument("--skip-fsdp", action="store_true", help="only the chunked/full part (fsdp/ddp: n/a)")
    part.add_argument("--only-fsdp", action="store_true", help="only the FSDP/DDP part (chunked/full: n/a)")
    ap.add_argument(
        "--fsdp-model",
        default="smollm2-135m-gguf",
        help="model of the FSDP/DDP part: a registry name, or a local Hugging Face folder (with --fsdp-preset)",
    )
    ap.add_argument(
        "--fsdp-preset",
        default=None,
        help="config preset of both runs (default: the registered model's own, e.g. smollm2-cpu; a local folder has none)",
    )
    ap.add_argument("--fsdp-steps", type=int, default=3, help="training steps of each FSDP/DDP run")
    ap.add_argument("--fsdp-processes", type=int, default=2)
    ap.add_argument("--fsdp-prompts", type=int, default=2, help="prompts per step per process")
    ap.add_argument("--fsdp-generations", type=int, default=4)
    ap.add_argument("--fsdp-completion", type=int, default=16, help="generation.max_completion_length")
    ap.add_argument(
        "--fsdp-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment for both runs of the FSDP/DDP part, e.g. MALLOC_MMAP_THRESHOLD_=1048576 (repeatable)",
    )
    ap.add_argument(
        "--fsdp-gradient-checkpointing",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="model.gradient_checkpointing in both runs (default on, as sharded runs use it)",
    )
    ap.add_argument("--fsdp-phases", action="store_true", help="print every process's RSS at each phase boundary")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    chunked = None if args.only_fsdp else chunked_part(args)
    fsdp = None if args.skip_fsdp else fsdp_part(args)
    print(format_last_line(chunked, fsdp))


def format_last_line(chunked: float | None, fsdp: float | None) -> str:
    """The line bench/check_memory_ratio.py checks; ``n/a`` for a part that did not run."""

    def f(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.2f}"

    return f"memory ratio chunked/full: {f(chunked)}; fsdp/ddp: {f(fsdp)}"


def chunked_part(args) -> float:
    """The chunked vs full log-prob cases; prints their table, returns the worst ratio."""

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
    print(f"worst vocabulary: V={worst} (chunked/full below is the highest over {', '.join(str(v) for v in ratios)})")
    return ratios[worst]


if __name__ == "__main__":
    main()
