"""Selected-token log-probs without ever holding ``[rows, T, V]`` logits.

A training step needs ``log softmax(logits / T)[token]`` for every completion token, nothing else of the
vocabulary-sized output. The plain way (:func:`full_logprobs`, ``train.logprob_chunk_size=0``) asks the
model for the logits of the last ``C + 1`` positions: a float32 ``[rows, C, V]`` tensor (0.6 GB per row at
Qwen's 151,936 vocabulary and 1,024 tokens), which autograd then keeps, with a copy, until backward.

:func:`chunked_logprobs` runs the model's backbone only (final hidden states, ``[rows, positions, H]``),
keeps the hidden states of the real (unpadded) completion tokens, ``[N, H]``, and computes the log-probs
``chunk_size`` tokens at a time. Each chunk runs under non-reentrant ``torch.utils.checkpoint``, so the
forward keeps only its ``[chunk]`` result and the backward recomputes that chunk's logits (one
``[chunk, V]`` block alive at a time, a few temporaries of that size during its backward). The arithmetic
per token is the model's own (``lm_head`` in its dtype, the model's logit transform, then ``.float() / T``
exactly like the full path), so values and gradients equal the full path's up to float rounding of the
matmul blocking (tests: <= 1e-6 relative in float64; float32 agrees to ~1e-6 absolute). Padded
completion positions get log-prob 0 (the full path gives the meaningless log-prob of the pad token
there); every loss masks them.

Gradient synchronisation under DDP (accelerate, several processes): DDP's reducer only syncs gradients of
a backward that follows a forward *through the DDP wrapper* (``DistributedDataParallel.forward`` arms it
with ``prepare_for_backward``). Calling ``model.module.model(...)`` directly would skip that and leave the
processes' gradients unsynchronised. So the wrapper is still called, with the wrapped module's ``forward``
swapped for the duration of the call (:func:`_hidden_state_forward`) to one that returns the backbone's
final hidden states instead of logits. ``acc.no_sync`` and the last micro-batch's sync work unchanged; the
``lm_head`` weight, used after the wrapper returns, still gets its gradient reduced, because DDP's hooks sit
on each parameter's gradient accumulation, not on the forward (checked with two gloo processes: gradients
equal across ranks through the wrapper, different when the backbone is called directly). DDP with
``find_unused_parameters=True`` (not what accelerate or the harness set) would look for used parameters in
the returned hidden states' graph and miss an untied ``lm_head``, so it gets the full path.

Architectures: only those whose causal-LM head is known to be ``lm_head`` followed by a known transform
(none, Gemma-2/3's ``final_logit_softcapping``, Granite's ``logits_scaling``, Cohere's ``logit_scale``) use
the chunked path: :data:`HEAD_TRANSFORMS`. For any other model type, the head may do things this module
cannot see (other scalings, extra heads, MoE routing outputs), and recomputing ``lm_head`` here could give
silently wrong log-probs, so :func:`completion_logprobs` falls back to the full path
(:func:`chunked_unsupported_reason` says why). The same happens when something already replaced the
model's ``forward`` on the instance (e.g. accelerate's mixed-precision autocast wrapper), which the swap
would bypass.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

#: Default ``train.logprob_chunk_size`` (kept equal to the config default): completion tokens whose logits exist
#: at once. At V=151,936 a float32 ``[512, V]`` block is 0.31 GB (about 4 such blocks at the peak of a chunk's
#: backward); at V=49,152, 0.1 GB. Still large enough for an efficient lm_head matmul on a GPU.
DEFAULT_CHUNK_SIZE = 512

# model_type -> how the causal-LM head transforms ``lm_head(h)`` (checked in the transformers 5 sources,
# and each one tested against the model's own forward in tests/test_logprobs.py).
PLAIN = ("llama", "mistral", "qwen2", "qwen3", "phi3", "olmo", "olmo2", "smollm3", "gemma", "starcoder2")
HEAD_TRANSFORMS: dict[str, str] = {
    **{t: "none" for t in PLAIN},
    "gemma2": "softcap",
    "gemma3_text": "softcap",
    "granite": "divide",
    "cohere": "multiply",
}
_warned: set[str] = set()


def selective_logprobs(logits: torch.Tensor, ids: torch.Tensor, temperature: float) -> torch.Tensor:
    """log softmax(logits / T)[ids], row by row so a 150k vocabulary never materialises [B,T,V] twice."""
    out = []
    for row_logits, row_ids in zip(logits, ids):
        row = row_logits.float() / temperature
        out.append(row.gather(-1, row_ids.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(row, dim=-1))
    return torch.stack(out)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):  # DDP, FSDP-1, DataParallel
        model = model.module
    return getattr(model, "_orig_mod", model)  # torch.compile


def chunked_unsupported_reason(model: torch.nn.Module) -> str | None:
    """Why the chunked path cannot serve ``model`` (the unwrapped causal LM), or None when it can."""
    cfg = getattr(model, "config", None)
    mtype = getattr(cfg, "model_type", None)
    if mtype not in HEAD_TRANSFORMS:
        return f"model type {mtype!r} has a causal-LM head this module does not mirror (known: {', '.join(sorted(HEAD_TRANSFORMS))})"
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(head, torch.nn.Linear):
        return f"the output head is {type(head).__name__}, not a Linear layer"
    if not isinstance(getattr(model, "model", None), torch.nn.Module):
        return "no backbone at .model"
    if "forward" in vars(model):
        return "the model's forward is already replaced on the instance (e.g. a mixed-precision autocast wrapper)"
    return None


def head_transform(model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The causal-LM head's transform of ``lm_head(h)`` (identity for most models)."""
    kind = HEAD_TRANSFORMS[model.config.model_type]
    if kind == "softcap" and getattr(model.config, "final_logit_softcapping", None) is not None:
        cap = model.config.final_logit_softcapping
        return lambda x: torch.tanh(x / cap) * cap
    if kind == "divide":
        scale = model.config.logits_scaling
        return lambda x: x / scale
    if kind == "multiply":
        scale = model.logit_scale
        return lambda x: x * scale
    return lambda x: x


def _token_logprobs(
    h: torch.Tensor,
    ids: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    temperature: float,
    transform: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """log softmax(transform(h @ W^T + b) / T)[ids] for ``h`` [n, H]: the full path's arithmetic, per token."""
    x = transform(F.linear(h.to(weight.dtype), weight, bias)).float() / temperature
    return x.gather(-1, ids.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(x, dim=-1)


def logprobs_from_hidden(
    hidden: torch.Tensor,
    ids: torch.Tensor,
    mask: torch.Tensor,
    head: torch.nn.Linear,
    temperature: float,
    chunk_size: int,
    transform: Callable[[torch.Tensor], torch.Tensor] = lambda x: x,
) -> torch.Tensor:
    """[B, C] float32 log-probs of ``ids`` from final hidden states ``hidden`` [B, C, H] (the position before each token).

    Only tokens where ``mask`` is set are computed (0 elsewhere), ``chunk_size`` at a time; with autograd
    on, each chunk is checkpointed so its logits are recomputed in backward instead of stored.
    """
    m = mask.bool()
    h, tok = hidden[m], ids[m]  # [N, H], [N]
    grad = torch.is_grad_enabled() and (h.requires_grad or head.weight.requires_grad)
    parts = []
    for s in range(0, h.shape[0], chunk_size):
        args = (h[s : s + chunk_size], tok[s : s + chunk_size], head.weight, head.bias, temperature, transform)
        parts.append(
            checkpoint(_token_logprobs, *args, use_reentrant=False, preserve_rng_state=False)
            if grad
            else _token_logprobs(*args)
        )
    out = torch.zeros(ids.shape, dtype=torch.float32, device=hidden.device)
    if parts:
        out = out.masked_scatter(m, torch.cat(parts))
    return out


@contextmanager
def _hidden_state_forward(inner: torch.nn.Module):
    """While active, ``inner(...)`` (and so any wrapper's forward around it, e.g. DDP's) returns the
    backbone's final hidden states, ``[rows, positions, H]``, instead of a logits output. The whole tensor, not a
    slice: a view returned by a sharded root's forward makes FSDP2 warn (an in-place op on it would skip the root's
    backward hook), so the caller takes the positions it needs."""
    backbone = inner.model

    def forward(input_ids=None, attention_mask=None, position_ids=None, **kwargs):
        kwargs.pop("logits_to_keep", None)
        out = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs)
        return out.last_hidden_state

    inner.forward = forward
    try:
        yield
    finally:
        del inner.forward  # back to the class's forward


def full_logprobs(model, input_ids, attention_mask, position_ids, completion_ids, temperature: float) -> torch.Tensor:
    """The full-logits path: the model's logits for the last C + 1 positions, then :func:`selective_logprobs`."""
    C = completion_ids.shape[1]
    logits = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        logits_to_keep=C + 1,
        use_cache=False,
    ).logits[:, :-1]
    return selective_logprobs(logits, completion_ids, temperature)


def chunked_logprobs(
    model,
    input_ids,
    attention_mask,
    position_ids,
    completion_ids,
    completion_mask,
    temperature: float,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> torch.Tensor:
    """The chunked path (see the module docstring); ``model`` may be wrapped (DDP). The model must be supported."""
    inner = _unwrap(model)
    C = completion_ids.shape[1]
    with _hidden_state_forward(inner):
        hidden = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
    # the states before each completion token: positions -(C + 1) .. -2
    return _head_logprobs(inner, hidden[:, -(C + 1) : -1], completion_ids, completion_mask, temperature, chunk_size)


def _head_logprobs(inner, hidden, ids, mask, temperature: float, chunk_size: int) -> torch.Tensor:
    """:func:`logprobs_from_hidden` through ``inner``'s own output head and logit transform."""
    head = inner.get_output_embeddings()
    return logprobs_from_hidden(hidden, ids, mask, head, temperature, chunk_size, head_transform(inner))


@contextmanager
def _shared_prompt_forward(inner: torch.nn.Module):
    """While active, ``inner(...)`` takes the distinct prompts once and the completions with the row -> prompt map, and
    returns the final hidden states before every completion token (see :func:`shared_prompt_logprobs`)."""
    from transformers import DynamicCache

    backbone = inner.model

    def forward(input_ids=None, attention_mask=None, position_ids=None, completion_ids=None, prompt_of=None, **kw):
        cache = DynamicCache()
        first = backbone(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
        ).last_hidden_state[:, -1:]  # left padding: the last position is each prompt's last token
        h = first[prompt_of]  # [R, 1, H]: predicts each row's first completion token
        if completion_ids.shape[1] > 1:
            cache.batch_select_indices(prompt_of)  # each row attends to its prompt's keys and values (a gather: the
            # gradient of a prompt shared by G rows is the sum of theirs, as when it is repeated G times)
            rows = completion_ids[:, :-1]
            start = position_ids[prompt_of, -1:] + 1
            pos = start + torch.arange(rows.shape[1], device=rows.device)
            mask = torch.cat([attention_mask[prompt_of], torch.ones_like(rows)], dim=1)
            rest = backbone(
                input_ids=rows, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True
            ).last_hidden_state
            h = torch.cat([h, rest], dim=1)
        return h

    inner.forward = forward
    try:
        yield
    finally:
        del inner.forward


def shared_prompt_logprobs(
    model,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    prompt_of: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    temperature: float,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> torch.Tensor:
    """[R, C] log-probs of the completions, each prompt run once however many rows share it (``train.share_prompts``).

    ``prompt_ids``/``prompt_mask``: the distinct prompts, left-padded [U, P]; ``prompt_of`` [R]: each row's prompt.
    The prompts go through the backbone once with a KV cache, whose entries are then gathered per row, and the
    completions run on top of it: a group of G rows computes its prompt once instead of G times (a step of G=8 with
    prompts 3x its completions' length does ~1/3 of the backbone's work), with the same positions, attention and
    arithmetic per token as :func:`chunked_logprobs` (values and gradients equal up to float rounding; tested). The
    log-probs then come from the final hidden states chunk by chunk (:func:`logprobs_from_hidden`). One call through
    a DDP wrapper, as in :func:`chunked_logprobs`, so gradients are still synchronised. The model must be supported
    (:func:`chunked_unsupported_reason`)."""
    inner = _unwrap(model)
    positions = (prompt_mask.cumsum(-1) - 1).clamp(min=0)
    with _shared_prompt_forward(inner):
        hidden = model(
            input_ids=prompt_ids,
            attention_mask=prompt_mask,
            position_ids=positions,
            completion_ids=completion_ids,
            prompt_of=prompt_of,
        )
    return _head_logprobs(inner, hidden, completion_ids, completion_mask, temperature, chunk_size)


def wrapped_chunked_unsupported_reason(model) -> str | None:
    """Why the chunked paths (:func:`chunked_logprobs`, :func:`shared_prompt_logprobs`) cannot serve ``model``
    (maybe DDP-wrapped), or None when they can."""
    reason = chunked_unsupported_reason(_unwrap(model))
    if reason is None and getattr(model, "find_unused_parameters", False):
        # DDP would search the returned hidden states' graph for used parameters and miss an untied lm_head
        reason = "DDP with find_unused_parameters=True"
    return reason


def completion_logprobs(
    model,
    input_ids,
    attention_mask,
    position_ids,
    completion_ids,
    completion_mask,
    temperature: float,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> torch.Tensor:
    """[B, C] log-probs of the completion tokens (the last C of ``input_ids``); chunked unless ``chunk_size``
    is 0 or the model is not supported (then the full-logits path)."""
    if chunk_size > 0:
        reason = wrapped_chunked_unsupported_reason(model)
        if reason is None:
            return chunked_logprobs(
                model, input_ids, attention_mask, position_ids, completion_ids, completion_mask, temperature, chunk_size
            )
        if reason not in _warned:
            _warned.add(reason)
            print(
                f"warning: log-probs use the full-logits path ([rows, length, vocabulary] float32 logits): {reason}",
                file=sys.stderr,
                flush=True,
            )
    return full_logprobs(model, input_ids, attention_mask, position_ids, completion_ids, temperature)
