"""An algorithm of your own in one file, loaded without editing the package:

    harness run --plugin examples/my_algorithm.py --algos grpo,rloo --models tiny --steps 20
    harness run --plugin examples/my_algorithm.py --algos repo:oldest_k --models tiny     # the strategy below
    harness config show --plugin examples/my_algorithm.py --algo rloo                     # its documented fields

RLOO (Ahmadian et al., 2024, *Back to Basics: Revisiting REINFORCE Style Optimization for Learning from Human
Feedback in LLMs*, arXiv 2402.14740): each sample's baseline is the mean reward of the *other* G - 1 samples of its
group, A_i = r_i - (sum_j r_j - r_i) / (G - 1), with no division by the std. Everything else (the clipped loss, its
aggregation, the metrics) is GRPO's, so the plug-in is a config class and one method.

The module also registers a replay strategy for RePO, ``oldest_k``: the same output contract as the built-in ones
(indices into the prompt's buffer, oldest first), checked on every call.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from algorithms import register_algorithm, register_strategy
from algorithms.base import RolloutGroup, TrainBatch
from algorithms.grpo import GRPO, GRPOConfig, effective_step_metrics


def leave_one_out_advantages(rewards: np.ndarray) -> np.ndarray:
    """A_i = r_i - mean of the other rewards of the group (0 for a group of one)."""
    r = np.asarray(rewards, dtype=np.float64)
    if r.size < 2:
        return np.zeros(r.size, dtype=np.float32)
    return (r - (r.sum() - r) / (r.size - 1)).astype(np.float32)


@dataclass
class RLOOConfig(GRPOConfig):
    # A new field is documented like the built-in ones and set with --set algorithm.advantage_scale=...
    advantage_scale: float = field(default=1.0, metadata={"help": "Multiplies every advantage (RLOO: 1)."})


@register_algorithm
class RLOO(GRPO):
    name = "rloo"
    config_cls = RLOOConfig

    def build_batch(self, groups: list[RolloutGroup], step: int) -> TrainBatch:
        batch = super().build_batch(groups, step)  # GRPO's rows, weights and bookkeeping
        batch.advantages = self.config.advantage_scale * np.concatenate(
            [leave_one_out_advantages(g.rewards) for g in groups]
        ).astype(np.float32)
        signal = np.array([bool(np.any(leave_one_out_advantages(g.rewards) != 0)) for g in groups])
        batch.metrics = effective_step_metrics(signal, np.zeros(len(groups), dtype=bool), batch)
        return batch


@register_strategy("oldest_k")
def oldest_k(rewards: Sequence[float], k: int, rng: random.Random) -> list[int]:
    """The ``min(k, n)`` oldest entries of a prompt's replay buffer, ascending."""
    return list(range(min(max(k, 0), len(rewards))))
