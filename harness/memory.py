"""Training memory: token-budget micro-batches and the peak-memory estimate ``harness run --dry-run`` prints.

* :func:`plan_microbatches` groups a step's rows into micro-batches whose padded size (rows x (longest
  prompt + longest completion), the shape :func:`harness.trainer.collate` builds) stays within
  ``train.max_tokens_per_microbatch``, with at most ``train.micro_batch_size`` rows. The loss stays exact:
  every algorithm's loss is a weighted sum over rows (``row_weights`` / ``token_sum`` are fixed per row for
  the whole step), so how rows are grouped changes only float rounding.
* :func:`estimate_peak_memory`: the peak of one process of a member (training step or rollout phase), one small rule
  per part (below): DDP (every process holds the whole model, plus DDP's gradient buckets) or FSDP (1/N of the model
  states per process plus the gathered units; bf16 mixed precision; CPU offload), with :func:`model_arch` supplying
  the shapes of registry models without loading them. ``harness run --dry-run`` prints it per member at the member's
  process count (``--processes``, ``--slurm-gpus``) and against ``--gpu-memory-gb``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.models import REGISTRY

#: Default ``train.max_tokens_per_microbatch`` (kept equal to the config default). SmolLM2-135M in float32 keeps
#: ~1.8 MB of activations per token (30 layers), so 4,096 padded tokens cost ~7.5 GB; with weights, AdamW and
#: one logits chunk, a RePO step of 64 rows x ~190 tokens is estimated at ~10.5 GB (one pass over all 12,160
#: tokens: ~22 GB of activations plus the full logits, the OOM of issue 10).
DEFAULT_MAX_TOKENS = 4096


def plan_microbatches(rows, prompt_lens, completion_lens, max_rows: int = 0, max_tokens: int = 0) -> list[np.ndarray]:
    """Micro-batches (arrays of row indices) for ``rows``; ``prompt_lens`` / ``completion_lens`` are indexed by row.

    ``max_rows`` / ``max_tokens`` of 0 mean no cap. When everything fits in one micro-batch the rows keep
    their order (one pass, as before). With only a row cap the rows are cut in order. With a token budget
    that forces a split, rows are sorted by length (stable) and packed greedily, so rows of similar length
    share a micro-batch and padding stays small; a single row longer than the budget runs alone.
    """
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) == 0:
        return []
    P = np.asarray(prompt_lens, dtype=np.int64)
    C = np.maximum(np.asarray(completion_lens, dtype=np.int64), 1)  # collate pads completions to >= 1
    cap = max_rows if max_rows > 0 else len(rows)

    def padded(sel: np.ndarray) -> int:
        return len(sel) * int(P[sel].max() + C[sel].max())

    if len(rows) <= cap and (max_tokens <= 0 or padded(rows) <= max_tokens):
        return [rows]
    if max_tokens <= 0:
        return [rows[s : s + cap] for s in range(0, len(rows), cap)]
    order = rows[np.argsort(P[rows] + C[rows], kind="stable")]
    out: list[np.ndarray] = []
    cur: list[int] = []
    p_max = c_max = 0
    for r in order:
        p, c = max(p_max, int(P[r])), max(c_max, int(C[r]))
        if cur and (len(cur) + 1 > cap or (len(cur) + 1) * (p + c) > max_tokens):
            out.append(np.asarray(cur, dtype=np.int64))
            cur, p, c = [], int(P[r]), int(C[r])
        cur.append(int(r))
        p_max, c_max = p, c
    out.append(np.asarray(cur, dtype=np.int64))
    return out


# ------------------------------------------------------------------------------------------------
# Peak-memory estimate


@dataclass(frozen=True)
class Arch:
    """What the estimate needs of a decoder-only transformer."""

    layers: int
    hidden: int
    intermediate: int
    vocab: int
    params: float
    tied: bool = True  # input embeddings and LM head are one matrix (False: two vocab x hidden matrices)

    @property
    def root_params(self) -> float:
        """Parameters outside the decoder layers (FSDP's root group): embeddings and LM head (norms negligible)."""
        return float(self.vocab * self.hidden * (1 if self.tied else 2))

    @property
    def layer_params(self) -> float:
        """Parameters of one decoder layer (FSDP's unit of gathering)."""
        return max(self.params - self.root_params, 0.0) / self.layers


# Shapes of registry models (their published config.json), so --dry-run needs no download.
def arch_from_config(cfg) -> Arch:
    """From a transformers config object or a config.json mapping."""
    get = (lambda k, d=None: cfg.get(k, d)) if isinstance(cfg, dict) else (lambda k, d=None: getattr(cfg, k, d))
    L, H, I, V = (
        int(get("num_hidden_layers")),
        int(get("hidden_size")),
        int(get("intermediate_size") or 4 * get("hidden_size")),
        int(get("vocab_size")),
    )
    heads = int(get("num_attention_heads") or 1)
    hd = int(get("head_dim") or H // heads)
    kv = int(get("num_key_value_heads") or heads) * hd
    tied = bool(get("tie_word_embeddings", True))
    per_layer = (
        H * heads * hd * 2 + 2 * H * kv + 3 * H * I
    )  # q, o, k, v, gate/up/down (norms and biases are negligible)
    return Arch(L, H, I, V, float(L * per_layer + V * H * (1 if tied else 2)), tied)


def model_arch(name: str) -> Arch | None:
    """Shapes of ``name`` without loading weights: registry table, the tiny model, a local config.json, else None."""
    spec = REGISTRY.get(name)
    if spec is not None and spec.arch is not None:
        return Arch(*spec.arch)
    if name == "tiny":
        from harness.tiny_model import TinyBuildConfig

        c = TinyBuildConfig()
        return arch_from_config(
            {
                "num_hidden_layers": c.layers,
                "hidden_size": c.hidden,
                "intermediate_size": c.intermediate,
                "vocab_size": 102,
                "num_attention_heads": c.heads,
                "head_dim": c.head_dim,
                "num_key_value_heads": c.kv_heads,
            }
        )
    p = Path(name) / "config.json"
    if p.is_file():
        try:
            return arch_from_config(json.loads(p.read_text()))
        except (ValueError, TypeError, KeyError):
            return None
    return None


#: Activation bytes kept for backward per token and layer, in units of the compute dtype: ~16 hidden-sized
#: tensors (norm in/out x2, q/k/v, RoPE copies, attention output, o_proj, residuals) + 4 MLP-sized ones
#: (gate, up, act(gate), act(gate) * up); autograd's saved tensors measure ~0.8 of this, the rest covers the
#: backward's transients (bench/bench_memory.py child runs: estimate/measured 0.9-1.05; tests/test_logprobs.py).
ACT_HIDDEN, ACT_MLP = 16, 4
#: float32 [tokens, V] blocks alive at the peak of the log-prob computation: chunked path (a chunk's logits,
#: its /T copy and the backward's temporaries; ~3 measured) and full path (the logits and the saved /T rows,
#: then the gradient; 1.8-2.3 measured).
LOGIT_BLOCKS_CHUNKED, LOGIT_BLOCKS_FULL = 4, 2.5
#: Python, torch and transformers themselves (process RSS before any model exists); on a GPU it stands for the
#: CUDA context and the caching allocator's slack, which are of the same order.
BASE_BYTES = 0.5e9
#: Decoder layers gathered at once under FSDP2 during forward and backward: the running one and the next, whose
#: all-gather FSDP2 issues ahead (implicit prefetch) so communication overlaps compute.
FSDP_GATHERED_LAYERS = 2
#: AdamW's state per parameter in units of the parameter dtype: exp_avg and exp_avg_sq (torch keeps them in the
#: parameter's dtype: the fp32 master shards under fsdp_mixed_precision=bf16).
ADAMW_STATES = 2
#: Colocated vLLM on a GPU without vllm_gpu_memory_utilization / vllm_kv_cache_gb: the fraction of the GPU it
#: reserves for its weights and KV cache (harness/engines/vllm_local.py's default for colocated engines).
VLLM_COLOCATED_UTILIZATION = 0.3
#: Engines that sample with the training model itself: under FSDP the whole model is gathered on every process
#: for the rollout phase (harness/sharding.py full_weights). ``auto`` may resolve to one of them, so it is counted
#: as one (the upper bound).
GATHERING_ENGINES = ("hf", "hf-generate", "auto")


def dtype_bytes(dtype: str) -> int:
    """Bytes per value of a ``model.dtype`` / ``generation.vllm_dtype`` name."""
    return 2 if dtype in ("bfloat16", "float16", "bf16") else 4


@dataclass(frozen=True)
class Sharding:
    """How a member holds its policy across its processes (``train.sharding`` and friends, and the process count)."""

    processes: int = 1
    mode: str = "none"  # train.sharding: none (DDP) | fsdp
    mixed_precision: str = "none"  # train.fsdp_mixed_precision: none | bf16
    cpu_offload: bool = False  # train.fsdp_cpu_offload

    @property
    def fsdp(self) -> bool:
        """Sharded for real: the trainer runs fsdp with a single process unsharded (harness/trainer.py)."""
        return self.mode == "fsdp" and self.processes > 1

    @property
    def ddp(self) -> bool:
        """Replicated over several processes: torch DDP (through accelerate) with its gradient buckets."""
        return not self.fsdp and self.processes > 1

    @property
    def label(self) -> str:
        if not self.fsdp:
            return "DDP" if self.ddp else "1 process"
        extra = [x for x, on in (("bf16", self.mixed_precision == "bf16"), ("offload", self.cpu_offload)) if on]
        return "FSDP" + (f" ({', '.join(extra)})" if extra else "")


def compute_bytes(dtype: str, sharding: Sharding) -> int:
    """Bytes per value of gathered parameters and activations: bfloat16 under FSDP mixed precision, else the dtype."""
    return 2 if sharding.fsdp and sharding.mixed_precision == "bf16" else dtype_bytes(dtype)


def model_states(arch: Arch, dtype: str, sharding: Sharding, reference_model: bool) -> dict[str, float]:
    """Weights, gradients, AdamW state and a frozen reference copy per process, in ``dtype`` (the master dtype):
    whole on every process, or 1/N of each under FSDP."""
    share = arch.params * dtype_bytes(dtype) / (sharding.processes if sharding.fsdp else 1)
    return {
        "weights": share,
        "gradients": share,
        "optimizer": ADAMW_STATES * share,
        "reference": share if reference_model else 0.0,
    }


def ddp_buckets(arch: Arch, dtype: str, sharding: Sharding) -> float:
    """DDP's gradient buckets: with torch's default ``gradient_as_bucket_view=False`` (accelerate's default too) the
    reducer keeps flat bucket storage the size of all gradients, beside them (measured on CPU, 2 processes with gloo,
    a 50-100M-parameter float32 model: +1.00-1.02 x the parameter bytes over a single process; with
    gradient_as_bucket_view=True: +0.00). Nothing with one process (no DDP wrapper) or under FSDP."""
    return arch.params * dtype_bytes(dtype) if sharding.ddp else 0.0


def fsdp_gathered(arch: Arch, dtype: str, sharding: Sharding) -> float:
    """Unsharded parameters and gradients alive at once during an FSDP training step (harness/sharding.py), at the
    embedding's backward, the end of the backward pass: :data:`FSDP_GATHERED_LAYERS` decoder layers and one
    vocab x hidden matrix (the root's LM head, gathered from the forward to the end of the backward; an untied input
    embedding is not gathered in backward) in the compute dtype, plus the unsharded gradients of one layer and of
    both matrices (one when tied: the embedding's sparse part is added into the head's), produced in the compute dtype
    and, under bf16 mixed precision, also cast to float32 for the reduce-scatter (both at once)."""
    if not sharding.fsdp:
        return 0.0
    cb = compute_bytes(dtype, sharding)
    grad_bytes = cb + (4 if sharding.mixed_precision == "bf16" else 0)
    params = FSDP_GATHERED_LAYERS * arch.layer_params + arch.vocab * arch.hidden
    return params * cb + (arch.layer_params + arch.root_params) * grad_bytes


def activation_bytes(arch: Arch, tokens: int, cb: int, gradient_checkpointing: bool) -> float:
    """Activations kept for backward: ``layers x (16 H + 4 I)`` values per token; with gradient checkpointing one
    hidden state per layer plus one layer's worth."""
    per_layer = (ACT_HIDDEN * arch.hidden + ACT_MLP * arch.intermediate) * cb
    return tokens * (arch.layers * arch.hidden * cb + per_layer if gradient_checkpointing else arch.layers * per_layer)


def logit_bytes(arch: Arch, completion_tokens: int, chunk_size: int) -> float:
    """The float32 logits that exist at once: one chunk, or the whole micro-batch with ``chunk_size=0``."""
    logit_tokens = min(chunk_size, completion_tokens) if chunk_size > 0 else completion_tokens
    return logit_tokens * arch.vocab * 4 * (LOGIT_BLOCKS_CHUNKED if chunk_size > 0 else LOGIT_BLOCKS_FULL)


def sampling_gathered(arch: Arch, dtype: str, sharding: Sharding, engine: str) -> float:
    """What FSDP gathers for the rollout phase: the whole model in the compute dtype with the in-process engines
    (:data:`GATHERING_ENGINES`), else one parameter at a time for a vLLM engine (the largest: an embedding matrix)."""
    if not sharding.fsdp:
        return 0.0
    whole = engine in GATHERING_ENGINES
    return (arch.params if whole else arch.vocab * arch.hidden) * compute_bytes(dtype, sharding)


def estimate_peak_memory(
    arch: Arch,
    *,
    tokens: int,
    completion_tokens: int,
    chunk_size: int,
    dtype: str = "float32",
    gradient_checkpointing: bool = False,
    reference_model: bool = False,
    sharding: Sharding = Sharding(),
    engine: str = "hf",
    engine_bytes: float = 0.0,
    engine_sleeps: bool = False,
) -> dict[str, float]:
    """Estimated peak bytes of one process of a member: the larger of its training peak and its sampling peak.

    ``tokens``: padded tokens of the largest micro-batch (rows x (prompt + completion)); ``completion_tokens``:
    its completion positions. ``dtype`` is ``model.dtype`` (the master weights'); ``sharding`` says how the policy is
    held (:class:`Sharding`). The training peak: the model states (:func:`model_states`; 16 bytes/param in float32,
    8 in bfloat16, 1/N of it under FSDP) + DDP's buckets (:func:`ddp_buckets`) + FSDP's gathered units
    (:func:`fsdp_gathered`) + activations (:func:`activation_bytes`) + logits (:func:`logit_bytes`) + a fixed runtime
    base. The sampling peak: weights, AdamW state, buckets and reference (gradients are freed after every step) + what
    FSDP gathers for the rollout (:func:`sampling_gathered`) + the base. ``engine_bytes``: a colocated vLLM engine's
    weights and KV cache (0: none, or not known), on top of both peaks, or only of the sampling peak when the engine
    sleeps while training (``vllm_sleep``). With ``cpu_offload`` (FSDP) the model states are in host memory
    (``host``), not in the GPU figures. Not included: the hf sampler's KV cache.
    """
    states = model_states(arch, dtype, sharding, reference_model)
    offload = sharding.fsdp and sharding.cpu_offload
    host = sum(states.values()) if offload else 0.0
    if offload:
        states = dict.fromkeys(states, 0.0)
    cb = compute_bytes(dtype, sharding)
    parts = {
        **states,
        "ddp_buckets": ddp_buckets(arch, dtype, sharding),
        "gathered": fsdp_gathered(arch, dtype, sharding),
        "activations": activation_bytes(arch, tokens, cb, gradient_checkpointing),
        "logits": logit_bytes(arch, completion_tokens, chunk_size),
        "base": BASE_BYTES,
    }
    training = sum(parts.values()) + (0.0 if engine_sleeps else engine_bytes)
    sampling_gather = sampling_gathered(arch, dtype, sharding, engine)
    kept = parts["weights"] + parts["optimizer"] + parts["reference"] + parts["ddp_buckets"]
    sampling = kept + sampling_gather + BASE_BYTES + engine_bytes
    return {
        **parts,
        "engine": engine_bytes,
        "sampling_gathered": sampling_gather,
        "training": training,
        "sampling": sampling,
        "host": host,
        "total": max(training, sampling),
    }


def engine_memory(cfg, arch: Arch, gpu_memory: float | None) -> float | None:
    """GPU bytes of a colocated ``vllm`` engine per process: its weights + ``vllm_kv_cache_gb`` when that is set, else
    its memory fraction (``vllm_gpu_memory_utilization``, default :data:`VLLM_COLOCATED_UTILIZATION`) of the GPU; None
    when that needs the GPU's size and none is given. 0 for the other engines (``vllm-server`` has its own GPUs;
    ``auto`` is counted as hf) and on a CPU-only plan (no GPU size given)."""
    g = cfg.generation
    if g.engine != "vllm":
        return 0.0
    if g.vllm_kv_cache_gb:
        return arch.params * dtype_bytes(g.vllm_dtype or cfg.model.dtype) + g.vllm_kv_cache_gb * (1 << 30)
    if gpu_memory is None:
        return None
    return (g.vllm_gpu_memory_utilization or VLLM_COLOCATED_UTILIZATION) * gpu_memory


def sharding_of(cfg, processes: int = 1) -> Sharding:
    """A run config's :class:`Sharding` when its member runs ``processes`` processes."""
    t = cfg.train
    return Sharding(max(1, int(processes)), t.sharding, t.fsdp_mixed_precision, t.fsdp_cpu_offload)


def alternatives(own: Sharding) -> list[Sharding]:
    """What ``--dry-run`` compares at the member's process count: DDP and FSDP (with the member's mixed precision
    when it is fsdp), and for an fsdp member both with and without CPU offload; one entry with a single process
    (nothing to shard: fsdp trains unsharded)."""
    if own.processes == 1:
        return [Sharding(1)]
    mp = own.mixed_precision if own.mode == "fsdp" else "none"
    out = [Sharding(own.processes), Sharding(own.processes, "fsdp", mp)]
    if own.mode == "fsdp":
        out.append(Sharding(own.processes, "fsdp", mp, True))
    return out


def estimate_for_config(
    cfg,
    arch: Arch | None,
    *,
    replay_rows: int = 0,
    sharding: Sharding | None = None,
    gpu_memory: float | None = None,
) -> dict[str, float] | None:
    """:func:`estimate_peak_memory` for one process of a run config at its upper-bound lengths (every row of the
    longest micro-batch at ``data.max_prompt_length + generation.max_completion_length``), or None without shapes.
    ``sharding``: how the member holds its policy (default: the config's with one process; :func:`sharding_of`);
    ``gpu_memory``: the GPU's bytes (sizes a colocated vLLM engine; :func:`engine_memory`). A colocated vLLM engine
    whose size is unknown counts 0, and the result's ``engine_unknown`` is 1."""
    if arch is None:
        return None
    g, t = cfg.generation, cfg.train
    rows = t.prompts_per_step * g.num_generations + replay_rows
    if t.micro_batch_size > 0:
        rows = min(rows, t.micro_batch_size)
    width = cfg.data.max_prompt_length + g.max_completion_length
    if t.max_tokens_per_microbatch > 0:
        rows = max(1, min(rows, t.max_tokens_per_microbatch // width))
    kl = float(cfg.algorithm.get("beta", 0.0) or 0.0) > 0
    engine = engine_memory(cfg, arch, gpu_memory)
    est = estimate_peak_memory(
        arch,
        tokens=rows * width,
        completion_tokens=rows * g.max_completion_length,
        chunk_size=t.logprob_chunk_size,
        dtype=cfg.model.dtype,
        gradient_checkpointing=cfg.model.gradient_checkpointing,
        reference_model=kl,
        sharding=sharding or sharding_of(cfg),
        engine=g.engine,
        engine_bytes=engine or 0.0,
        engine_sleeps=bool(g.vllm_sleep),
    )
    return {**est, "engine_unknown": float(engine is None)}


# ------------------------------------------------------------------------------------------------
# measured: the process's resident-set peak per training step (Linux; elsewhere nothing is reported)


def reset_peak_rss() -> bool:
    """Reset the kernel's resident-set high-water mark (VmHWM) to the current RSS; False where that is unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _status_bytes(key: str) -> int | None:
    """A ``/proc/self/status`` memory line (``VmRSS``, ``VmHWM``) in bytes, or None off Linux."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_rss_bytes() -> int | None:
    """VmHWM of this process (bytes) since the last :func:`reset_peak_rss`, or None off Linux."""
    return _status_bytes("VmHWM")


def rss_bytes() -> int | None:
    """Current resident set (VmRSS) of this process in bytes, or None off Linux."""
    return _status_bytes("VmRSS")


M_MMAP_THRESHOLD = -3  # glibc mallopt parameter (malloc.h)


def return_large_frees_to_os(threshold: int = 1 << 20) -> bool:
    """Make glibc's malloc serve blocks of ``threshold`` bytes and more with their own mappings, returned to the OS on
    ``free``; False where unavailable (not glibc, or another allocator preloaded).

    By default glibc raises this threshold dynamically up to 32 MiB, so mid-sized tensors come from heaps that give
    memory back only from the top. FSDP on CPU allocates and frees many of them (each layer's gathered parameters
    and gradients, the rollout's full weights): bench/bench_memory.py measured 2-2.9 GB per process freed but kept
    that way on SmolLM2-135M. The trainer sets it for CPU FSDP runs (harness.sharding.shard_model); GPU tensors come
    from CUDA's allocator and are not affected."""
    mallopt = libc_function("mallopt", (ctypes.c_int, ctypes.c_int))
    return mallopt is not None and bool(mallopt(M_MMAP_THRESHOLD, int(threshold)))


def trim_freed_memory() -> bool:
    """Hand the free pages glibc's heaps hold back to the OS (``malloc_trim(0)``); True when some were released. Called by
    CPU FSDP runs when the rollout's gathered weights are freed (harness.sharding.full_weights): -0.05 GB of the
    training step's peak on SmolLM2-135M, 2 processes (bench/bench_memory.py)."""
    trim = libc_function("malloc_trim", (ctypes.c_size_t,))
    return trim is not None and bool(trim(0))


@functools.lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL | None:
    """The C library, loaded once (finding it is a ~1 ms search, and the trim runs after every rollout)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or None)
    except OSError:
        return None


def libc_function(name: str, argtypes: tuple, restype=ctypes.c_int):
    """A glibc function through ctypes, or None (another C library, or not found)."""
    fn = getattr(_libc(), name, None)
    if fn is None:
        return None
    fn.argtypes, fn.restype = argtypes, restype
    return fn
