"""Bounded memory: chunked log-probs == the full-logits path, token-budget micro-batches == one pass, memory estimate."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from algorithms.grpo import aggregate, clipped_token_loss
from harness.logprobs import (
    HEAD_TRANSFORMS,
    chunked_unsupported_reason,
    completion_logprobs,
    full_logprobs,
    shared_prompt_logprobs,
    wrapped_chunked_unsupported_reason,
)
from harness.memory import arch_from_config, estimate_peak_memory, plan_microbatches

SMALL = dict(
    vocab_size=211,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    max_position_embeddings=128,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
EXTRA = {
    "gemma2": {"final_logit_softcapping": 3.0},
    "gemma3_text": {"final_logit_softcapping": 3.0},
    "granite": {"logits_scaling": 4.0},
    "cohere": {"logit_scale": 0.5},
}


def small_model(model_type: str, dtype=torch.float64, **kw):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    cfg = AutoConfig.for_model(model_type, **{**SMALL, **EXTRA.get(model_type, {}), **kw})
    return AutoModelForCausalLM.from_config(
        cfg, dtype=dtype, attn_implementation="sdpa"
    ).train()  # eager in float64 gives NaN at left padding


def padded_batch(vocab: int, seed: int = 0):
    """Left-padded prompts + right-padded completions, positions over real tokens (as harness.trainer.collate)."""
    g = torch.Generator().manual_seed(seed)
    prompts, completions = [5, 3, 7, 4], [9, 2, 6, 1]
    P, C = max(prompts), max(completions)
    ids = torch.randint(1, vocab, (4, P + C), generator=g)
    mask = torch.zeros(4, P + C, dtype=torch.long)
    cmask = torch.zeros(4, C)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        mask[i, P - p : P + c] = 1
        cmask[i, :c] = 1
    ids = ids * mask  # pad id 0
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, pos, ids[:, P:], cmask, torch.randn(4, generator=g)


def loss_and_grads(model, fn):
    model.zero_grad(set_to_none=True)
    ids, mask, pos, cids, cmask, adv = padded_batch(model.config.vocab_size)
    lp = fn(model, ids, mask, pos, cids, cmask)
    old = lp.detach() + 0.05 * torch.randn(lp.shape, generator=torch.Generator().manual_seed(3))
    token_loss = clipped_token_loss(lp, old, adv, 0.2, 0.2)[0]
    loss = aggregate(token_loss, cmask, torch.full((4,), 0.25), torch.zeros(4, dtype=torch.bool))
    loss.backward()
    return (
        loss.detach(),
        (lp * cmask).detach(),
        {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None},
    )


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp(min=1e-300))


@pytest.mark.parametrize("model_type", sorted(HEAD_TRANSFORMS))
def test_chunked_logprobs_match_full_path_loss_and_gradient(model_type):
    model = small_model(model_type)
    assert chunked_unsupported_reason(model) is None
    T = 0.7
    full = loss_and_grads(model, lambda m, i, a, p, c, cm: full_logprobs(m, i, a, p, c, T))
    chunked = loss_and_grads(
        model, lambda m, i, a, p, c, cm: completion_logprobs(m, i, a, p, c, cm, T, chunk_size=5)
    )  # 18 tokens: 4 chunks
    assert rel(chunked[0], full[0]) <= 1e-6
    assert rel(chunked[1], full[1]) <= 1e-6  # log-probs on real tokens
    assert full[2].keys() == chunked[2].keys() and len(full[2]) > 0
    worst = max(rel(chunked[2][n], full[2][n]) for n in full[2])
    assert worst <= 1e-6, worst
    whole = torch.cat([g.flatten() for g in full[2].values()])
    assert rel(torch.cat([g.flatten() for g in chunked[2].values()]), whole) <= 1e-6


def test_float32_bf16_and_no_grad_paths():
    # float32: the same arithmetic, rounding differs only by the matmul's blocking
    model = small_model("qwen2", dtype=torch.float32)
    full = loss_and_grads(model, lambda m, i, a, p, c, cm: full_logprobs(m, i, a, p, c, 1.3))
    chunked = loss_and_grads(model, lambda m, i, a, p, c, cm: completion_logprobs(m, i, a, p, c, cm, 1.3, chunk_size=7))
    assert rel(chunked[0], full[0]) <= 1e-5 and rel(chunked[1], full[1]) <= 1e-6
    assert max(rel(chunked[2][n], full[2][n]) for n in full[2]) <= 1e-4
    # no autograd (behaviour / reference log-probs): no checkpointing, same values; bf16 lm_head dtype respected
    for dt in (torch.float32, torch.bfloat16):
        m = model.to(dt)
        ids, mask, pos, cids, cmask, _ = padded_batch(m.config.vocab_size)
        with torch.no_grad():
            a = full_logprobs(m, ids, mask, pos, cids, 1.0) * cmask
            b = completion_logprobs(m, ids, mask, pos, cids, cmask, 1.0, chunk_size=3)
        assert b.dtype == torch.float32 and torch.allclose(a, b, atol=1e-5 if dt == torch.float32 else 0.0)


def test_wrapper_forward_is_called_and_forward_restored():
    """The chunked path runs the *wrapper's* forward (DDP arms its gradient sync there), and leaves the model as it was."""

    class Wrapper(torch.nn.Module):  # stands in for DistributedDataParallel: exposes .module, forwards to it
        def __init__(self, module):
            super().__init__()
            self.module, self.calls = module, 0

        def forward(self, *a, **kw):
            self.calls += 1
            return self.module(*a, **kw)

    model = small_model("llama")
    wrapped = Wrapper(model)
    ids, mask, pos, cids, cmask, _ = padded_batch(model.config.vocab_size)
    lp = completion_logprobs(wrapped, ids, mask, pos, cids, cmask, 1.0, chunk_size=4)
    lp.sum().backward()
    assert wrapped.calls == 1 and "forward" not in vars(model)
    assert model.lm_head.weight.grad is not None and model.model.layers[0].mlp.up_proj.weight.grad is not None
    assert (
        model(input_ids=ids, attention_mask=mask).logits.shape[-1] == model.config.vocab_size
    )  # the class forward again


def test_unsupported_architecture_falls_back_to_full_path():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = (
        GPT2LMHeadModel(GPT2Config(vocab_size=97, n_embd=32, n_layer=1, n_head=2, n_positions=64)).double().eval()
    )  # eval: no dropout
    assert "gpt2" in chunked_unsupported_reason(model)
    ids, mask, pos, cids, cmask, _ = padded_batch(97)
    a = completion_logprobs(model, ids, mask, pos, cids, cmask, 1.0, chunk_size=4)
    assert torch.equal(a, full_logprobs(model, ids, mask, pos, cids, 1.0))


# ------------------------------------------------------------------------------------------------
# Token-budget micro-batches


def test_plan_microbatches_respects_budget_and_caps():
    rng = np.random.default_rng(0)
    P = rng.integers(5, 40, size=50)
    C = rng.integers(0, 120, size=50)
    rows = np.arange(3, 50)
    width = lambda sel: len(sel) * (P[sel].max() + max(C[sel].max(), 1))  # noqa: E731
    assert [list(m) for m in plan_microbatches(rows, P, C)] == [list(rows)]  # no caps: one pass, order kept
    assert [list(m) for m in plan_microbatches(rows, P, C, max_rows=10)] == [
        list(rows[s : s + 10]) for s in range(0, len(rows), 10)
    ]
    plan = plan_microbatches(rows, P, C, max_rows=6, max_tokens=400)
    assert sorted(np.concatenate(plan).tolist()) == rows.tolist()
    assert all(len(m) <= 6 and (width(m) <= 400 or len(m) == 1) for m in plan)
    assert any(len(m) > 1 for m in plan)
    assert [list(m) for m in plan_microbatches([7], P, C, max_tokens=1)] == [[7]]  # longer than the budget: alone
    assert plan_microbatches([], P, C, max_tokens=100) == []


def test_token_budget_microbatches_give_the_same_update(make_config):
    """One whole-batch pass through the full-logits path (the old trainer) vs token-budgeted, length-sorted micro-batches
    through chunked log-probs: same gradients and the same parameter update."""
    from harness.trainer import Trainer, row_engine_logprobs

    cfg = make_config("grpo", train={"max_steps": 1, "max_grad_norm": 0.0})
    tr = Trainer(cfg, progress=False)
    try:
        groups, _ = tr.rollout(tr.sampler.next_indices())
        batch = tr.algorithm.build_batch(groups, 0)
        batch.advantages = (
            np.random.default_rng(0).normal(size=len(batch)).astype(np.float32)
        )  # every row carries gradient
        engine_lp = row_engine_logprobs(batch, groups)
        model = tr.accelerator.unwrap_model(tr.model)
        start_params = copy.deepcopy(model.state_dict())
        start_opt = copy.deepcopy(tr.optimizer.state_dict())
        grads: list[dict[str, torch.Tensor]] = []
        step = tr.optimizer.step

        def capturing_step(*a, **kw):
            grads.append({n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None})
            return step(*a, **kw)

        tr.optimizer.step = capturing_step
        widths = [len(p) + len(c) for p, c in zip(batch.prompt_ids, batch.completion_ids)]
        budget = 3 * max(widths)
        results = []
        for chunk, tokens in ((0, 0), (3, budget)):
            model.load_state_dict(start_params)
            tr.optimizer.load_state_dict(copy.deepcopy(start_opt))
            tr.cfg.train.logprob_chunk_size, tr.cfg.train.max_tokens_per_microbatch = chunk, tokens
            metrics, behaviour = tr.train_on(batch, engine_lp)
            results.append((metrics, behaviour, {k: v.detach().clone() for k, v in model.state_dict().items()}))
        plan = plan_microbatches(
            np.arange(len(batch)), [len(p) for p in batch.prompt_ids], [len(c) for c in batch.completion_ids], 0, budget
        )
        assert len(plan) > 2  # really split (and sorted by length)
        (m0, b0, p0), (m1, b1, p1) = results
        assert m1["loss/policy"] == pytest.approx(m0["loss/policy"], rel=1e-5, abs=1e-7)
        for r in range(len(batch)):
            np.testing.assert_allclose(b1[r], b0[r], rtol=0, atol=2e-5)  # behaviour log-probs per row
        for n in grads[0]:
            assert rel(grads[1][n], grads[0][n]) <= 1e-4, n
        for k in p0:
            update0, update1 = p0[k] - start_params[k], p1[k] - start_params[k]
            if update0.norm() > 0:
                assert rel(update1, update0) <= 1e-2, (
                    k
                )  # AdamW's first step ~ lr * sign(grad): tiny gradients may round differently
    finally:
        tr.close()


# ------------------------------------------------------------------------------------------------
# Peak-memory estimate


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def test_memory_estimate_within_a_factor_of_measured_peak():
    """The estimate's rule against the resident-set high-water mark of a real training step (chunked log-probs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM
    except OSError:
        pytest.skip("needs Linux /proc/self/clear_refs to reset the peak RSS")
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    cfg = AutoConfig.for_model(
        "llama",
        vocab_size=8192,
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
    )
    rows, P, C, chunk = 8, 16, 240, 512
    ids = torch.randint(0, 8192, (rows, P + C))
    mask = torch.ones_like(ids)
    pos = torch.arange(P + C).expand(rows, -1)
    cmask = torch.ones(rows, C)
    before = _status_kb("VmRSS") * 1024
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation="sdpa").train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()  # AdamW's moments exist, as in any step after the first
    opt.zero_grad(set_to_none=True)
    Path("/proc/self/clear_refs").write_text(
        "5"
    )  # the peak from here on: the training step (model construction's transients excluded)
    lp = completion_logprobs(model, ids, mask, pos, ids[:, P:], cmask, 0.7, chunk)
    (lp * cmask).sum().div(cmask.sum()).backward()
    opt.step()
    measured = _status_kb("VmHWM") * 1024 - before
    est = estimate_peak_memory(
        arch_from_config(cfg), tokens=rows * (P + C), completion_tokens=rows * C, chunk_size=chunk
    )
    predicted = est["total"] - est["base"]
    assert (
        abs(arch_from_config(cfg).params - sum(p.numel() for p in model.parameters())) / arch_from_config(cfg).params
        < 0.05
    )
    assert 0.5 <= predicted / measured <= 2.0, (predicted / 1e6, measured / 1e6, {k: v / 1e6 for k, v in est.items()})


# ------------------------------------------------------------------------------------------------
# Shared prompts (train.share_prompts)


def shared_batch(vocab: int):
    """6 rows over 3 distinct prompts of lengths 5, 2, 7 (a prompt's rows not adjacent), completions of 1-6 tokens."""
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, vocab, (n,), generator=g).tolist() for n in (5, 2, 7)]
    rows = [0, 1, 0, 2, 1, 0]
    completions = [torch.randint(3, vocab, (n,), generator=g).numpy() for n in (4, 1, 6, 3, 2, 5)]
    return [prompts[i] for i in rows], completions, torch.randn(6, generator=g)


@pytest.mark.parametrize("model_type", sorted(HEAD_TRANSFORMS))
def test_shared_prompts_match_the_repeated_prompt_path_loss_and_gradient(model_type):
    from harness.trainer import collate, distinct_prompts

    model = small_model(model_type)
    assert wrapped_chunked_unsupported_reason(model) is None
    prompts, completions, adv = shared_batch(model.config.vocab_size)
    col = collate(prompts, completions, 0)
    ids, mask, prompt_of = distinct_prompts(prompts, 0)
    assert ids.shape == (3, 7) and prompt_of.tolist() == [0, 1, 0, 2, 1, 0]
    T = 0.7

    def run(fn):
        model.zero_grad(set_to_none=True)
        lp = fn()
        old = lp.detach() + 0.05 * torch.randn(lp.shape, generator=torch.Generator().manual_seed(3))
        token_loss = clipped_token_loss(lp, old, adv, 0.2, 0.2)[0]
        loss = aggregate(token_loss, col.completion_mask, torch.full((6,), 1 / 6), torch.zeros(6, dtype=torch.bool))
        loss.backward()
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
        return loss.detach(), (lp * col.completion_mask).detach(), grads

    repeated = run(
        lambda: completion_logprobs(
            model, col.input_ids, col.attention_mask, col.position_ids, col.completion_ids, col.completion_mask, T, 4
        )
    )
    shared = run(
        lambda: shared_prompt_logprobs(model, ids, mask, prompt_of, col.completion_ids, col.completion_mask, T, 4)
    )
    assert rel(shared[0], repeated[0]) <= 1e-6
    assert rel(shared[1], repeated[1]) <= 1e-6 and (shared[1] != 0).sum() == sum(len(c) for c in completions)
    assert shared[2].keys() == repeated[2].keys() and len(repeated[2]) > 0
    worst = max(rel(shared[2][n], repeated[2][n]) for n in repeated[2])
    assert worst <= 1e-6, worst
    assert "forward" not in vars(model)  # the swapped forward is gone


def test_shared_prompts_in_a_training_step_give_the_same_update(make_config, monkeypatch):
    """A trainer step with train.share_prompts on and off from the same state: the same loss, behaviour log-probs and
    parameter update (float32, so up to rounding)."""
    import harness.trainer as trainer_module
    from harness.trainer import Trainer

    calls = []
    real = trainer_module.shared_prompt_logprobs
    monkeypatch.setattr(
        trainer_module, "shared_prompt_logprobs", lambda *a, **k: calls.append(a[1].shape) or real(*a, **k)
    )
    results = []
    for share in (False, True):
        cfg = make_config("grpo", train={"max_steps": 1, "share_prompts": share, "format_reward_weight": 0.5})
        tr = Trainer(cfg, progress=False)
        try:
            model = tr.accelerator.unwrap_model(tr.model)
            before = {k: v.detach().clone() for k, v in model.state_dict().items()}
            rec = tr.train_step()
            after = {k: v.detach().clone() for k, v in model.state_dict().items()}
            results.append((rec, before, after))
        finally:
            tr.close()
    (r0, b0, a0), (r1, b1, a1) = results
    assert calls and all(shape[0] <= 4 for shape in calls)  # the shared path ran, on at most the step's 4 prompts
    assert r0.completion_ids == r1.completion_ids  # same rollout (same seed, same weights)
    assert r0.metrics["samples/nonzero_adv"] > 0  # rows with gradient, so the update is a real test
    assert r1.metrics["loss/policy"] == pytest.approx(r0.metrics["loss/policy"], rel=1e-4, abs=1e-7)
    for k in b0:
        torch.testing.assert_close(b1[k], b0[k])
        update0, update1 = a0[k] - b0[k], a1[k] - b1[k]
        if update0.norm() > 0:
            assert rel(update1, update0) <= 1e-2, k  # AdamW's first step ~ lr * sign(grad)
