"""DAPO's dynamic sampling on hand-computed cases, the trainer's resampling seam, and DAPO's budget accounting."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from algorithms.base import GroupSelection, LossInputs, RolloutGroup, check_selection, resolve_algorithm
from algorithms.dapo import DAPO, dynamic_selection, has_signal
from algorithms.grpo import group_advantages
from harness.config import ConfigError


def make(**fields) -> DAPO:
    cls, cfg = resolve_algorithm({"name": "dapo", **fields})
    return cls(cfg, seed=0, max_completion_length=8)


def group(pid, rewards, lengths=None):
    lengths = lengths or [2] * len(rewards)
    return RolloutGroup(pid, [1, 2], [np.arange(10, 10 + n) for n in lengths], np.array(rewards, dtype=float), 0)


FLAT, SIGNAL = (0.0, 0.0), (1.0, 0.0)


def test_signal_means_rewards_not_all_equal():
    assert has_signal(np.array([1.0, 0.0])) and has_signal(np.array([0.5, 0.5, 1.5]))
    assert not has_signal(np.array([1.0, 1.0])) and not has_signal(np.array([0.0, 0.0, 0.0]))
    assert not has_signal(np.array([1.0]))


def test_dynamic_selection_hand_computed():
    s = [False, True, False, True]
    # enough groups with signal: the first `target` of them, nothing more
    assert dynamic_selection(s, rounds=0, target=2, max_rounds=3, round_prompts=0) == ([1, 3], 0)
    assert dynamic_selection(s, rounds=0, target=1, max_rounds=3, round_prompts=0) == ([1], 0)
    # one missing: ask for the missing count, or round_prompts when set
    assert dynamic_selection(s, rounds=0, target=3, max_rounds=3, round_prompts=0) == ([1, 3], 1)
    assert dynamic_selection(s, rounds=2, target=3, max_rounds=3, round_prompts=4) == ([1, 3], 4)
    # rounds spent: train on what there is
    assert dynamic_selection(s, rounds=3, target=3, max_rounds=3, round_prompts=0) == ([1, 3], 0)
    # nothing with signal and no rounds left: the first round's groups (zero gradient), never an empty step
    assert dynamic_selection([False] * 6, rounds=1, target=4, max_rounds=1, round_prompts=0) == ([0, 1, 2, 3], 0)


def test_select_groups_drops_flat_groups_and_asks_for_the_missing_ones():
    algo = make(max_gen_batches=2)
    groups = [group("a", FLAT), group("b", SIGNAL), group("c", (1.0, 1.0)), group("d", (0.5, 1.5))]
    sel = algo.select_groups(groups, rounds=0, prompts_per_step=4)
    assert sel.keep == [1, 3] and sel.more_prompts == 2 and sel.warning is None
    groups += [group("e", SIGNAL), group("f", FLAT)]
    sel = algo.select_groups(groups, rounds=1, prompts_per_step=4)
    assert sel.keep == [1, 3, 4] and sel.more_prompts == 1
    groups += [group("g", SIGNAL)]
    sel = algo.select_groups(groups, rounds=2, prompts_per_step=4)
    assert sel.keep == [1, 3, 4, 6] and sel.more_prompts == 0
    assert sel.metrics == {"dapo/short_step": 0.0, "dapo/signal_frac": pytest.approx(4 / 7)}


def test_rounds_running_out_trains_on_what_there_is_with_a_warning():
    algo = make(max_gen_batches=1)
    groups = [group("a", FLAT), group("b", SIGNAL), group("c", FLAT), group("d", FLAT)]
    sel = algo.select_groups(groups, rounds=1, prompts_per_step=2)
    assert sel.keep == [1] and sel.more_prompts == 0
    assert sel.metrics["dapo/short_step"] == 1.0 and "1 of 2 groups" in sel.warning


def test_dynamic_sampling_off_keeps_every_group_like_grpo():
    algo = make(dynamic_sampling=False)
    groups = [group("a", FLAT), group("b", SIGNAL)]
    assert algo.select_groups(groups, rounds=0, prompts_per_step=2) == GroupSelection(keep=[0, 1])
    assert DAPO.max_prompts_per_step(algo.config, 4) == 4


def test_defaults_are_dapos_choices_and_config_is_validated():
    algo = make()
    assert algo.config.epsilon_high == 0.28 and algo.config.epsilon_low == 0.2 and algo.config.loss_type == "bnpo"
    assert DAPO.max_prompts_per_step(algo.config, 4) == 4 + 10 * 4
    assert DAPO.max_prompts_per_step(make(max_gen_batches=2, round_prompts=3).config, 4) == 4 + 2 * 3
    with pytest.raises(ConfigError, match="max_gen_batches"):
        make(max_gen_batches=-1)
    with pytest.raises(ConfigError, match="unknown config key 'algorithm.bogus'"):
        make(bogus=1)


def test_selection_output_is_checked():
    check_selection(GroupSelection(keep=[1, 0]), 2, "x")
    for bad in (GroupSelection(keep=[0, 0]), GroupSelection(keep=[2]), GroupSelection(keep=[])):
        with pytest.raises(ValueError, match="algorithm 'x'"):
            check_selection(bad, 2, "x")
    with pytest.raises(ValueError, match="more prompts"):
        check_selection(GroupSelection(keep=[0], more_prompts=-1), 2, "x")


def test_token_level_loss_and_clip_higher_hand_computed():
    """Kept groups -> bnpo weights 1/total tokens; ratio 1.25 lies inside DAPO's clip (GRPO's 1.2 would clip it),
    ratio 1.3 is clipped at 1.28 (no gradient); negative advantages are clipped at 0.8."""
    algo = make()
    kept = [group("b", SIGNAL, lengths=[3, 2])]
    batch = algo.build_batch(kept, step=0)
    a = 0.5 / (np.sqrt(0.5) + 1e-4)
    np.testing.assert_allclose(batch.advantages, [a, -a], rtol=1e-6)
    np.testing.assert_allclose(batch.row_weights, [1 / 5, 1 / 5])
    assert batch.token_sum.tolist() == [True, True]
    np.testing.assert_allclose(batch.advantages, group_advantages(np.array(SIGNAL)))
    old = torch.zeros(2, 3)
    ratios = torch.tensor([[1.25, 1.3, 1.0], [0.7, 1.0, 1.0]])
    lp = torch.log(ratios).clone().requires_grad_(True)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.float32)
    inputs = LossInputs(
        lp,
        old,
        None,
        mask,
        torch.tensor(batch.advantages),
        torch.tensor(batch.row_weights, dtype=torch.float32),
        torch.tensor(batch.token_sum),
        torch.zeros(2, dtype=torch.int8),
    )
    loss, metrics = algo.loss(inputs)
    # row 0 (A=a): -(1.25 a + 1.28 a + 1.0 a); row 1 (A=-a): -(-0.8 a - 1.0 a) (0.7 clipped at 0.8): all over 5 tokens
    expected = (-(1.25 + 1.28 + 1.0) * a + (0.8 + 1.0) * a) / 5
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    # d/dlogp of -r A / 5 is -r A / 5 where unclipped, 0 where clipped
    expected_grad = torch.tensor([[-1.25 * a / 5, 0.0, -1.0 * a / 5], [0.0, a / 5, 0.0]], dtype=torch.float32)
    torch.testing.assert_close(lp.grad, expected_grad)
    assert metrics["clip/high_frac"][0].item() == 1 and metrics["clip/low_frac"][0].item() == 1


# ------------------------------------------------------------------------------------------------
# On the tiny model (slow)


def _record_rounds(tr):
    """Wrap the trainer's rollout rounds to see every group generated (kept or dropped)."""
    seen: list[list[list[RolloutGroup]]] = []
    inner = tr._sample

    def sample(indices, **kw):
        out = inner(indices, **kw)
        if len(seen) <= tr.step:
            seen.append([])
        seen[tr.step].append(out.groups)
        return out

    tr._sample = sample
    return seen


def _tokens(groups):
    return sum(len(c) for g in groups for c in g.completion_ids)


@pytest.mark.slow
def test_three_steps_on_tiny_and_resume_gives_the_same_next_batch(make_config):
    from harness.trainer import Trainer

    # format_reward_weight 0: the quick model is rarely right, so most groups are flat and get dropped
    cfg = make_config(
        {"name": "dapo", "max_gen_batches": 2},
        train={"format_reward_weight": 0.0, "save_every": 2, "keep_checkpoints": 3},
        data={"train_size": 8},
    )
    full = Trainer(cfg, progress=False)
    rounds = _record_rounds(full)
    records = []
    full.callbacks.append(records.append)
    summary = full.fit()
    assert summary["steps"] == 3
    for rec, step_rounds in zip(records, rounds):
        m = rec.metrics
        generated = [g for r in step_rounds for g in r]
        assert m["groups/generated"] == len(generated) == m["groups/kept"] + m["groups/dropped"]
        assert m["rollout/extra_rounds"] == len(step_rounds) - 1 <= 2
        assert m["tokens/generated"] == _tokens(generated)  # dropped samples counted
        assert len(rec.prompt_ids) == m["groups/kept"]
        kept_signal = [has_signal(np.array(r)) for r in rec.rewards]
        assert all(kept_signal) or (not any(kept_signal) and m["dapo/short_step"] == 1)
    assert any(r.metrics["groups/dropped"] > 0 for r in records)
    assert summary["totals"]["tokens/generated"] == sum(r.metrics["tokens/generated"] for r in records)

    resumed = Trainer(cfg, resume=str(full.output_dir / "checkpoint-2"), progress=False)
    rec = resumed.train_step()
    assert rec.prompt_ids == records[2].prompt_ids and rec.completion_ids == records[2].completion_ids
    assert rec.metrics["groups/generated"] == records[2].metrics["groups/generated"]
    resumed.close()


@pytest.mark.slow
def test_generated_tokens_budget_counts_the_discarded_samples(make_config):
    from harness.trainer import Trainer

    budget = 600
    cfg = make_config(
        {"name": "dapo", "max_gen_batches": 1},
        train={"format_reward_weight": 0.0, "max_steps": -1, "budget": f"generated_tokens:{budget}"},
        data={"train_size": 8},
    )
    tr = Trainer(cfg, progress=False)
    rounds = _record_rounds(tr)
    records = []
    tr.callbacks.append(records.append)
    summary = tr.fit()
    generated = np.cumsum([_tokens([g for r in step for g in r]) for step in rounds])
    kept = np.cumsum([sum(len(c) for g in rec.completion_ids for c in g) for rec in records])
    assert generated[-1] >= budget and all(generated[:-1] < budget)  # stops at the first step spending it...
    assert summary["budget"]["spent"] == generated[-1]
    assert kept[-1] < generated[-1]  # ...counting what was dropped (kept tokens alone would not have stopped it here)
    assert sum(r.metrics["groups/dropped"] for r in records) > 0


def test_dry_run_bounds_count_every_extra_round():
    from harness.budget import estimate
    from harness.config import build_config

    def est(algorithm):
        cfg = build_config(
            "tiny", {"algorithm": algorithm, "train": {"budget": "generated_tokens:1e6", "max_steps": -1}}
        )
        return estimate(cfg, "tiny")

    grpo, dapo = est({"name": "grpo"}), est({"name": "dapo", "max_gen_batches": 2})
    assert dapo["min_steps"] == pytest.approx(grpo["min_steps"] / 3)  # 16 prompts + 2 rounds of 16 at most
    assert est({"name": "dapo", "dynamic_sampling": False})["min_steps"] == pytest.approx(grpo["min_steps"])
