"""Zero-variance group substitution on hand-computed cases: which groups are replaced, advantages, loss, store, state."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from algorithms.base import LossInputs, RolloutGroup, resolve_algorithm
from algorithms.grpo import group_advantages
from algorithms.zero_variance import ZVSubstitute, evict_index, group_score, weighted_draws


def make(**fields) -> ZVSubstitute:
    cls, cfg = resolve_algorithm({"name": "zv_substitute", **fields})
    return cls(cfg, seed=0, max_completion_length=8)


def group(pid, rewards, version=0, tokens=10, lengths=(2, 3)):
    comps = [np.arange(tokens, tokens + n) for n in lengths]
    return RolloutGroup(pid, [1, 2], comps, np.array(rewards, dtype=float), version)


def step(algo, groups, version_lp=-0.5):
    """build_batch + after_step with behaviour log-probs = version_lp everywhere."""
    batch = algo.build_batch(groups, step=0)
    behaviour = [np.full(len(c), version_lp, np.float32) for c in batch.completion_ids]
    algo.after_step(groups, batch, behaviour, step=0)
    return batch


def test_score_is_sum_of_abs_advantages_times_std():
    a = 0.5 / (math.sqrt(0.5) + 1e-4)
    assert group_score(np.array([1.0, 0.0])) == pytest.approx(2 * a * math.sqrt(0.5))
    assert group_score(np.array([1.0, 1.0])) == 0.0
    r = np.array([1.0, 0.0, 0.0, 0.0])  # mean 1/4, unbiased std 1/2
    adv = np.abs((r - 0.25) / (0.5 + 1e-4)).sum()
    assert group_score(r) == pytest.approx(adv * 0.5)


def test_weighted_draws_without_then_with_repeats():
    rng = random.Random(0)
    assert sorted(weighted_draws([1.0, 2.0, 3.0], 3, rng)) == [0, 1, 2]  # no repeats while there are enough
    assert weighted_draws([0.0, 1.0, 0.0], 1, rng) == [1]
    assert weighted_draws([0.0, 1.0], 3, rng) == [1, 1, 1]  # more than stored: repeats (TRL)
    counts = np.bincount(weighted_draws([1.0, 3.0], 4000, random.Random(1)), minlength=2)
    assert counts[1] / 4000 == pytest.approx(0.75, abs=0.03)


def test_fresh_groups_with_signal_enter_the_store_after_the_step_never_the_same_step():
    algo = make()
    b = step(algo, [group("a", (1.0, 0.0)), group("b", (0.0, 0.0))])
    assert b.source.tolist() == [0, 0, 0, 0]  # nothing stored yet: the flat group stays (zero gradient)
    assert b.metrics["zv/unreplaced"] == 1 and b.metrics["zv/replaced"] == 0
    assert [s.rewards.tolist() for s in algo.store] == [[1.0, 0.0]]  # only the group with signal
    np.testing.assert_array_equal(algo.store[0].logprobs[1], np.full(3, -0.5, np.float32))


def test_a_flat_group_is_replaced_in_place_by_a_stored_one_with_its_behaviour_logprobs():
    algo = make()
    step(algo, [group("a", (1.0, 0.0), version=0, tokens=50)], version_lp=-0.7)
    b = algo.build_batch([group("c", (0.5, 1.5), version=3), group("d", (1.0, 1.0), version=3)], step=1)
    assert b.source.tolist() == [0, 0, 1, 1]
    assert [c.tolist() for c in b.completion_ids[2:]] == [[50, 51], [50, 51, 52]]  # the stored group's
    np.testing.assert_array_equal(b.old_logprobs[2], np.full(2, -0.7, np.float32))
    assert b.old_logprobs[0] is None  # fresh rows: the pre-step policy
    expected_adv = np.concatenate([group_advantages(np.array([0.5, 1.5])), group_advantages(np.array([1.0, 0.0]))])
    np.testing.assert_allclose(b.advantages, expected_adv, rtol=1e-6)  # [-A, A] fresh, [A, -A] stored
    assert b.group_index.tolist() == [0, 0, 1, 1] and b.policy_version.tolist() == [3, 3, 0, 0]
    np.testing.assert_allclose(b.row_weights, [1 / 4] * 4)  # GRPO's grpo loss over the step's rows
    assert b.metrics["effective/step"] == 1.0 and b.metrics["groups/zero_std_frac"] == 0.5
    assert b.metrics["zv/replaced"] == 1 and b.metrics["zv/staleness_mean"] == 3

    # Loss on the replaced rows: current log-probs log(1.5) above the stored ones -> ratio 1.5, clipped at 1.2 for A>0
    old = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [-0.7, -0.7, 0.0], [-0.7, -0.7, -0.7]])
    lp = old.clone()
    lp[2:] += math.log(1.5)
    lp.requires_grad_(True)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 1, 0], [1, 1, 1]], dtype=torch.float32)
    inputs = LossInputs(
        lp,
        old,
        None,
        mask,
        torch.tensor(b.advantages),
        torch.tensor(b.row_weights, dtype=torch.float32),
        torch.tensor(b.token_sum),
        torch.tensor(b.source),
    )
    loss, _ = algo.loss(inputs)
    A = float(b.advantages[1])
    # fresh rows (ratio 1): A, -A; stored rows: -min(1.5 A, 1.2 A) = -1.2 A and -min(-1.5 A, -1.2 A) = 1.5 A; all / 4
    assert loss.item() == pytest.approx((A - A - 1.2 * A + 1.5 * A) / 4, rel=1e-5)
    loss.backward()
    # d/dlogp of -r A_row / (len x 4): unclipped tokens only (stored row 2, A > 0 and ratio 1.5 > 1.2, is clipped)
    expected = torch.zeros(4, 3)
    expected[0, :2] = A / (2 * 4)
    expected[1, :] = -A / (3 * 4)
    expected[3, :] = 1.5 * A / (3 * 4)
    torch.testing.assert_close(lp.grad, expected)


def test_store_evicts_lowest_score_or_oldest():
    algo = make(store_size=2)
    for pid, rewards in [("x", (1.0, 0.0, 0.0, 0.0)), ("y", (1.0, 0.0, 1.0, 0.0)), ("z", (1.0, 1.0, 1.0, 0.0))]:
        step(algo, [group(pid, rewards, lengths=(2, 2, 2, 2))])
    # scores: x = z (one odd sample out of four) < y (two and two): x is the older of the two lowest
    assert group_score(np.array([1.0, 0.0, 0.0, 0.0])) < group_score(np.array([1.0, 0.0, 1.0, 0.0]))
    assert [s.rewards.tolist() for s in algo.store] == [[1.0, 0.0, 1.0, 0.0], [1.0, 1.0, 1.0, 0.0]]
    rec = make(store_size=2, priority="recency")
    for pid, rewards in [("x", (1.0, 0.0)), ("y", (0.0, 1.0)), ("z", (2.0, 0.0))]:
        step(rec, [group(pid, rewards)])
    assert [s.rewards.tolist() for s in rec.store] == [[0.0, 1.0], [2.0, 0.0]]
    assert evict_index(rec.store, "recency") == 0


def test_recency_takes_the_newest_each_once_and_leaves_the_rest():
    algo = make(priority="recency")
    step(algo, [group("x", (1.0, 0.0), tokens=20)])
    step(algo, [group("y", (0.0, 1.0), tokens=30)])
    b = algo.build_batch([group(p, (0.0, 0.0)) for p in "abc"], step=2)
    assert [int(c[0]) for c in b.completion_ids] == [30, 30, 20, 20, 10, 10]  # newest first; the third stays
    assert b.metrics["zv/replaced"] == 2 and b.metrics["zv/unreplaced"] == 1


def test_state_round_trip_gives_the_same_next_batch():
    algo = make(store_size=4)
    for i, rewards in enumerate([(1.0, 0.0), (0.0, 1.0), (1.0, 0.5), (0.2, 0.0)]):
        step(algo, [group(f"p{i}", rewards, tokens=10 * (i + 1))], version_lp=-0.1 * (i + 1))
    tensors, meta = algo.state_dict()
    twin = make(store_size=4)
    twin.load_state_dict(tensors, meta)
    flat = [group(p, (0.0, 0.0)) for p in "abc"]
    for _ in range(3):
        a, b = algo.build_batch(flat, step=5), twin.build_batch(flat, step=5)
        assert [c.tolist() for c in a.completion_ids] == [c.tolist() for c in b.completion_ids]
        assert all(np.array_equal(x, y) for x, y in zip(a.old_logprobs, b.old_logprobs))
        np.testing.assert_array_equal(a.advantages, b.advantages)


@pytest.mark.slow
def test_three_steps_on_tiny_and_resume_gives_the_same_next_batch(make_config):
    from harness.trainer import Trainer

    # 4 prompts, format reward 0.5: groups with and without signal, so later steps can replace flat groups
    cfg = make_config(
        {"name": "zv_substitute", "store_size": 8},
        train={"save_every": 2, "keep_checkpoints": 3},
        data={"train_size": 4},
    )
    full = Trainer(cfg, progress=False)
    records = []
    full.callbacks.append(records.append)
    assert full.fit()["steps"] == 3
    assert all("zv/store_groups" in r.metrics for r in records)
    resumed = Trainer(cfg, resume=str(full.output_dir / "checkpoint-2"), progress=False)
    rec = resumed.train_step()
    assert rec.completion_ids == records[2].completion_ids
    for k in ("zv/replaced", "zv/store_groups", "loss/policy", "samples/nonzero_adv"):
        assert rec.metrics[k] == records[2].metrics[k], k
    resumed.close()
