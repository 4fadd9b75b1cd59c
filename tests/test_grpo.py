"""GRPO advantages and loss on hand-computed cases."""

import math

import numpy as np
import pytest
import torch

from algorithms.base import LossInputs, RolloutGroup
from algorithms.grpo import GRPO, GRPOConfig, aggregate, clipped_token_loss, group_advantages, kl_k3, row_weights_for


def test_advantages_hand_computed():
    # rewards [1, 0, 0, 0]: mean 0.25, unbiased std sqrt(0.25) = 0.5
    adv = group_advantages(np.array([1.0, 0, 0, 0]), scale_rewards=True, std_eps=1e-4)
    np.testing.assert_allclose(adv, np.array([0.75, -0.25, -0.25, -0.25]) / (0.5 + 1e-4), rtol=1e-6)
    assert abs(adv.sum()) < 1e-6


def test_advantages_without_scaling_are_centred_rewards():
    adv = group_advantages(np.array([1.0, 0.0, 1.0, 1.0]), scale_rewards=False)
    np.testing.assert_allclose(adv, [0.25, -0.75, 0.25, 0.25], rtol=1e-6)


@pytest.mark.parametrize("value", [0.0, 1.0, 0.7, 1e-9])
def test_all_equal_rewards_give_exactly_zero_advantage(value):
    adv = group_advantages(np.full(8, value), scale_rewards=True, std_eps=1e-4)
    assert np.all(adv == 0.0)


def test_asymmetric_clipping_hand_computed():
    eps_low, eps_high = 0.1, 0.3
    old = torch.zeros(1, 4)
    ratios = torch.tensor([[0.5, 0.95, 1.2, 1.5]])
    new = torch.log(ratios)
    # positive advantage: clip only binds above 1 + eps_high = 1.3
    loss, r, cl, ch = clipped_token_loss(new, old, torch.tensor([2.0]), eps_low, eps_high)
    expected = -torch.min(ratios * 2.0, torch.clamp(ratios, 0.9, 1.3) * 2.0)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(loss, torch.tensor([[-1.0, -1.9, -2.4, -2.6]]))
    assert ch.tolist() == [[False, False, False, True]] and not cl.any()
    # negative advantage: clip only binds below 1 - eps_low = 0.9
    loss, r, cl, ch = clipped_token_loss(new, old, torch.tensor([-1.0]), eps_low, eps_high)
    torch.testing.assert_close(loss, torch.tensor([[0.9, 0.95, 1.2, 1.5]]))
    assert cl.tolist() == [[True, False, False, False]] and not ch.any()


def test_kl_k3_is_zero_at_equal_policies_and_positive_otherwise():
    lp = torch.log(torch.tensor([[0.2, 0.5]]))
    assert torch.all(kl_k3(lp, lp) == 0)
    ref = torch.log(torch.tensor([[0.4, 0.25]]))
    d = ref - lp
    torch.testing.assert_close(kl_k3(lp, ref), torch.exp(d) - d - 1)
    assert torch.all(kl_k3(lp, ref) > 0)


def test_aggregation_types_hand_computed():
    token_loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    lengths = np.array([3, 1])
    w, ts = row_weights_for("grpo", lengths, max_completion_length=5)
    assert aggregate(token_loss, mask, torch.tensor(w, dtype=torch.float32), torch.tensor(ts)).item() == pytest.approx(
        (2.0 + 4.0) / 2
    )
    w, ts = row_weights_for("bnpo", lengths, max_completion_length=5)
    assert aggregate(token_loss, mask, torch.tensor(w, dtype=torch.float32), torch.tensor(ts)).item() == pytest.approx(
        10.0 / 4
    )
    w, ts = row_weights_for("dr_grpo", lengths, max_completion_length=5)
    assert aggregate(token_loss, mask, torch.tensor(w, dtype=torch.float32), torch.tensor(ts)).item() == pytest.approx(
        10.0 / (2 * 5)
    )


def _groups():
    return [
        RolloutGroup("p0", [1, 2], [np.array([5, 6, 7]), np.array([5, 7])], np.array([1.0, 0.0]), 0),
        RolloutGroup("p1", [3], [np.array([8]), np.array([9, 9])], np.array([1.0, 1.0]), 0),
    ]


def test_build_batch_and_loss_match_hand_computation():
    algo = GRPO(GRPOConfig(), seed=0, max_completion_length=4)
    batch = algo.build_batch(_groups(), step=0)
    a = 0.5 / (math.sqrt(0.5) + 1e-4)
    np.testing.assert_allclose(batch.advantages, [a, -a, 0.0, 0.0], rtol=1e-6)
    assert batch.metrics["groups/zero_std_frac"] == 0.5
    assert batch.metrics["samples/nonzero_adv_frac"] == 0.5
    assert batch.metrics["effective/step"] == 0.5
    assert batch.metrics["tokens/with_gradient"] == 5
    # On-policy with ratio 1: loss = -mean over rows of A (token-mean of a constant A is A).
    B, T = 4, 3
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 0]], dtype=torch.float32)
    lp = torch.full((B, T), -0.5, requires_grad=True)
    inputs = LossInputs(
        lp,
        lp.detach(),
        None,
        mask,
        torch.tensor(batch.advantages),
        torch.tensor(batch.row_weights, dtype=torch.float32),
        torch.tensor(batch.token_sum),
        torch.zeros(B, dtype=torch.int8),
    )
    loss, metrics = algo.loss(inputs)
    assert loss.item() == pytest.approx(-(a - a + 0 + 0) / 4, abs=1e-7)
    loss.backward()
    # d loss / d logp_t = -A / (len * R) for every real token of the row
    expected = -torch.tensor(batch.advantages).unsqueeze(1) / mask.sum(1, keepdim=True) / 4 * mask
    torch.testing.assert_close(lp.grad, expected)
    assert metrics["clip/region_frac"][0].item() == 0


def test_one_sample_group_gets_zero_advantage_not_nan():
    """Deliberate difference (README): the reference's unbiased std of one sample is NaN, so its advantage is NaN."""
    assert group_advantages(np.array([1.0])).tolist() == [0.0]
    assert group_advantages(np.array([0.3]), scale_rewards=False).tolist() == [0.0]


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo"])
def test_kl_is_aggregated_like_the_policy_loss_as_in_trl(loss_type):
    """GRPO with beta > 0: beta x k3 KL is added to each token's loss before the loss_type aggregation (TRL's GRPOTrainer),
    also when the batch is split into micro-batches."""
    algo = GRPO(GRPOConfig(beta=0.2, loss_type=loss_type), seed=0, max_completion_length=4)
    batch = algo.build_batch(_groups(), step=0)
    gen = torch.Generator().manual_seed(1)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 0]], dtype=torch.float32)
    lp = torch.randn(4, 3, generator=gen) * mask
    old = (lp + 0.1 * torch.randn(4, 3, generator=gen)) * mask
    ref = (lp + 0.5 * torch.randn(4, 3, generator=gen)) * mask
    per_token = clipped_token_loss(lp, old, torch.tensor(batch.advantages), 0.2, 0.2)[0] + 0.2 * kl_k3(lp, ref)
    if loss_type == "grpo":
        expected = ((per_token * mask).sum(1) / mask.sum(1)).mean()
    elif loss_type == "bnpo":
        expected = (per_token * mask).sum() / mask.sum()
    else:
        expected = (per_token * mask).sum() / (4 * 4)
    total = 0.0
    for idx in ([0, 3], [1, 2]):
        sub = batch.select(np.array(idx))
        t = torch.tensor(idx)
        inputs = LossInputs(
            lp[t],
            old[t],
            ref[t],
            mask[t],
            torch.tensor(sub.advantages),
            torch.tensor(sub.row_weights, dtype=torch.float32),
            torch.tensor(sub.token_sum),
            torch.zeros(2, dtype=torch.int8),
        )
        total += algo.loss(inputs)[0].item()
    assert total == pytest.approx(expected.item(), rel=1e-5)
