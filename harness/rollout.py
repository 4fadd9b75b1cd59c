"""The rollout-engine interface: turn prompt token ids into sampled completions (token ids, optional log-probs).

An engine is anything with ``generate(prompts, params) -> list[list[Completion]]``,
``sync_weights(model, version)`` and ``close()`` (:class:`RolloutEngine`). Engines may expose
``last_sync_metrics`` (dict of ``engine/*`` metrics of the latest weight sync) and ``cheap_logprobs = True``
when per-token log-probs cost next to nothing, so the trainer always asks for them (engine-trainer gap metrics).

This module holds only the interface and small helpers shared by the engines; it imports nothing else from
the project. The implementations (``hf``, ``hf-generate``, ``vllm``, ``vllm-server``, ``auto``) and the
registry (``create_engine``, ``available_engines``) live in :mod:`harness.engines`.
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol

import numpy as np
import torch


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1  # completions per prompt
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    max_new_tokens: int = 256
    return_logprobs: bool = False  # per-token log-probs under the sampling distribution


@dataclass
class Completion:
    token_ids: np.ndarray  # int64, without padding; ends with eos when finish_reason == "stop"
    finish_reason: str  # "stop" (eos generated) or "length" (hit max_new_tokens)
    logprobs: np.ndarray | None = None  # float32 per token, when requested
    policy_version: int = 0  # optimizer steps of the weights that produced it


class RolloutEngine(Protocol):
    name: str
    # True for engines that sample with the trainer's own model rather than a copy of its weights (hf, hf-generate):
    # under train.sharding=fsdp the trainer gathers the sharded model around their sampling (absent = False)
    uses_training_model: bool

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[list[Completion]]: ...

    def sync_weights(self, model: torch.nn.Module, version: int) -> None: ...

    def close(self) -> None: ...


def left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists into (input_ids, attention_mask) tensors."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s) :] = torch.as_tensor(s, dtype=torch.long)
            mask[i, width - len(s) :] = 1
    return ids, mask


def eos_ids(model: torch.nn.Module, tokenizer) -> list[int]:
    """Sorted end-of-sequence ids: the model's generation config's and the tokenizer's together."""
    ids: set[int] = set()
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for v in (gen_eos, tokenizer.eos_token_id):
        if isinstance(v, int):
            ids.add(v)
        elif isinstance(v, (list, tuple)):
            ids.update(int(x) for x in v)
    if not ids:
        raise ValueError("neither the tokenizer nor the generation config defines an eos token")
    return sorted(ids)


# Progress of long generations (evaluation at 2,048 tokens): a callback(new_tokens, finished_rows) called after
# every decoding step of an engine that decodes in this process (``harness.sampling.sample``) while :func:`decode_progress` is active. Engines that do not decode here
# (vLLM) report nothing; callers then advance per batch.
_PROGRESS: contextvars.ContextVar[Callable[[int, int], None] | None] = contextvars.ContextVar(
    "decode_progress", default=None
)


@contextlib.contextmanager
def decode_progress(callback: Callable[[int, int], None]) -> Iterator[None]:
    """Call ``callback(new_tokens, finished_rows)`` after each decoding step of an in-process engine in this context."""
    token = _PROGRESS.set(callback)
    try:
        yield
    finally:
        _PROGRESS.reset(token)


def current_decode_progress() -> Callable[[int, int], None] | None:
    """The callback an engine reports its decoding steps to, if a :func:`decode_progress` context is active."""
    return _PROGRESS.get()
