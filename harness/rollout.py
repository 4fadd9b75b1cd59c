"""Rollout engines: turn prompt token ids into sampled completions (token ids, optional log-probs).

An engine is anything with ``generate(prompts, params) -> list[list[Completion]]``,
``sync_weights(model, version)`` and ``close()``. The ``hf`` engine uses transformers' ``generate``
on the training model itself, so its weights are always current. Engines are registered by name;
``vllm``, ``vllm-server`` and ``auto`` live in :mod:`harness.engines` (imported on first use).
Engines may expose ``last_sync_metrics`` (dict of ``engine/*`` metrics of the latest weight sync) and
``cheap_logprobs = True`` when per-token log-probs cost next to nothing, so the trainer always asks for them
(engine-trainer gap metrics).
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


def _load_engine_plugins() -> None:
    import harness.engines  # noqa: F401  (registers vllm, vllm-server, auto; imports no vLLM)


def available_engines() -> list[str]:
    _load_engine_plugins()
    return sorted(_ENGINES)


def create_engine(name: str, *, model: torch.nn.Module, tokenizer, batch_size: int = 256, **options) -> RolloutEngine:
    """Build engine ``name``; ``options`` are engine settings (see :class:`harness.engines.options.EngineOptions`)."""
    if name not in _ENGINES:
        _load_engine_plugins()
    if name not in _ENGINES:
        raise ValueError(f"unknown rollout engine '{name}'; available: {', '.join(available_engines())}")
    return _ENGINES[name](model=model, tokenizer=tokenizer, batch_size=batch_size, **options)


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


@register_engine("hf")
class HFEngine:
    """Sampling on the live training model with our KV-cache loop (harness/sampling.py); no weight sync needed."""

    name = "hf"
    cheap_logprobs = True  # a log-softmax of logits the sampler computes anyway

    def __init__(self, model: torch.nn.Module, tokenizer, batch_size: int = 256, **engine_options):
        # engine_options (vllm_*, server_*, sync_check, ...) configure separate engines; this one samples with
        # the training model itself, so none of them applies
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size  # prompts per call
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
                chunk = prompts[start : start + self.batch_size]
                tokens, lengths, logps = self._sample(chunk, params)
                out.extend(self._to_completions(len(chunk), params, tokens, lengths, logps))
        finally:
            self.model.train(was_training)
        return out

    def _sample(self, prompts: list[list[int]], params: SamplingParams):
        from harness.sampling import sample

        tok = self.tokenizer
        input_ids, attention_mask = left_pad(prompts, tok.pad_token_id)
        device = next(self.model.parameters()).device
        rep = params.n
        return sample(
            self.model,
            input_ids.repeat_interleave(rep, 0).to(device),
            attention_mask.repeat_interleave(rep, 0).to(device),
            max_new_tokens=params.max_new_tokens,
            eos_ids=_eos_ids(self.model, tok),
            pad_id=tok.pad_token_id,
            temperature=params.temperature,
            top_k=params.top_k,
            top_p=params.top_p,
            return_logprobs=params.return_logprobs,
        )

    def _to_completions(
        self,
        num_prompts: int,
        params: SamplingParams,
        tokens: torch.Tensor,
        lengths: torch.Tensor,
        logps: torch.Tensor | None,
    ) -> list[list[Completion]]:
        tokens, lengths = tokens.cpu(), lengths.cpu()
        eos = set(_eos_ids(self.model, self.tokenizer))
        groups = []
        for p in range(num_prompts):
            group = []
            for j in range(params.n):
                row = p * params.n + j
                n = int(lengths[row])
                ids = tokens[row, :n].numpy().astype(np.int64)
                reason = "stop" if n and int(ids[-1]) in eos else "length"
                lp = logps[row, :n].cpu().numpy().astype(np.float32) if logps is not None else None
                group.append(Completion(token_ids=ids, finish_reason=reason, logprobs=lp, policy_version=self.version))
            groups.append(group)
        return groups


@register_engine("hf-generate")
class HFGenerateEngine(HFEngine):
    """transformers ``model.generate`` (reference path; slower: it keeps decoding finished rows)."""

    name = "hf-generate"
    cheap_logprobs = False  # needs output_scores: every step's full logits kept in memory

    def _sample(self, prompts: list[list[int]], params: SamplingParams):
        tok = self.tokenizer
        eos_ids = _eos_ids(self.model, tok)
        input_ids, attention_mask = left_pad(prompts, tok.pad_token_id)
        device = next(self.model.parameters()).device
        kwargs = dict(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            max_new_tokens=params.max_new_tokens,
            num_return_sequences=params.n,
            pad_token_id=tok.pad_token_id,
            eos_token_id=eos_ids,
            return_dict_in_generate=True,
            output_scores=params.return_logprobs,
        )
        if params.temperature == 0:
            kwargs.update(do_sample=False, temperature=None, top_k=None, top_p=None)
        else:
            kwargs.update(
                do_sample=True, temperature=params.temperature, top_k=params.top_k or None, top_p=params.top_p
            )
        res = self.model.generate(**kwargs)
        new = res.sequences[:, input_ids.shape[1] :]
        width = params.max_new_tokens
        tokens = torch.full((new.shape[0], width), tok.pad_token_id, dtype=torch.long)
        tokens[:, : new.shape[1]] = new.cpu()
        is_eos = torch.isin(tokens, torch.tensor(eos_ids))
        lengths = torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, torch.full((tokens.shape[0],), new.shape[1]))
        logps = None
        if params.return_logprobs:
            scores = torch.stack(res.scores, dim=1).float().cpu()
            logps = torch.zeros(tokens.shape)
            logps[:, : scores.shape[1]] = torch.log_softmax(scores, -1).gather(-1, new.cpu().unsqueeze(-1)).squeeze(-1)
        return tokens, lengths, logps


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
