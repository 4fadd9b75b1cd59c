"""Prioritized rollout replay: single past rollouts, drawn by |advantage| (and freshness), added to each GRPO step.

The rollout-level replay of APER (arXiv 2606.04560) with the freshness term of FreshPER (arXiv 2604.16918), as the
survey (`peers-2026.md`, section 1) describes them:

1. Store: every fresh rollout with a non-zero advantage enters a per-process buffer of at most ``buffer_size``
   rollouts (oldest evicted first), with its prompt, its advantage (computed in its own group when it was generated)
   and the behaviour log-probs it was generated with. Rollouts older than ``max_age`` policy versions are evicted
   (APER's tau_max; 0 = no limit).
2. Priority: p = |A|^``alpha`` x exp(-age / ``freshness_tau``) (age in policy versions; ``freshness_tau`` 0 = no
   decay, plain prioritized replay). FreshPER reports that plain PER hurts and the freshness decay fixes it.
3. Each step keeps all its fresh rollouts (GRPO's rows) and adds ``replay_rows`` stored rollouts, drawn in proportion
   to their priority without repeats. Their importance ratio uses the stored behaviour log-probs (same clip as the
   fresh rows), their advantage is the stored one.
4. Loss: the fresh term (GRPO's aggregation over the fresh rows) + ``off_policy_loss_coef`` x the replayed term (the
   same aggregation over the replayed rows), logged as ``loss/on_policy`` and ``loss/off_policy``.
5. The step's rollouts enter the buffer after the optimizer step, so a step never replays its own samples.

Replayed rows belong to no group of the step (``group_index`` -1), so ``effective/step`` counts the step's own prompts
only; ``per/rows`` counts the replayed rows. The buffer and the draw RNG are saved in checkpoints.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from algorithms.base import LossInputs, RolloutGroup, TrainBatch, register_algorithm
from algorithms.grpo import GRPO, GRPOConfig, effective_step_metrics, row_weights_for
from algorithms.repo import config_seed
from algorithms.zero_variance import weighted_draws
from harness.schema import ConfigError


@dataclass
class PrioritizedReplayConfig(GRPOConfig):
    buffer_size: int = field(default=256, metadata={"help": "Most stored rollouts per process (oldest evicted first)."})
    replay_rows: int = field(default=8, metadata={"help": "Stored rollouts added to each step's batch."})
    alpha: float = field(default=1.0, metadata={"help": "Priority exponent: p = |A|^alpha (PER; APER uses |A|)."})
    freshness_tau: float = field(
        default=0.0,
        metadata={
            "help": "Freshness decay: p x exp(-age / freshness_tau), age in policy versions (FreshPER, arXiv "
            "2604.16918); 0 = off (APER, arXiv 2606.04560)."
        },
    )
    max_age: int = field(
        default=0,
        metadata={"help": "Evict rollouts older than this many policy versions (APER's tau_max); 0 = no limit."},
    )
    off_policy_loss_coef: float = field(default=1.0, metadata={"help": "Weight of the replayed rows' term."})


@dataclass
class StoredRollout:
    prompt_ids: list[int]
    completion_ids: np.ndarray
    logprobs: np.ndarray
    advantage: float
    policy_version: int


def priorities(advantages: np.ndarray, ages: np.ndarray, alpha: float, tau: float) -> np.ndarray:
    """p = |A|^alpha x exp(-age / tau) (no decay when tau is 0)."""
    p = np.abs(np.asarray(advantages, dtype=np.float64)) ** alpha
    return p * np.exp(-np.asarray(ages, dtype=np.float64) / tau) if tau > 0 else p


@register_algorithm
class PrioritizedReplay(GRPO):
    name = "prioritized_replay"
    config_cls = PrioritizedReplayConfig
    summed_metrics = GRPO.summed_metrics + ("per/rows",)

    @classmethod
    def validate_config(cls, c: PrioritizedReplayConfig) -> None:
        super().validate_config(c)
        for key, value, low in (("buffer_size", c.buffer_size, 1), ("replay_rows", c.replay_rows, 0)):
            if value < low:
                raise ConfigError(f"algorithm.{key} must be >= {low}, got {value}")
        if c.alpha < 0 or c.freshness_tau < 0 or c.max_age < 0 or c.off_policy_loss_coef < 0:
            raise ConfigError("algorithm.alpha, freshness_tau, max_age and off_policy_loss_coef must be >= 0")

    @classmethod
    def max_rows_per_prompt(cls, config: PrioritizedReplayConfig, num_generations: int) -> int:
        return num_generations + config.replay_rows  # a bound: the whole replay could come with one prompt's step

    def __init__(self, config: PrioritizedReplayConfig, **kw: Any):
        super().__init__(config, **kw)
        self.buffer: list[StoredRollout] = []
        self.rng = random.Random(config_seed(self.seed, self.process_index))

    # -- batch ----------------------------------------------------------------------------------
    def draw(self, version: int) -> list[StoredRollout]:
        """Evict rollouts past ``max_age``, then draw ``replay_rows`` in proportion to their priority, no repeats."""
        cfg = self.config
        if cfg.max_age:
            self.buffer = [e for e in self.buffer if version - e.policy_version <= cfg.max_age]
        k = min(cfg.replay_rows, len(self.buffer))
        if not k:
            return []
        p = priorities(
            np.array([e.advantage for e in self.buffer]),
            np.array([version - e.policy_version for e in self.buffer]),
            cfg.alpha,
            cfg.freshness_tau,
        )
        if not np.any(p > 0):
            return []
        k = min(k, int(np.count_nonzero(p)))
        return [self.buffer[i] for i in weighted_draws(p.tolist(), k, self.rng)]

    def build_batch(self, groups: list[RolloutGroup], step: int) -> TrainBatch:
        cfg = self.config
        on = self.on_policy_rows(groups)
        version = max((g.policy_version for g in groups), default=0)
        replayed = self.draw(version)
        on_len = np.array([len(c) for c in on["completion_ids"]])
        off_len = np.array([len(e.completion_ids) for e in replayed], dtype=np.int64)
        w_on, ts_on = row_weights_for(cfg.loss_type, on_len, self.max_completion_length)
        w_off, ts_off = row_weights_for(
            cfg.loss_type, off_len, self.max_completion_length, scale=cfg.off_policy_loss_coef
        )
        n_on, n_off = len(on_len), len(replayed)
        batch = TrainBatch(
            prompt_ids=on["prompt_ids"] + [e.prompt_ids for e in replayed],
            completion_ids=on["completion_ids"] + [e.completion_ids for e in replayed],
            advantages=np.concatenate([on["advantages"], [e.advantage for e in replayed]]).astype(np.float32),
            row_weights=np.concatenate([w_on, w_off]),
            token_sum=np.concatenate([ts_on, ts_off]).astype(bool),
            old_logprobs=[None] * n_on + [e.logprobs for e in replayed],
            source=np.concatenate([np.zeros(n_on, np.int8), np.ones(n_off, np.int8)]),
            group_index=np.concatenate([on["group_index"], np.full(n_off, -1, np.int64)]),
            policy_version=np.concatenate(
                [on["policy_version"], np.array([e.policy_version for e in replayed], dtype=np.int64)]
            ),
        )
        batch.metrics = effective_step_metrics(on["group_has_signal"], np.zeros(len(groups), dtype=bool), batch)
        ages = [version - e.policy_version for e in replayed]
        batch.metrics.update(
            {
                "per/rows": float(n_off),
                "per/age_mean": float(np.mean(ages)) if ages else 0.0,
                "per/age_max": float(np.max(ages)) if ages else 0.0,
            }
        )
        return batch

    def rows_with_gradient(self, batch: TrainBatch) -> np.ndarray:
        return (batch.advantages != 0) | ((batch.source == 0) & (self.config.beta > 0))

    # -- loss -----------------------------------------------------------------------------------
    def loss(self, inputs: LossInputs) -> tuple[torch.Tensor, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
        is_on = inputs.source == 0  # the KL, when beta > 0, applies to the fresh rows (the first term)
        total, metrics, _ = self.clipped_loss(inputs, {"on_policy": is_on, "off_policy": ~is_on})
        return total, metrics

    # -- buffer update --------------------------------------------------------------------------
    def after_step(
        self, groups: list[RolloutGroup], batch: TrainBatch, behaviour_logprobs: list[np.ndarray], step: int
    ) -> dict[str, float]:
        for r in np.nonzero((batch.source == 0) & (batch.advantages != 0))[0]:
            self.buffer.append(
                StoredRollout(
                    prompt_ids=list(batch.prompt_ids[r]),
                    completion_ids=np.asarray(batch.completion_ids[r], dtype=np.int64),
                    logprobs=np.asarray(behaviour_logprobs[r], dtype=np.float32),
                    advantage=float(batch.advantages[r]),
                    policy_version=int(batch.policy_version[r]),
                )
            )
        del self.buffer[: max(0, len(self.buffer) - self.config.buffer_size)]  # oldest first
        return {"per/buffer_rollouts": float(len(self.buffer))}

    # -- state ----------------------------------------------------------------------------------
    def state_dict(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        def cat(arrays: list[np.ndarray], dtype) -> np.ndarray:
            return np.concatenate([np.asarray(a, dtype=dtype) for a in arrays]) if arrays else np.zeros(0, dtype)

        b = self.buffer
        tensors = {
            "prompt_tokens": cat([np.asarray(e.prompt_ids) for e in b], np.int64),
            "completion_tokens": cat([e.completion_ids for e in b], np.int64),
            "logprobs": cat([e.logprobs for e in b], np.float32),
            "advantages": np.array([e.advantage for e in b], dtype=np.float64),
            "versions": np.array([e.policy_version for e in b], dtype=np.int64),
            "prompt_lengths": np.array([len(e.prompt_ids) for e in b], dtype=np.int64),
            "lengths": np.array([len(e.completion_ids) for e in b], dtype=np.int64),
        }
        v, internal, gauss = self.rng.getstate()
        return tensors, {"rng": [v, list(internal), gauss]}

    def load_state_dict(self, tensors: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        p_off = np.concatenate([[0], np.cumsum(tensors["prompt_lengths"])]).astype(int)
        c_off = np.concatenate([[0], np.cumsum(tensors["lengths"])]).astype(int)
        self.buffer = [
            StoredRollout(
                prompt_ids=[int(x) for x in tensors["prompt_tokens"][p_off[i] : p_off[i + 1]]],
                completion_ids=np.asarray(tensors["completion_tokens"][c_off[i] : c_off[i + 1]], dtype=np.int64),
                logprobs=np.asarray(tensors["logprobs"][c_off[i] : c_off[i + 1]], dtype=np.float32),
                advantage=float(tensors["advantages"][i]),
                policy_version=int(tensors["versions"][i]),
            )
            for i in range(len(tensors["advantages"]))
        ]
        v, internal, gauss = meta["rng"]
        self.rng.setstate((v, tuple(internal), gauss))
