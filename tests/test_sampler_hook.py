"""The sampler hook (Algorithm.choose_prompts): a plug-in skips or re-orders the prompts the trainer offers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from algorithms import register_algorithm
from algorithms.base import Algorithm, check_choice
from algorithms.grpo import GRPO, GRPOConfig


@dataclass
class SkipFlatConfig(GRPOConfig):
    pass


@register_algorithm
class SkipFlat(GRPO):
    """Test plug-in: skip prompts whose last group had equal rewards (GRESO's idea, arXiv 2506.02177, without its
    exploration), generate the rest in reverse order; the skipped set is its checkpointed state."""

    name = "test_skip_flat"
    config_cls = SkipFlatConfig

    def __init__(self, config: Any, **kw: Any):
        super().__init__(config, **kw)
        self.flat: set[str] = set()

    def choose_prompts(self, prompt_ids: list[str], step: int) -> list[int]:
        keep = [i for i, p in enumerate(prompt_ids) if p not in self.flat][::-1]
        return keep or [0]

    def after_step(self, groups, batch, behaviour_logprobs, step):
        for g in groups:
            (self.flat.add if np.ptp(g.rewards) == 0 else self.flat.discard)(g.prompt_id)
        return {"test/flat_prompts": float(len(self.flat))}

    def state_dict(self):
        return {}, {"flat": sorted(self.flat)}

    def load_state_dict(self, tensors, meta):
        self.flat = set(meta["flat"])


def test_default_generates_every_offered_prompt_in_order():
    assert Algorithm(None, seed=0, max_completion_length=1).choose_prompts(["a", "b", "c"], 0) == [0, 1, 2]


def test_choice_is_checked():
    assert check_choice([2, 0], 3, "x") == [2, 0]
    for bad in ([], [0, 0], [3], [-1]):
        with pytest.raises(ValueError, match="algorithm 'x': choose_prompts"):
            check_choice(bad, 3, "x")


@pytest.mark.slow
def test_skipped_and_reordered_prompts_on_tiny_and_the_choice_state_survives_resume(make_config):
    from harness.trainer import Trainer

    # 4 prompts, all offered every step; accuracy only: the quick model is rarely right, so many groups are flat
    cfg = make_config(
        {"name": "test_skip_flat"},
        train={"save_every": 2, "keep_checkpoints": 3, "format_reward_weight": 0.0},
        data={"train_size": 4},
    )
    tr = Trainer(cfg, progress=False)
    offered, generated = [], []
    next_indices, sample = tr.sampler.next_indices, tr._sample
    tr.sampler.next_indices = lambda *a: offered.append(next_indices(*a)) or offered[-1]
    tr._sample = lambda indices, **kw: generated.append(list(indices)) or sample(indices, **kw)
    records, flat_before = [], []
    tr.callbacks.append(records.append)
    tr.callbacks.append(lambda r: flat_before.append(set(tr.algorithm.flat)))
    tr.fit()
    ids = [r["id"] for r in tr.train_rows]
    flat = [set()] + flat_before[:-1]  # the skip set each step chose with
    for off, gen, skip, rec in zip(offered, generated, flat, records):
        expected = [i for i in off if ids[i] not in skip][::-1] or off[:1]
        assert gen == expected and rec.prompt_ids == [ids[i] for i in expected]
    assert any(len(g) < len(o) for g, o in zip(generated, offered))  # something was skipped

    resumed = Trainer(cfg, resume=str(tr.output_dir / "checkpoint-2"), progress=False)
    assert resumed.algorithm.flat == flat_before[1]
    rec = resumed.train_step()
    assert rec.prompt_ids == records[2].prompt_ids and rec.completion_ids == records[2].completion_ids
    resumed.close()
