"""The reward control (reward.kind): verifier, random (deterministic from the seed), format_only."""

from __future__ import annotations

import numpy as np
import pytest

from harness.config import ConfigError, build_config
from harness.rewards import training_rewards

ACC = np.array([1.0, 0.0, 0.0, 1.0])
FMT = np.array([1.0, 1.0, 0.0, 0.0])


def rewards(kind, p=0.5, key=(42, 0, 0, 0), n=None):
    acc = ACC if n is None else np.zeros(n)
    fmt = FMT if n is None else np.zeros(n)
    return training_rewards(kind, acc, fmt, format_weight=0.5, random_p=p, key=key)


def test_verifier_is_accuracy_plus_weighted_format():
    np.testing.assert_array_equal(rewards("verifier"), [1.5, 0.5, 0.0, 1.0])


def test_format_only_pays_a_boxed_answer_right_or_not():
    np.testing.assert_array_equal(rewards("format_only"), [1.0, 1.0, 0.0, 0.0])


def test_random_is_deterministic_per_key_and_ignores_the_completions():
    a = rewards("random", n=64)
    np.testing.assert_array_equal(a, rewards("random", n=64))  # same seed, process, step, round: same draws
    assert set(a.tolist()) <= {0.0, 1.0}
    expected = (np.random.default_rng([42, 0, 0, 0]).random(64) < 0.5).astype(float)
    np.testing.assert_array_equal(a, expected)
    for other in ((43, 0, 0, 0), (42, 1, 0, 0), (42, 0, 1, 0), (42, 0, 0, 1)):
        assert not np.array_equal(a, rewards("random", n=64, key=other))
    assert rewards("random", p=0.0, n=16).sum() == 0 and rewards("random", p=1.0, n=16).sum() == 16
    assert rewards("random", p=0.3, n=20000).mean() == pytest.approx(0.3, abs=0.02)


def test_reward_section_is_validated():
    cfg = build_config({"reward": {"kind": "random", "random_p": 0.25}})
    assert cfg.reward.kind == "random" and cfg.reward.random_p == 0.25
    assert build_config().reward.kind == "verifier"
    with pytest.raises(ConfigError, match="reward.kind: expected one of verifier, random, format_only"):
        build_config(overrides=["reward.kind=coin"])
    with pytest.raises(ConfigError, match="reward.random_p"):
        build_config(overrides=["reward.random_p=1.5"])
    with pytest.raises(ConfigError, match="unknown config key 'reward.p'"):
        build_config(overrides=["reward.p=0.5"])


@pytest.mark.slow
def test_random_reward_run_on_tiny_trains_on_the_seeded_draws_and_resumes_them(make_config):
    from harness.trainer import Trainer

    cfg = make_config(
        "grpo", reward={"kind": "random", "random_p": 0.5}, train={"save_every": 2, "keep_checkpoints": 3}
    )
    tr = Trainer(cfg, progress=False)
    records = []
    tr.callbacks.append(records.append)
    assert tr.fit()["steps"] == 3
    for step, rec in enumerate(records):
        draws = np.random.default_rng([cfg.train.seed, 0, step, 0]).random(16) < 0.5
        assert np.concatenate(rec.rewards).tolist() == draws.astype(float).tolist()
        assert "reward/accuracy" in rec.metrics  # the verifier's accuracy is still logged
    assert any(r.metrics["samples/nonzero_adv_frac"] > 0 for r in records)
    resumed = Trainer(cfg, resume=str(tr.output_dir / "checkpoint-2"), progress=False)
    rec = resumed.train_step()  # the same draws after a resume
    assert rec.rewards == records[2].rewards and rec.completion_ids == records[2].completion_ids
    resumed.close()
