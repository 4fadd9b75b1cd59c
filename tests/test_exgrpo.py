"""ExGRPO on hand-computed cases: buckets, prompt draws, the delayed start, the mixed group, loss, state; on tiny."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from algorithms.base import LossInputs, RolloutGroup, check_revisits, resolve_algorithm
from algorithms.exgrpo import ExGRPO, bucket_of, bucket_weights, draw_prompts, lowest_entropy


def make(**fields) -> ExGRPO:
    cls, cfg = resolve_algorithm({"name": "exgrpo", **fields})
    return cls(cfg, seed=0, max_completion_length=8)


def group(pid, rewards, version=0, tokens=10, lengths=None):
    lengths = lengths or [2] * len(rewards)
    comps = [np.arange(tokens + 10 * j, tokens + 10 * j + n) for j, n in enumerate(lengths)]
    return RolloutGroup(pid, [1, 2], comps, np.array(rewards, dtype=float), version)


def step(algo, groups, lp=None):
    """build_batch + after_step; behaviour log-probs ``lp[row]`` (a constant per row), default -0.5."""
    batch = algo.build_batch(groups, step=0)
    lp = lp or [-0.5] * len(batch)
    behaviour = [np.full(len(c), v, np.float32) for c, v in zip(batch.completion_ids, lp)]
    algo.after_step(groups, batch, behaviour, step=0)
    return batch


def test_buckets_and_their_weights():
    assert [bucket_of(r) for r in (0.0, 0.25, 0.26, 0.75, 0.76, 0.99, 1.0)] == [
        "low",
        "low",
        "medium",
        "medium",
        "high",
        "high",
        None,  # retired
    ]
    w = bucket_weights(1.0)
    assert w["medium"] == 1.0 and w["low"] == pytest.approx(math.exp(-(0.375**2) / 2)) == w["high"]
    narrow = bucket_weights(0.1)
    assert narrow["low"] == pytest.approx(math.exp(-(0.375**2) / 0.02))  # ~8.8e-4: medium nearly always


def test_draws_favour_the_medium_bucket_never_repeat_and_skip_retired():
    cands = {"lo": 0.1, "mid": 0.5, "hi": 0.9, "done": 1.0}
    assert sorted(draw_prompts(cands, 5, 1.0, random.Random(0))) == ["hi", "lo", "mid"]  # distinct, retired left out
    firsts = [draw_prompts(cands, 1, 0.2, random.Random(s))[0] for s in range(400)]
    # sigma 0.2: weights low = high = exp(-0.375^2 / 0.08) = 0.172 vs medium 1 -> medium 1 / 1.344 = 74%
    assert firsts.count("mid") / 400 == pytest.approx(1 / (1 + 2 * math.exp(-(0.375**2) / 0.08)), abs=0.06)
    # within a bucket, uniform
    many = {f"m{i}": 0.5 for i in range(4)}
    counts = np.bincount([int(draw_prompts(many, 1, 1.0, random.Random(s))[0][1]) for s in range(2000)], minlength=4)
    assert counts.min() > 400


def test_lowest_entropy_is_the_highest_mean_logprob_ties_newest():
    lps = [np.array([-1.0, -1.0]), np.array([-0.2, -0.4]), np.array([-0.3, -0.3])]
    assert lowest_entropy(lps, np.array([0, 0, 5])) == 2  # tie at 0.3: the newer (version 5)
    assert lowest_entropy(lps, np.array([7, 0, 5])) == 2
    assert lowest_entropy(lps[:2], np.array([0, 0])) == 1


def test_only_successes_are_stored_and_nothing_is_revisited_before_the_start_accuracy():
    algo = make(start_accuracy=0.5)
    step(algo, [group("a", (1.0, 0.0, 0.0, 0.0)), group("b", (0.0, 0.0, 0.0, 0.0))], lp=[-0.1, -0.2, -0.3, -0.4] * 2)
    assert algo.store.size("a") == 1 and algo.store.size("b") == 0
    np.testing.assert_array_equal(algo.store.get("a", [0])[0].logprobs, np.full(2, -0.1, np.float32))
    assert algo.pass_rate == {"a": 0.25, "b": 0.0}
    assert not algo.started and algo.revisit_prompts(1, 4) == []  # 1/8 succeeded < 0.5
    step(algo, [group("c", (1.0, 1.0, 1.0, 0.0)), group("d", (1.0, 1.0, 0.0, 0.0))])
    assert algo.started  # 5/8 >= 0.5
    drawn = algo.revisit_prompts(2, 4)
    assert len(drawn) == 2 and set(drawn) <= {"a", "c", "d"}  # 2 = 0.5 x 4 of the three with successes
    assert make(experience_ratio=0.9).revisit_prompts(0, 2) == []  # never started, and never all of a step


def test_a_retired_prompt_is_not_revisited_until_it_fails_again():
    algo = make(start_accuracy=0.0)
    step(algo, [group("a", (1.0, 1.0))])
    assert algo.revisit_prompts(1, 4) == []  # a: pass rate 1, retired
    step(algo, [group("a", (1.0, 0.0))])
    assert algo.revisit_prompts(2, 4) == ["a"]


def test_a_revisited_group_is_mixed_with_its_lowest_entropy_stored_success():
    algo = make(start_accuracy=0.0)
    # a's two successes: behaviour log-probs -0.9 (rows 0) and -0.2 (row 1) -> the second is the lowest-entropy one
    step(algo, [group("a", (1.0, 1.0, 0.0, 0.0), version=0, tokens=50)], lp=[-0.9, -0.2, -0.5, -0.5])
    assert algo.revisit_prompts(1, 2) == ["a"]
    b = algo.build_batch(
        [group("new", (1.0, 0.0, 0.0, 0.0), version=2), group("a", (0.0, 0.0, 0.0, 0.0), version=2)], 1
    )
    assert b.source.tolist() == [0] * 8 + [1]
    assert b.completion_ids[8].tolist() == [60, 61]  # the success generated second (tokens 60..)
    np.testing.assert_array_equal(b.old_logprobs[8], np.full(2, -0.2, np.float32))
    assert b.group_index.tolist() == [0] * 4 + [1] * 4 + [1] and b.policy_version.tolist() == [2] * 8 + [0]
    # mixed group a: rewards 0,0,0,0,1 -> mean 0.2, unbiased std sqrt(0.2) = 0.4472
    s = math.sqrt(0.2) + 1e-4
    np.testing.assert_allclose(b.advantages[4:], [-0.2 / s] * 4 + [0.8 / s], rtol=1e-5)
    np.testing.assert_allclose(b.advantages[:4], np.array([0.75, -0.25, -0.25, -0.25]) / (0.5 + 1e-4), rtol=1e-5)
    np.testing.assert_allclose(b.row_weights, [1 / 9] * 9)  # GRPO's loss over every row of the step
    assert b.metrics["exgrpo/experience_groups"] == 1 and b.metrics["exgrpo/rescued_groups"] == 1
    assert b.metrics["effective/step"] == 1.0 and b.metrics["groups/zero_std_frac"] == 0.5
    assert b.metrics["exgrpo/staleness_mean"] == 2
    assert algo.rows_needing_logprobs(b).tolist() == [True] + [False] * 8  # fresh successes only

    plain = make(start_accuracy=0.0, importance_correction=False)
    step(plain, [group("a", (1.0, 0.0), tokens=50)])
    plain.revisit_prompts(1, 2)
    assert plain.build_batch([group("x", (0.0, 1.0)), group("a", (0.0, 0.0))], 1).old_logprobs[4] is None


def test_loss_and_gradient_of_the_stored_row_are_clipped_against_its_behaviour_logprobs():
    algo = make(start_accuracy=0.0)
    step(algo, [group("a", (1.0, 0.0), tokens=50)], lp=[-0.7, -0.5])
    algo.revisit_prompts(1, 2)
    b = algo.build_batch([group("a", (0.0, 0.0), version=1)], 1)  # rows: fresh 0, 0; stored success
    old = torch.tensor([[0.0, 0.0], [0.0, 0.0], [-0.7, -0.7]])
    lp = old.clone()
    lp[2] += math.log(1.5)  # ratio 1.5 on the stored row
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
    loss, _ = algo.loss(inputs)
    A_neg, A_pos = float(b.advantages[0]), float(b.advantages[2])
    assert A_pos > 0 > A_neg
    # fresh rows (ratio 1): -A_neg each; stored: -min(1.5 A, 1.2 A) = -1.2 A; mean over 3 rows
    assert loss.item() == pytest.approx((-2 * A_neg - 1.2 * A_pos) / 3, rel=1e-5)
    loss.backward()
    expected = torch.zeros(3, 2)
    expected[:2] = -A_neg / (2 * 3)  # the stored row is clipped: no gradient
    torch.testing.assert_close(lp.grad, expected)


def test_state_round_trip_gives_the_same_next_revisits_and_batch():
    algo = make(start_accuracy=0.0, max_per_prompt=2)
    for i in range(6):
        step(algo, [group(f"p{i}", (1.0, 0.0, float(i % 2), 0.0), version=i, tokens=10 * i)], lp=[-0.1 * (i + 1)] * 4)
    tensors, meta = algo.state_dict()
    twin = make(start_accuracy=0.0, max_per_prompt=2)
    twin.load_state_dict(tensors, meta)
    assert twin.pass_rate == algo.pass_rate and twin.started
    for _ in range(3):
        ra, rb = algo.revisit_prompts(7, 8), twin.revisit_prompts(7, 8)
        assert ra == rb and len(ra) == 4
        groups = [group(p, (0.0, 0.0, 0.0, 0.0), version=7) for p in ra]
        a, b = algo.build_batch(groups, 7), twin.build_batch(groups, 7)
        assert [c.tolist() for c in a.completion_ids] == [c.tolist() for c in b.completion_ids]
        np.testing.assert_array_equal(a.advantages, b.advantages)


def test_revisits_are_checked_against_the_owned_prompts():
    owned = {"a": 3, "b": 7}
    assert check_revisits(["b", "a"], owned, 4, "x") == [7, 3]
    with pytest.raises(ValueError, match="does not own"):
        check_revisits(["c"], owned, 4, "x")
    with pytest.raises(ValueError, match="at most 1 distinct"):
        check_revisits(["a", "b"], owned, 2, "x")
    with pytest.raises(ValueError, match="at most 3"):
        check_revisits(["a", "a"], owned, 4, "x")


@pytest.mark.slow
def test_three_steps_on_tiny_revisit_owned_prompts_and_resume_gives_the_same_next_batch(make_config):
    from harness.trainer import Trainer

    # 8 prompts, 4 per step; start at once; half of each step from the store once it holds successes
    cfg = make_config(
        {"name": "exgrpo", "start_accuracy": 0.0, "success_reward": 0.5},
        train={"save_every": 2, "keep_checkpoints": 3, "max_steps": 4},
        data={"train_size": 8},
    )
    full = Trainer(cfg, progress=False)
    records, revisited = [], []
    ask = full.algorithm.revisit_prompts
    full.algorithm.revisit_prompts = lambda *a: revisited.append(ask(*a)) or revisited[-1]
    full.callbacks.append(records.append)
    assert full.fit()["steps"] == 4
    assert all(len(r.prompt_ids) == 4 for r in records)  # every step generates prompts_per_step prompts
    assert any(revisited), "nothing was revisited in 4 steps"
    seen: set[str] = set()
    for asked, rec in zip(revisited, records):
        assert asked == rec.prompt_ids[len(rec.prompt_ids) - len(asked) :]  # generated after the sampler's
        assert set(asked) <= seen  # only prompts trained before
        seen |= set(rec.prompt_ids)
    assert sum(r.metrics["exgrpo/experience_groups"] for r in records) > 0
    resumed = Trainer(cfg, resume=str(full.output_dir / "checkpoint-2"), progress=False)
    rec = resumed.train_step()
    assert rec.prompt_ids == records[2].prompt_ids and rec.completion_ids == records[2].completion_ids
    for k in ("exgrpo/experience_groups", "exgrpo/store_entries", "loss/policy", "samples/nonzero_adv"):
        assert rec.metrics[k] == records[2].metrics[k], k
    resumed.close()
