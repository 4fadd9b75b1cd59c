"""Training memory: token-budget micro-batches and the peak-memory estimate ``harness run --dry-run`` prints.

* :func:`plan_microbatches` groups a step's rows into micro-batches whose padded size (rows x (longest
  prompt + longest completion), the shape :func:`harness.trainer.collate` builds) stays within
  ``train.max_tokens_per_microbatch``, with at most ``train.micro_batch_size`` rows. The loss stays exact:
  every algorithm's loss is a weighted sum over rows (``row_weights`` / ``token_sum`` are fixed per row for
  the whole step), so how rows are grouped changes only float rounding.
* :func:`estimate_peak_memory`: one rule for the peak of a training step (below), with :func:`model_arch`
  supplying the shapes of registry models without loading them.
"""

from __future__ import annotations

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


#: Activation bytes kept for backward per token and layer, in units of the training dtype: ~16 hidden-sized
#: tensors (norm in/out x2, q/k/v, RoPE copies, attention output, o_proj, residuals) + 4 MLP-sized ones
#: (gate, up, act(gate), act(gate) * up); autograd's saved tensors measure ~0.8 of this, the rest covers the
#: backward's transients (bench/bench_memory.py child runs: estimate/measured 0.9-1.05; tests/test_logprobs.py).
ACT_HIDDEN, ACT_MLP = 16, 4
#: float32 [tokens, V] blocks alive at the peak of the log-prob computation: chunked path (a chunk's logits,
#: its /T copy and the backward's temporaries; ~3 measured) and full path (the logits and the saved /T rows,
#: then the gradient; 1.8-2.3 measured).
LOGIT_BLOCKS_CHUNKED, LOGIT_BLOCKS_FULL = 4, 2.5
#: Python, torch and transformers themselves (process RSS before any model exists).
BASE_BYTES = 0.5e9


def estimate_peak_memory(
    arch: Arch,
    *,
    tokens: int,
    completion_tokens: int,
    chunk_size: int,
    dtype: str = "float32",
    gradient_checkpointing: bool = False,
    reference_model: bool = False,
) -> dict[str, float]:
    """Estimated peak bytes of one training micro-batch's forward + backward (the step's peak).

    ``tokens``: padded tokens of the largest micro-batch (rows x (prompt + completion)); ``completion_tokens``:
    its completion positions. The rule: weights + gradients + AdamW's two moments (torch keeps them in the
    parameter dtype: 16 bytes/param in float32, 8 in bfloat16) [+ a frozen reference copy] + activations
    (``layers x (16 H + 4 I)`` values per token; with gradient checkpointing one hidden state per layer plus
    one layer's worth) + the float32 logits that exist at once (one chunk, or the whole micro-batch with
    ``chunk_size=0``) + a fixed runtime base. Not included: a vLLM engine's own weights and KV cache.
    """
    b = 2 if dtype in ("bfloat16", "float16") else 4
    states = arch.params * 4 * b + (arch.params * b if reference_model else 0)
    per_layer = (ACT_HIDDEN * arch.hidden + ACT_MLP * arch.intermediate) * b
    act = tokens * (arch.layers * arch.hidden * b + per_layer if gradient_checkpointing else arch.layers * per_layer)
    logit_tokens = min(chunk_size, completion_tokens) if chunk_size > 0 else completion_tokens
    logits = logit_tokens * arch.vocab * 4 * (LOGIT_BLOCKS_CHUNKED if chunk_size > 0 else LOGIT_BLOCKS_FULL)
    return {
        "weights_optimizer": states,
        "activations": act,
        "logits": logits,
        "base": BASE_BYTES,
        "total": states + act + logits + BASE_BYTES,
    }


def estimate_for_config(cfg, arch: Arch | None, *, replay_rows: int = 0) -> dict[str, float] | None:
    """:func:`estimate_peak_memory` for a run config at its upper-bound lengths (every row of the longest
    micro-batch at ``data.max_prompt_length + generation.max_completion_length``), or None without shapes."""
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
    return estimate_peak_memory(
        arch,
        tokens=rows * width,
        completion_tokens=rows * g.max_completion_length,
        chunk_size=t.logprob_chunk_size,
        dtype=cfg.model.dtype,
        gradient_checkpointing=cfg.model.gradient_checkpointing,
        reference_model=kl,
    )


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
