"""Prioritized rollout replay on hand-computed cases: priorities, store, replayed rows, loss and gradient, state."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from algorithms.base import LossInputs, RolloutGroup, resolve_algorithm
from algorithms.grpo import group_advantages
from algorithms.prioritized_replay import PrioritizedReplay, priorities


def make(**fields) -> PrioritizedReplay:
    cls, cfg = resolve_algorithm({"name": "prioritized_replay", **fields})
    return cls(cfg, seed=0, max_completion_length=8)


def group(pid, rewards, version=0, tokens=10, lengths=(2, 3)):
    comps = [np.arange(tokens, tokens + n) for n in lengths]
    return RolloutGroup(pid, [1, 2], comps, np.array(rewards, dtype=float), version)


def step(algo, groups, lp=-0.5):
    batch = algo.build_batch(groups, step=0)
    algo.after_step(groups, batch, [np.full(len(c), lp, np.float32) for c in batch.completion_ids], step=0)
    return batch


def test_priority_is_abs_advantage_to_the_alpha_times_freshness():
    a, age = np.array([0.5, -1.0, 2.0]), np.array([0, 1, 2])
    np.testing.assert_allclose(priorities(a, age, 1.0, 0.0), [0.5, 1.0, 2.0])
    np.testing.assert_allclose(priorities(a, age, 2.0, 0.0), [0.25, 1.0, 4.0])
    np.testing.assert_allclose(priorities(a, age, 1.0, 1.0), [0.5, math.exp(-1), 2 * math.exp(-2)])


def test_only_fresh_rollouts_with_signal_are_stored_oldest_evicted_first():
    algo = make(buffer_size=3, replay_rows=0)
    step(algo, [group("a", (1.0, 0.0), tokens=10), group("b", (1.0, 1.0), tokens=20)])
    assert [int(e.completion_ids[0]) for e in algo.buffer] == [10, 10]  # b is flat: zero advantage, not stored
    a = 0.5 / (math.sqrt(0.5) + 1e-4)
    assert [e.advantage for e in algo.buffer] == pytest.approx([a, -a])
    step(algo, [group("c", (0.0, 2.0), tokens=30, version=1)])
    assert [int(e.completion_ids[0]) for e in algo.buffer] == [10, 30, 30]  # capacity 3: the oldest went
    np.testing.assert_array_equal(algo.buffer[-1].logprobs, np.full(3, -0.5, np.float32))


def test_replayed_rows_are_added_with_stored_advantages_and_logprobs_and_weighted_per_term():
    algo = make(replay_rows=2, off_policy_loss_coef=0.5)
    step(algo, [group("a", (1.0, 0.0), tokens=50)], lp=-0.7)
    b = algo.build_batch([group("c", (0.0, 1.0), version=2), group("d", (1.0, 1.0), version=2)], step=1)
    assert b.source.tolist() == [0, 0, 0, 0, 1, 1] and b.group_index.tolist() == [0, 0, 1, 1, -1, -1]
    assert sorted(int(c[0]) for c in b.completion_ids[4:]) == [50, 50]  # both stored rollouts, drawn without repeats
    stored = {len(c): (a, lp) for c, a, lp in zip(b.completion_ids[4:], b.advantages[4:], b.old_logprobs[4:])}
    np.testing.assert_allclose([stored[2][0], stored[3][0]], group_advantages(np.array([1.0, 0.0])), rtol=1e-6)
    np.testing.assert_array_equal(stored[3][1], np.full(3, -0.7, np.float32))
    np.testing.assert_allclose(b.row_weights, [1 / 4] * 4 + [0.5 / 2] * 2)  # each term over its own rows
    assert b.metrics["per/rows"] == 2 and b.metrics["per/age_mean"] == 2
    assert b.metrics["effective/step"] == 0.5  # the step's own prompts: c has signal, d not


def test_max_age_evicts_and_freshness_decays():
    algo = make(replay_rows=4, max_age=1)
    step(algo, [group("a", (1.0, 0.0), version=0)])
    assert len(algo.build_batch([group("x", (1.0, 1.0), version=1)], step=1)) == 4  # age 1: kept, replayed
    assert len(algo.build_batch([group("x", (1.0, 1.0), version=2)], step=2)) == 2  # age 2 > 1: evicted
    assert algo.buffer == []


def test_loss_and_gradient_hand_computed():
    algo = make(replay_rows=1)
    step(algo, [group("a", (1.0, 0.0), lengths=(2, 2))], lp=-0.7)
    b = algo.build_batch([group("c", (0.0, 1.0), lengths=(2, 2), version=1)], step=1)
    A_off = float(b.advantages[2])  # +a or -a, whichever rollout was drawn
    old = torch.tensor([[0.0, 0.0], [0.0, 0.0], [-0.7, -0.7]])
    lp = old.clone()
    lp[2] += math.log(1.5)  # the replayed row's ratio: 1.5
    lp.requires_grad_(True)
    inputs = LossInputs(
        lp,
        old,
        None,
        torch.ones(3, 2),
        torch.tensor(b.advantages),
        torch.tensor(b.row_weights, dtype=torch.float32),
        torch.tensor(b.token_sum),
        torch.tensor(b.source),
    )
    loss, metrics = algo.loss(inputs)
    clipped = 1.2 if A_off > 0 else 1.5  # A > 0: min(1.5 A, 1.2 A) = 1.2 A; A < 0: min(-1.5 a, -1.2 a) = 1.5 A
    assert metrics["loss/on_policy"][0].item() == pytest.approx(0.0, abs=1e-7)  # ratio 1: -(a - a) / 2
    assert metrics["loss/off_policy"][0].item() == pytest.approx(-clipped * A_off, rel=1e-5)  # one row, weight 1
    assert loss.item() == pytest.approx(-clipped * A_off, rel=1e-5)
    loss.backward()
    a = float(b.advantages[1])
    expected = torch.tensor([[a / 4, a / 4], [-a / 4, -a / 4], [0.0, 0.0]])  # fresh: -A r / (2 tokens x 2 rows)
    if A_off < 0:  # unclipped: d(-r A)/dlogp = -1.5 A per token, token mean over 2
        expected[2] = -1.5 * A_off / 2
    torch.testing.assert_close(lp.grad, expected)


def test_state_round_trip_gives_the_same_next_batch():
    algo = make(replay_rows=2, freshness_tau=2.0)
    for i, rewards in enumerate([(1.0, 0.0), (0.0, 1.0), (1.0, 0.5)]):
        step(algo, [group(f"p{i}", rewards, tokens=10 * (i + 1), version=i)], lp=-0.1 * (i + 1))
    tensors, meta = algo.state_dict()
    twin = make(replay_rows=2, freshness_tau=2.0)
    twin.load_state_dict(tensors, meta)
    for _ in range(3):
        x, y = (m.build_batch([group("q", (1.0, 1.0), version=4)], step=4) for m in (algo, twin))
        assert [c.tolist() for c in x.completion_ids] == [c.tolist() for c in y.completion_ids]
        assert all(np.array_equal(u, v) for u, v in zip(x.old_logprobs[2:], y.old_logprobs[2:]))
        np.testing.assert_array_equal(x.advantages, y.advantages)


@pytest.mark.slow
def test_three_steps_on_tiny_and_resume_gives_the_same_next_batch(make_config):
    from harness.trainer import Trainer

    cfg = make_config(
        {"name": "prioritized_replay", "replay_rows": 4},
        train={"save_every": 2, "keep_checkpoints": 3},
        data={"train_size": 8},
    )
    full = Trainer(cfg, progress=False)
    records = []
    full.callbacks.append(records.append)
    assert full.fit()["steps"] == 3
    assert records[0].metrics["per/rows"] == 0 and any(r.metrics["per/rows"] > 0 for r in records[1:])
    resumed = Trainer(cfg, resume=str(full.output_dir / "checkpoint-2"), progress=False)
    rec = resumed.train_step()
    assert rec.completion_ids == records[2].completion_ids
    for k in ("per/rows", "per/buffer_rollouts", "loss/off_policy", "samples/nonzero_adv"):
        assert rec.metrics[k] == records[2].metrics[k], k
    resumed.close()
