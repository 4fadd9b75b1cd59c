"""The in-process engines ``hf`` and ``hf-generate``: sampling on the live training model (no weight sync needed).

``hf`` decodes with our KV-cache sampler (:func:`harness.sampling.sample`); ``hf-generate`` with transformers'
``model.generate`` (the reference path). Both are registered in :mod:`harness.engines`.
"""

from __future__ import annotations

import numpy as np
import torch

from harness.rollout import Completion, SamplingParams, eos_ids, left_pad
from harness.sampling import sample


class HFEngine:
    """Sampling on the live training model with our KV-cache loop (harness/sampling.py); no weight sync needed."""

    name = "hf"
    cheap_logprobs = True  # a log-softmax of logits the sampler computes anyway
    uses_training_model = True  # samples with the trainer's model (under FSDP the trainer gathers it first)

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
        tok = self.tokenizer
        input_ids, attention_mask = left_pad(prompts, tok.pad_token_id)
        device = next(self.model.parameters()).device
        rep = params.n
        return sample(
            self.model,
            input_ids.repeat_interleave(rep, 0).to(device),
            attention_mask.repeat_interleave(rep, 0).to(device),
            max_new_tokens=params.max_new_tokens,
            eos_ids=eos_ids(self.model, tok),
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
        eos = set(eos_ids(self.model, self.tokenizer))
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


class HFGenerateEngine(HFEngine):
    """transformers ``model.generate`` (reference path; slower: it keeps decoding finished rows)."""

    name = "hf-generate"
    cheap_logprobs = False  # needs output_scores: every step's full logits kept in memory

    def _sample(self, prompts: list[list[int]], params: SamplingParams):
        tok = self.tokenizer
        eos = eos_ids(self.model, tok)
        input_ids, attention_mask = left_pad(prompts, tok.pad_token_id)
        device = next(self.model.parameters()).device
        kwargs = dict(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            max_new_tokens=params.max_new_tokens,
            num_return_sequences=params.n,
            pad_token_id=tok.pad_token_id,
            eos_token_id=eos,
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
        is_eos = torch.isin(tokens, torch.tensor(eos))
        lengths = torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, torch.full((tokens.shape[0],), new.shape[1]))
        logps = None
        if params.return_logprobs:
            scores = torch.stack(res.scores, dim=1).float().cpu()
            logps = torch.zeros(tokens.shape)
            logps[:, : scores.shape[1]] = torch.log_softmax(scores, -1).gather(-1, new.cpu().unsqueeze(-1)).squeeze(-1)
        return tokens, lengths, logps
