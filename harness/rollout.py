"""Rollout engines: turn prompt token ids into sampled completions (token ids, optional log-probs).

An engine is anything with ``generate(prompts, params) -> list[list[Completion]]``,
``sync_weights(model, version)`` and ``close()``. The ``hf`` engine uses transformers' ``generate``
on the training model itself, so its weights are always current. Engines are registered by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

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

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[list[Completion]]: ...

    def sync_weights(self, model: torch.nn.Module, version: int) -> None: ...

    def close(self) -> None: ...


_ENGINES: dict[str, Callable[..., RolloutEngine]] = {}


def register_engine(name: str) -> Callable:
    def deco(factory: Callable[..., RolloutEngine]) -> Callable[..., RolloutEngine]:
        _ENGINES[name] = factory
        return factory

    return deco


def available_engines() -> list[str]:
    return sorted(_ENGINES)


def create_engine(name: str, *, model: torch.nn.Module, tokenizer, batch_size: int = 256) -> RolloutEngine:
    if name not in _ENGINES:
        raise ValueError(f"unknown rollout engine '{name}'; available: {', '.join(available_engines())}")
    return _ENGINES[name](model=model, tokenizer=tokenizer, batch_size=batch_size)


def left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists into (input_ids, attention_mask) tensors."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s):] = torch.as_tensor(s, dtype=torch.long)
            mask[i, width - len(s):] = 1
    return ids, mask


@register_engine("hf")
class HFEngine:
    """transformers ``generate`` on the live training model (no weight sync needed)."""

    name = "hf"

    def __init__(self, model: torch.nn.Module, tokenizer, batch_size: int = 256):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size  # prompts per generate call
        self.version = 0
        if tokenizer.pad_token_id is None:
            raise ValueError("tokenizer has no pad token; the model registry must set one (never equal to eos)")

    def sync_weights(self, model: torch.nn.Module, version: int) -> None:
        self.model = model
        self.version = version

    def close(self) -> None:
        pass

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        out: list[list[Completion]] = []
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(prompts), self.batch_size):
                out.extend(self._generate_chunk(prompts[start:start + self.batch_size], params))
        finally:
            self.model.train(was_training)
        return out

    def _generate_chunk(self, prompts: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        tok = self.tokenizer
        eos_ids = _eos_ids(self.model, tok)
        input_ids, attention_mask = left_pad(prompts, tok.pad_token_id)
        device = next(self.model.parameters()).device
        greedy = params.temperature == 0
        gen_kwargs = dict(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            max_new_tokens=params.max_new_tokens,
            num_return_sequences=params.n,
            pad_token_id=tok.pad_token_id,
            eos_token_id=eos_ids,
            return_dict_in_generate=True,
            output_scores=params.return_logprobs,
        )
        if greedy:
            gen_kwargs.update(do_sample=False, temperature=None, top_k=None, top_p=None)
        else:
            gen_kwargs.update(do_sample=True, temperature=params.temperature, top_k=params.top_k or None, top_p=params.top_p)
        res = self.model.generate(**gen_kwargs)
        new_tokens = res.sequences[:, input_ids.shape[1]:].cpu()
        logps = None
        if params.return_logprobs:
            # Processed scores = the distribution actually sampled from (temperature, top-k, top-p applied).
            scores = torch.stack(res.scores, dim=1).float()
            logps = torch.log_softmax(scores, dim=-1).gather(-1, new_tokens.unsqueeze(-1).to(scores.device)).squeeze(-1).cpu()
        eos = torch.tensor(sorted(eos_ids))
        completions: list[list[Completion]] = []
        for p in range(len(prompts)):
            group = []
            for j in range(params.n):
                row = p * params.n + j
                toks = new_tokens[row]
                is_eos = torch.isin(toks, eos)
                if is_eos.any():
                    length = int(is_eos.int().argmax()) + 1
                    reason = "stop"
                else:
                    length = int((toks != tok.pad_token_id).sum()) if tok.pad_token_id not in eos_ids else toks.numel()
                    length = min(length, toks.numel())
                    reason = "length"
                ids = toks[:length].numpy().astype(np.int64)
                lp = logps[row, :length].numpy().astype(np.float32) if logps is not None else None
                group.append(Completion(token_ids=ids, finish_reason=reason, logprobs=lp, policy_version=self.version))
            completions.append(group)
        return completions


def _eos_ids(model: torch.nn.Module, tokenizer) -> list[int]:
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
