"""RePO plug-in on hand-computed cases: replay gating, split/mixed advantages, loss weighting, state."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from algorithms.base import LossInputs, RolloutGroup, resolve_algorithm
from algorithms.grpo import group_advantages
from algorithms.repo import RePO


def make(**fields) -> RePO:
    cls, cfg = resolve_algorithm({"name": "repo", **fields})
    return cls(cfg, seed=0, max_completion_length=8)


def group(pid="p", rewards=(1.0, 0.0), version=0, lengths=(2, 3)):
    return RolloutGroup(pid, [1, 2], [np.arange(10, 10 + n) for n in lengths], np.array(rewards, dtype=float), version)


def fill(algo: RePO, pid: str, rewards, version=0):
    for r in rewards:
        algo.buffer.add(pid, np.array([7, 8, 9]), np.array([-0.1, -0.2, -0.3], dtype=np.float32), r, version)


def test_no_replay_until_buffer_holds_min_cache_and_own_samples_never_replayed():
    algo = make(strategy="recent_k", num_replays=2, min_cache_to_replay=4, max_cache_size=4)
    g1 = group(version=0)
    b1 = algo.build_batch([g1], step=0)
    assert len(b1) == 2 and b1.metrics["replay/hit_rate"] == 0
    algo.after_step([g1], b1, [np.zeros(2, np.float32), np.zeros(3, np.float32)], step=0)
    assert algo.buffer.size("p") == 2
    g2 = group(version=1)
    b2 = algo.build_batch([g2], step=1)
    assert len(b2) == 2  # 2 stored < min_cache 4
    algo.after_step([g2], b2, [np.zeros(2, np.float32), np.zeros(3, np.float32)], step=1)
    b3 = algo.build_batch([group(version=2)], step=2)
    assert len(b3) == 4 and b3.metrics["replay/hit_rate"] == 1.0
    # recent_k: the two newest entries, from the step-1 policy; staleness = 2 - 1
    assert b3.policy_version.tolist() == [2, 2, 1, 1]
    assert b3.metrics["replay/staleness_mean"] == 1.0


def test_split_advantages_and_reference_weighting():
    algo = make(strategy="highest_k", num_replays=3, min_cache_to_replay=4, max_cache_size=4, off_policy_loss_coef=0.5)
    fill(algo, "p", [0.0, 1.0, 0.0, 1.0])
    b = algo.build_batch([group(rewards=(1.0, 0.0))], step=5)
    # highest_k with k=3 on [0,1,0,1]: both ones (older first) then the oldest zero
    assert b.source.tolist() == [0, 0, 1, 1, 1]
    a_on = group_advantages(np.array([1.0, 0.0]))
    a_off = group_advantages(np.array([1.0, 1.0, 0.0]))
    np.testing.assert_allclose(b.advantages, np.concatenate([a_on, a_off]), rtol=1e-6)
    m, s = 2 / 3, math.sqrt(1 / 3)  # off group: mean 2/3, unbiased std sqrt(1/3)
    np.testing.assert_allclose(a_off, [(1 - m) / (s + 1e-4)] * 2 + [(0 - m) / (s + 1e-4)], rtol=1e-6)
    # reference weighting: every row over all 5 rows, off rows times the coefficient
    np.testing.assert_allclose(b.row_weights, [1 / 5, 1 / 5, 0.5 / 5, 0.5 / 5, 0.5 / 5])
    assert b.metrics["effective/step"] == 1.0


def test_paper_weighting_normalises_each_term_on_its_own():
    algo = make(
        strategy="all", min_cache_to_replay=2, max_cache_size=4, loss_weighting="paper", off_policy_loss_coef=2.0
    )
    fill(algo, "p", [0.0, 1.0, 1.0])
    b = algo.build_batch([group()], step=1)
    np.testing.assert_allclose(b.row_weights, [1 / 2, 1 / 2, 2 / 3, 2 / 3, 2 / 3])


def test_mixed_normalises_one_group_of_g_plus_k():
    algo = make(strategy="all", min_cache_to_replay=2, max_cache_size=4, adv_norm="mixed")
    fill(algo, "p", [1.0, 1.0])
    b = algo.build_batch([group(rewards=(1.0, 0.0))], step=1)
    np.testing.assert_allclose(b.advantages, group_advantages(np.array([1.0, 0.0, 1.0, 1.0])), rtol=1e-6)


def test_replay_rescues_a_zero_variance_group():
    algo = make(strategy="max_variance_k", num_replays=2, min_cache_to_replay=3, max_cache_size=4)
    fill(algo, "p", [0.0, 1.0, 1.0])
    b = algo.build_batch([group(rewards=(0.0, 0.0))], step=3)
    assert b.metrics["groups/zero_std_frac"] == 1.0 and b.metrics["groups/replay_nonzero_var"] == 1.0
    assert b.metrics["effective/step"] == 1.0  # GRPO would have had 0


def test_off_policy_rows_use_stored_behaviour_logprobs_in_the_ratio():
    algo = make(strategy="all", min_cache_to_replay=1, max_cache_size=4)
    fill(algo, "p", [0.0, 1.0])
    b = algo.build_batch([group()], step=1)
    np.testing.assert_array_equal(b.old_logprobs[2], np.array([-0.1, -0.2, -0.3], dtype=np.float32))
    assert b.old_logprobs[0] is None  # on-policy: the trainer's pre-step log-probs
    # Current policy log-probs higher than the stored ones by log(1.5) -> ratio 1.5 on off rows, clipped at 1.2 for A>0.
    T = 3
    old = torch.zeros(4, T)
    old[2:] = torch.tensor([-0.1, -0.2, -0.3])
    new = old.clone()
    new[2:] += math.log(1.5)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 1, 1], [1, 1, 1]], dtype=torch.float32)
    inputs = LossInputs(
        new,
        old,
        None,
        mask,
        torch.tensor(b.advantages),
        torch.tensor(b.row_weights, dtype=torch.float32),
        torch.tensor(b.token_sum),
        torch.tensor(b.source),
    )
    loss, metrics = algo.loss(inputs)
    a_off = b.advantages[2:]
    expected_off = sum(-min(1.5 * a, 1.2 * a) / 4 for a in a_off)  # token-mean is constant per row; weight 1/4
    assert metrics["loss/off_policy"][0].item() == pytest.approx(expected_off, rel=1e-5)
    assert metrics["loss/on_policy"][0].item() == pytest.approx(-(b.advantages[0] + b.advantages[1]) / 4, abs=1e-6)
    assert metrics["clip/off_high_frac"][0].item() == 3  # the positive-advantage off row: 3 tokens clipped
    assert metrics["ratio/off_max"][0].item() == pytest.approx(1.5, rel=1e-5)


def test_state_round_trip_keeps_buffer_and_selection_rng():
    algo = make(strategy="random_k", num_replays=2, min_cache_to_replay=4, max_cache_size=8)
    fill(algo, "p", [0.0, 1.0, 0.0, 1.0, 0.5, 0.25])
    tensors, meta = algo.state_dict()
    twin = make(strategy="random_k", num_replays=2, min_cache_to_replay=4, max_cache_size=8)
    twin.load_state_dict(tensors, meta)
    assert twin.buffer == algo.buffer
    for step in range(5):
        a = algo.build_batch([group()], step=step)
        b = twin.build_batch([group()], step=step)
        assert [c.tolist() for c in a.completion_ids] == [c.tolist() for c in b.completion_ids]
        np.testing.assert_array_equal(a.advantages, b.advantages)


def test_plan_warns_when_the_run_is_too_short_to_replay(make_config, capsys):
    """A buffer of min 8 with G=4 fills in two visits and replays from a prompt's third; a run with fewer visits is plain GRPO."""
    from harness.trainer import Trainer

    algo = {"name": "repo:recent_k", "min_cache_to_replay": 8, "max_cache_size": 8}
    Trainer(
        make_config(algo, train={"max_steps": 2, "prompts_per_step": 4}, data={"train_size": 8}), progress=False
    )  # 1 visit < 3
    err = capsys.readouterr().err
    assert "visits each prompt ~1.0 times: it will train like GRPO" in err and "from its visit 3 on" in err
    Trainer(
        make_config(algo, train={"max_steps": 6, "prompts_per_step": 4}, data={"train_size": 8}), progress=False
    )  # 3 visits: replays
    assert "train like GRPO" not in capsys.readouterr().err
    Trainer(make_config("grpo", train={"max_steps": 2, "prompts_per_step": 4}, data={"train_size": 8}), progress=False)
    assert "warning" not in capsys.readouterr().err


# -- loss modes against the reference code (SihengLi99/RePO, src/replay_grpo_trainer.py, ReplayGRPOTrainer._compute_loss)


def reference_compute_loss(
    logp_now,
    logp_old,
    ref_logp,
    c_mask,
    is_online,
    advantages,
    *,
    loss_type,
    beta,
    max_completion_length,
    off_policy_loss_coef,
    eps=0.2,
):
    """The reference's loss, transcribed: KL on on-policy tokens as one token mean; each term aggregated by loss_type over its own mask."""
    kl_loss = torch.tensor(0.0)
    if beta != 0.0:
        per_tok_kl = torch.exp(ref_logp - logp_now) - (ref_logp - logp_now) - 1
        kl_mask = c_mask * is_online.unsqueeze(1)
        kl_loss = (per_tok_kl * kl_mask).sum() / kl_mask.sum().clamp(min=1.0)
    ratio = torch.exp(logp_now - logp_old)
    adv = advantages.unsqueeze(1)
    per_tok_loss = -torch.min(ratio * adv, torch.clamp(ratio, 1 - eps, 1 + eps) * adv)
    on_tok_mask = c_mask * is_online.unsqueeze(1)
    off_tok_mask = c_mask * (1 - is_online).unsqueeze(1)

    def _aggregate(token_loss, mask):
        if loss_type == "grpo":
            return ((token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
        if loss_type == "bnpo":
            return (token_loss * mask).sum() / mask.sum().clamp(min=1.0)
        return (token_loss * mask).sum() / (token_loss.size(0) * max_completion_length)

    on_loss = _aggregate(per_tok_loss, on_tok_mask)
    off_loss = _aggregate(per_tok_loss, off_tok_mask) if off_tok_mask.any() else torch.tensor(0.0)
    if beta != 0.0:
        on_loss = on_loss + beta * kl_loss
    return on_loss + off_policy_loss_coef * off_loss


def _replay_batch(algo: RePO):
    """Two prompts with G=3 fresh rows and 2 replayed rows each, every row a different length."""
    for pid, lengths in (("a", (1, 4, 2, 5)), ("b", (6, 3, 2, 1))):
        for i, n in enumerate(lengths):
            algo.buffer.add(pid, np.arange(20, 20 + n), np.linspace(-0.2, -1.0, n).astype(np.float32), float(i % 2), 0)
    groups = [
        RolloutGroup("a", [1, 2], [np.arange(10, 10 + n) for n in (2, 5, 3)], np.array([1.0, 0.0, 0.0]), 3),
        RolloutGroup("b", [3], [np.arange(10, 10 + n) for n in (7, 1, 4)], np.array([0.0, 1.0, 1.0]), 3),
    ]
    return algo.build_batch(groups, step=3)


def _tensors(batch, seed=0):
    """Current / old / reference log-probs and the mask for every row of ``batch`` (padded to the longest)."""
    gen = torch.Generator().manual_seed(seed)
    R, T = len(batch), max(len(c) for c in batch.completion_ids)
    mask = torch.zeros(R, T)
    old = torch.zeros(R, T)
    for i, c in enumerate(batch.completion_ids):
        mask[i, : len(c)] = 1
        if batch.old_logprobs[i] is not None:
            old[i, : len(c)] = torch.as_tensor(batch.old_logprobs[i])
    now = (old + 0.3 * torch.randn(R, T, generator=gen)) * mask  # off rows: ratios away from 1, some clipped
    on = torch.as_tensor(batch.source == 0).unsqueeze(1)
    old = (
        torch.where(on, now + 0.05 * torch.randn(R, T, generator=gen), old) * mask
    )  # on rows: nearly on-policy (num_iterations > 1)
    ref = (now + 0.5 * torch.randn(R, T, generator=gen)) * mask
    return now, old, ref, mask


def _our_loss_over_micro_batches(algo, batch, now, old, ref, mask, chunks):
    """Loss and gradient as the trainer computes them: one backward per micro-batch, weights fixed by build_batch."""
    leaf = now.clone().requires_grad_(True)
    total = 0.0
    for idx in chunks:
        sub = batch.select(np.asarray(idx))
        t = torch.as_tensor(idx)
        inputs = LossInputs(
            leaf[t],
            old[t],
            ref[t],
            mask[t],
            torch.tensor(sub.advantages),
            torch.tensor(sub.row_weights, dtype=torch.float32),
            torch.tensor(sub.token_sum),
            torch.tensor(sub.source),
            kl_weights=None if sub.kl_weights is None else torch.tensor(sub.kl_weights, dtype=torch.float32),
        )
        loss, _ = algo.loss(inputs)
        loss.backward()
        total += loss.item()
    return total, leaf.grad


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo"])
@pytest.mark.parametrize("beta", [0.0, 0.3])
def test_reference_weighting_equals_the_reference_loss_and_gradient_over_micro_batches(loss_type, beta):
    """loss_weighting=reference reproduces the reference code's loss for every loss type, with and without
    the KL: bnpo divides each term by its own token count, the KL is one token mean over the fresh tokens."""
    algo = make(
        strategy="recent_k",
        num_replays=2,
        min_cache_to_replay=2,
        max_cache_size=4,
        loss_type=loss_type,
        beta=beta,
        off_policy_loss_coef=0.7,
    )
    batch = _replay_batch(algo)
    assert batch.source.tolist() == [0] * 6 + [1] * 4
    now, old, ref, mask = _tensors(batch)
    leaf = now.clone().requires_grad_(True)
    expected = reference_compute_loss(
        leaf,
        old,
        ref,
        mask,
        torch.as_tensor(batch.source == 0, dtype=torch.float32),
        torch.tensor(batch.advantages),
        loss_type=loss_type,
        beta=beta,
        max_completion_length=8,
        off_policy_loss_coef=0.7,
    )
    expected.backward()
    for chunks in ([list(range(10))], [[0, 7, 3], [9, 1, 2, 8], [4, 5, 6]]):
        got, grad = _our_loss_over_micro_batches(algo, batch, now, old, ref, mask, chunks)
        assert got == pytest.approx(expected.item(), rel=1e-5, abs=1e-7)
        torch.testing.assert_close(grad, leaf.grad, rtol=1e-5, atol=1e-7)


def test_reference_bnpo_weights_each_term_by_its_own_token_count():
    algo = make(
        strategy="recent_k",
        num_replays=2,
        min_cache_to_replay=2,
        max_cache_size=4,
        loss_type="bnpo",
        off_policy_loss_coef=0.5,
    )
    b = _replay_batch(algo)
    n_on = sum(len(c) for c, s in zip(b.completion_ids, b.source) if s == 0)  # 22
    n_off = sum(len(c) for c, s in zip(b.completion_ids, b.source) if s == 1)  # 2 + 5 + 2 + 1 = 10
    np.testing.assert_allclose(b.row_weights, [1 / n_on] * 6 + [0.5 / n_off] * 4)
    assert b.token_sum.all() and b.kl_weights is None  # beta = 0: no KL term


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo"])
def test_repo_none_with_kl_is_grpo_under_paper_weighting_and_the_reference_kl_under_reference(loss_type):
    """Decision: repo:none with beta > 0 under loss_weighting=paper is exactly grpo (TRL's GRPO: the KL is part
    of each token's loss, aggregated by loss_type); under reference it is the reference code's replay_strategy=none,
    whose KL is one token mean over the fresh tokens (the same as grpo's only for bnpo)."""
    from algorithms.grpo import GRPO, GRPOConfig

    groups = [
        RolloutGroup("a", [1, 2], [np.arange(10, 10 + n) for n in (2, 5, 3)], np.array([1.0, 0.0, 0.0]), 0),
        RolloutGroup("b", [3], [np.arange(10, 10 + n) for n in (7, 1, 4)], np.array([0.0, 1.0, 1.0]), 0),
    ]
    grpo = GRPO(GRPOConfig(beta=0.3, loss_type=loss_type), seed=0, max_completion_length=8)
    gb = grpo.build_batch(groups, step=0)
    now, old, ref, mask = _tensors(gb)
    chunks = [[0, 5], [1, 2, 3, 4]]
    g_loss, g_grad = _our_loss_over_micro_batches(grpo, gb, now, old, ref, mask, chunks)
    paper = make(strategy="none", beta=0.3, loss_type=loss_type, loss_weighting="paper")
    p_loss, p_grad = _our_loss_over_micro_batches(paper, paper.build_batch(groups, step=0), now, old, ref, mask, chunks)
    assert p_loss == g_loss and torch.equal(p_grad, g_grad)
    reference = make(strategy="none", beta=0.3, loss_type=loss_type)
    r_loss, _ = _our_loss_over_micro_batches(
        reference, reference.build_batch(groups, step=0), now, old, ref, mask, chunks
    )
    expected = reference_compute_loss(
        now,
        old,
        ref,
        mask,
        torch.ones(6),
        torch.tensor(gb.advantages),
        loss_type=loss_type,
        beta=0.3,
        max_completion_length=8,
        off_policy_loss_coef=1.0,
    )
    assert r_loss == pytest.approx(expected.item(), rel=1e-5)
    assert (r_loss == pytest.approx(g_loss, rel=1e-5)) == (loss_type == "bnpo")


def test_replay_counts_may_differ_per_prompt():
    """Deliberate difference (README): the reference reshapes replayed rewards with view(-1, R), so every prompt must
    replay the same number of rows; here each prompt replays min(its buffer, k), and a one-row replay gets advantage 0."""
    algo = make(strategy="recent_k", num_replays=3, min_cache_to_replay=1, max_cache_size=4)
    fill(algo, "a", [0.0, 1.0, 1.0])
    fill(algo, "b", [1.0])
    b = algo.build_batch([group("a"), group("b")], step=1)
    assert b.source.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert b.group_index.tolist() == [0, 0, 1, 1, 0, 0, 0, 1]
    assert b.advantages[-1] == 0.0 and np.all(np.isfinite(b.advantages))


def test_highest_k_ranks_by_the_stored_weighted_total_reward():
    """Deliberate difference (README): the buffer stores the step's weighted total reward (accuracy + format_reward_weight
    x format), and highest_k ranks by it; the reference ranks by the unweighted sum of its per-function rewards."""
    algo = make(strategy="highest_k", num_replays=1, min_cache_to_replay=2, max_cache_size=4)
    g = group("p", rewards=(0.25, 1.0))  # (accuracy 0, format 1) with format weight 0.25, then (accuracy 1, format 0)
    algo.after_step([g], algo.build_batch([g], step=0), [np.zeros(2, np.float32), np.zeros(3, np.float32)], step=0)
    assert algo.buffer.rewards("p").tolist() == [0.25, 1.0]
    b = algo.build_batch([group("p")], step=1)
    # the newer, correct completion (total 1.0, length 3); the reference ties both at an unweighted sum of 1 and takes the older
    assert len(b.completion_ids[-1]) == 3


def test_trainer_applies_the_reference_kl_as_one_token_mean_across_micro_batches(make_config):
    """End to end: with beta > 0 and micro-batches, the trainer hands the batch's KL weights to the loss, so the logged
    KL term equals the token mean of the KL over the fresh tokens (kl/mean) at every step."""
    from harness.trainer import Trainer

    cfg = make_config(
        {"name": "repo:recent_k", "beta": 0.5, "min_cache_to_replay": 4, "max_cache_size": 4, "num_replays": 2},
        train={"max_steps": 3, "micro_batch_size": 3, "learning_rate": 1e-2, "prompts_per_step": 2},
        data={"train_size": 2},
    )
    tr = Trainer(cfg, progress=False)
    seen = []
    tr.callbacks.append(lambda r: seen.append((r.metrics["loss/kl"], r.metrics["kl/mean"], r.metrics["replay/rows"])))
    tr.fit()
    assert seen[-1][1] > 0 and seen[-1][2] > 0  # the policy has moved away from the reference; rows were replayed
    for kl_loss, kl_mean, _ in seen:
        assert kl_loss == pytest.approx(kl_mean, rel=1e-4, abs=1e-9)
