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
    algo = make(strategy="all", min_cache_to_replay=2, max_cache_size=4, loss_weighting="paper", off_policy_loss_coef=2.0)
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
    inputs = LossInputs(new, old, None, mask, torch.tensor(b.advantages), torch.tensor(b.row_weights, dtype=torch.float32), torch.tensor(b.token_sum), torch.tensor(b.source))
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
    Trainer(make_config(algo, train={"max_steps": 2, "prompts_per_step": 4}, data={"train_size": 8}), progress=False)  # 1 visit < 3
    err = capsys.readouterr().err
    assert "visits each prompt ~1.0 times: it will train like GRPO" in err and "from its visit 3 on" in err
    Trainer(make_config(algo, train={"max_steps": 6, "prompts_per_step": 4}, data={"train_size": 8}), progress=False)  # 3 visits: replays
    assert "train like GRPO" not in capsys.readouterr().err
    Trainer(make_config("grpo", train={"max_steps": 2, "prompts_per_step": 4}, data={"train_size": 8}), progress=False)
    assert "warning" not in capsys.readouterr().err
