"""A lean autoregressive sampler over a transformers causal LM with a KV cache.

Why not ``model.generate``: for RL rollouts we want (a) the same position ids the trainer uses
(count of real tokens, so left padding does not shift positions), (b) per-token log-probs of the
sampled tokens under the processed distribution, and (c) no work on rows that already ended:
finished rows are dropped from the batch and the cache. On the tiny model this is ~1.7x faster than
``generate`` at G=8 (see bench/bench_vs_trl.py). Processing order matches transformers' warpers:
temperature -> top-k -> top-p.
"""

from __future__ import annotations

import torch

from harness.rollout import current_decode_progress


def process_logits(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Apply temperature, top-k and top-p (nucleus) filtering; filtered entries become -inf."""
    logits = logits.float()
    if temperature > 0 and temperature != 1.0:
        logits = logits / temperature
    if top_k and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if 0 < top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=False)
        cum = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        remove_sorted = cum <= (1 - top_p)
        remove_sorted[..., -1] = False  # always keep the most likely token
        remove = remove_sorted.scatter(-1, order, remove_sorted)
        logits = logits.masked_fill(remove, float("-inf"))
    return logits


@torch.no_grad()
def sample(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    max_new_tokens: int,
    eos_ids: list[int],
    pad_id: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    return_logprobs: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Sample continuations for left-padded ``input_ids``.

    Returns (tokens [B, max_new_tokens] padded with ``pad_id`` after eos, lengths [B] including the
    eos token when one was generated, logprobs [B, max_new_tokens] or None).
    """
    from transformers import DynamicCache

    device = input_ids.device
    B = input_ids.shape[0]
    tokens = torch.full((B, max_new_tokens), pad_id, dtype=torch.long, device=device)
    lengths = torch.full((B,), max_new_tokens, dtype=torch.long, device=device)
    logprobs = torch.zeros((B, max_new_tokens), dtype=torch.float32, device=device) if return_logprobs else None
    eos = torch.tensor(eos_ids, device=device)
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache()
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=positions,
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    alive = torch.arange(B, device=device)  # original row of each row still generating
    mask = attention_mask
    last_pos = positions[:, -1]
    report = current_decode_progress()
    for t in range(max_new_tokens):
        logits = out.logits[:, -1, :]
        if temperature == 0:
            processed = logits.float()
            nxt = processed.argmax(dim=-1)
        else:
            processed = process_logits(logits, temperature, top_k, top_p)
            nxt = torch.multinomial(torch.softmax(processed, dim=-1), 1).squeeze(1)
        tokens[alive, t] = nxt
        if logprobs is not None:
            logprobs[alive, t] = torch.log_softmax(processed, dim=-1).gather(-1, nxt.unsqueeze(1)).squeeze(1)
        done = torch.isin(nxt, eos)
        if done.any():
            lengths[alive[done]] = t + 1
        if report is not None:
            report(int(nxt.numel()), int(done.sum()) if t < max_new_tokens - 1 else int(nxt.numel()))
        if t == max_new_tokens - 1:
            break
        if done.any():
            keep = (~done).nonzero().squeeze(1)
            if keep.numel() == 0:
                break
            alive, nxt, mask, last_pos = alive[keep], nxt[keep], mask[keep], last_pos[keep]
            cache.batch_select_indices(keep)
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
        last_pos = last_pos + 1
        out = model(
            input_ids=nxt.unsqueeze(1),
            attention_mask=mask,
            position_ids=last_pos.unsqueeze(1),
            past_key_values=cache,
            use_cache=True,
        )
    return tokens, lengths, logprobs
