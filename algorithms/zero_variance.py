"""Zero-variance group substitution: a GRPO step's groups with no reward variance are swapped for stored past groups.

The semantics of TRL's experimental ``GRPOWithReplayBufferTrainer`` (huggingface/trl PR #4060, removed in PR #7132)
and of POPO (arXiv 2606.01281), whose past groups are prioritised by recency:

1. A bounded store keeps up to ``store_size`` past groups that carried signal (rewards not all equal), any prompt's,
   with their completions, rewards and the behaviour log-probs they were generated with.
   ``priority=score``: a group's score is sum_i |A_i| x std(R) (TRL's), the lowest-scoring group is evicted first
   (ties: the oldest); ``priority=recency``: the oldest is evicted first (POPO).
2. Each step, every group whose rewards are all equal (zero advantage, no gradient) is replaced, in place, by a stored
   group: ``score`` draws groups with probability proportional to their score, without repeats while the store has
   enough (TRL's ``torch.multinomial``; with repeats when it does not); ``recency`` takes the newest groups, each at
   most once a step (a zero-variance group is left as it is when the store runs out).
3. A replaced group's rows train off-policy: their advantages come from their stored rewards (as when they were
   stored), and their importance ratio uses the stored behaviour log-probs as the old policy, with the same clip.
   The loss is GRPO's over all rows of the step (the batch keeps its size: G rows per group).
4. After the optimizer step, the step's fresh groups that carried signal enter the store with their pre-step
   log-probs, so a step never replays its own samples (TRL adds them before replacing: a deliberate difference).

Each process keeps its own store (of the groups it generated); the store and the draw RNG are saved in checkpoints.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from algorithms.base import RolloutGroup, TrainBatch, register_algorithm
from algorithms.grpo import GRPO, GRPOConfig, effective_step_metrics, group_advantages, row_weights_for
from algorithms.repo import config_seed
from harness.schema import ConfigError


@dataclass
class ZVSubstituteConfig(GRPOConfig):
    store_size: int = field(
        default=64,
        metadata={"help": "Most past groups kept (TRL GRPOWithReplayBufferConfig.replay_buffer_size: 64)."},
    )
    priority: str = field(
        default="score",
        metadata={
            "help": "score: keep the groups with the largest sum |A| x std and draw them in proportion to it (TRL, "
            "PR #4060); recency: keep the newest and take the newest first (POPO, arXiv 2606.01281).",
            "choices": ("score", "recency"),
        },
    )


@dataclass
class StoredGroup:
    prompt_ids: list[int]
    completion_ids: list[np.ndarray]
    logprobs: list[np.ndarray]  # behaviour log-probs, one array per completion
    rewards: np.ndarray
    policy_version: int
    score: float
    order: int  # insertion counter: recency and tie-breaks


def group_score(rewards: np.ndarray, scale_rewards: bool = True, std_eps: float = 1e-4) -> float:
    """TRL's replay score of a group: sum_i |A_i| x std(R) (unbiased std, as torch's default)."""
    r = np.asarray(rewards, dtype=np.float64)
    adv = group_advantages(r, scale_rewards, std_eps).astype(np.float64)
    return float(np.abs(adv).sum() * r.std(ddof=1)) if r.size > 1 else 0.0


def evict_index(store: list[StoredGroup], priority: str) -> int:
    """The stored group to drop when the store is over capacity: the lowest score (ties: the oldest), or the oldest."""
    key = (lambda g: g.order) if priority == "recency" else (lambda g: (g.score, g.order))
    return min(range(len(store)), key=lambda i: key(store[i]))


def weighted_draws(weights: list[float], k: int, rng: random.Random) -> list[int]:
    """``k`` indices drawn in proportion to ``weights``: without repeats when ``k <= len(weights)`` (each draw over
    what is left, as torch.multinomial), else ``k`` independent draws."""
    picked: list[int] = []
    left = list(range(len(weights)))
    for _ in range(k):
        pool = left if k <= len(weights) else list(range(len(weights)))
        total = sum(weights[i] for i in pool)
        u, acc = rng.random() * total, 0.0
        choice = pool[-1]
        for i in pool:
            acc += weights[i]
            if u < acc:
                choice = i
                break
        picked.append(choice)
        if k <= len(weights):
            left.remove(choice)
    return picked


@register_algorithm
class ZVSubstitute(GRPO):
    name = "zv_substitute"
    config_cls = ZVSubstituteConfig
    summed_metrics = GRPO.summed_metrics + ("zv/replaced",)

    @classmethod
    def validate_config(cls, config: ZVSubstituteConfig) -> None:
        super().validate_config(config)
        if config.store_size < 1:
            raise ConfigError(f"algorithm.store_size must be >= 1, got {config.store_size}")

    def __init__(self, config: ZVSubstituteConfig, **kw: Any):
        super().__init__(config, **kw)
        self.store: list[StoredGroup] = []
        self.counter = 0
        self.rng = random.Random(config_seed(self.seed, self.process_index))  # draws; saved in checkpoints

    # -- batch ----------------------------------------------------------------------------------
    def pick(self, n: int) -> list[StoredGroup]:
        """Stored groups for ``n`` zero-variance groups (fewer under ``recency`` when the store holds fewer)."""
        if not n or not self.store:
            return []
        if self.config.priority == "recency":
            return sorted(self.store, key=lambda g: -g.order)[:n]
        return [self.store[i] for i in weighted_draws([g.score for g in self.store], n, self.rng)]

    def build_batch(self, groups: list[RolloutGroup], step: int) -> TrainBatch:
        cfg = self.config
        on = self.on_policy_rows(groups)
        flat = [gi for gi, s in enumerate(on["group_has_signal"]) if not s]
        picked = self.pick(len(flat))
        prompts, completions, advantages = list(on["prompt_ids"]), list(on["completion_ids"]), on["advantages"].copy()
        old: list[np.ndarray | None] = [None] * len(completions)
        source = np.zeros(len(completions), dtype=np.int8)
        versions = on["policy_version"].copy()
        off_signal = np.zeros(len(groups), dtype=bool)
        staleness = []
        rows_of = {}  # group index -> its rows (a stored group may have another G than this step)
        start = 0
        for gi, g in enumerate(groups):
            rows_of[gi] = list(range(start, start + len(g.completion_ids)))
            start += len(g.completion_ids)
        for gi, s in zip(flat, picked):  # in place: the replaced group's rows become the stored group's
            rows = rows_of[gi]
            if len(s.completion_ids) != len(rows):
                raise ValueError(f"stored group of {len(s.completion_ids)} completions for a group of {len(rows)}")
            adv = group_advantages(s.rewards, cfg.scale_rewards, cfg.std_eps)
            for r, c, lp, a in zip(rows, s.completion_ids, s.logprobs, adv):
                prompts[r], completions[r], old[r], advantages[r], source[r] = s.prompt_ids, c, lp, a, 1
                versions[r] = s.policy_version
            off_signal[gi] = True
            staleness.append(groups[gi].policy_version - s.policy_version)
        lengths = np.array([len(c) for c in completions])
        weights, token_sum = row_weights_for(cfg.loss_type, lengths, self.max_completion_length)
        batch = TrainBatch(
            prompt_ids=prompts,
            completion_ids=completions,
            advantages=advantages,
            row_weights=weights,
            token_sum=token_sum,
            old_logprobs=old,
            source=source,
            group_index=on["group_index"],
            policy_version=versions,
        )
        batch.metrics = effective_step_metrics(on["group_has_signal"], off_signal, batch)
        batch.metrics.update(
            {
                "zv/replaced": float(len(picked)),
                "zv/unreplaced": float(len(flat) - len(picked)),
                "zv/staleness_mean": float(np.mean(staleness)) if staleness else 0.0,
            }
        )
        return batch

    def rows_needing_logprobs(self, batch: TrainBatch) -> np.ndarray:
        # Fresh rows of groups with signal enter the store with their behaviour log-probs (a zero-advantage row of
        # such a group, e.g. a reward equal to the mean, has no gradient of its own).
        signal = np.zeros(int(batch.group_index.max()) + 1 if len(batch) else 0, dtype=bool)
        nonzero = (batch.source == 0) & (batch.advantages != 0)
        signal[batch.group_index[nonzero]] = True
        return (batch.source == 0) & signal[batch.group_index]

    # -- store update ---------------------------------------------------------------------------
    def after_step(
        self, groups: list[RolloutGroup], batch: TrainBatch, behaviour_logprobs: list[np.ndarray], step: int
    ) -> dict[str, float]:
        cfg = self.config
        for gi, g in enumerate(groups):
            rows = np.nonzero((batch.group_index == gi) & (batch.source == 0))[0]
            if len(rows) != len(g.completion_ids) or not np.any(batch.advantages[rows] != 0):
                continue  # replaced (its rows are stored ones) or no signal
            self.store.append(
                StoredGroup(
                    prompt_ids=list(g.prompt_ids),
                    completion_ids=[np.asarray(c, dtype=np.int64) for c in g.completion_ids],
                    logprobs=[np.asarray(behaviour_logprobs[r], dtype=np.float32) for r in rows],
                    rewards=np.asarray(g.rewards, dtype=np.float64),
                    policy_version=g.policy_version,
                    score=group_score(g.rewards, cfg.scale_rewards, cfg.std_eps),
                    order=self.counter,
                )
            )
            self.counter += 1
            if len(self.store) > cfg.store_size:
                self.store.pop(evict_index(self.store, cfg.priority))
        return {"zv/store_groups": float(len(self.store))}

    # -- state ----------------------------------------------------------------------------------
    def state_dict(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        def cat(arrays: list[np.ndarray], dtype) -> np.ndarray:
            return np.concatenate([np.asarray(a, dtype=dtype) for a in arrays]) if arrays else np.zeros(0, dtype)

        tensors = {
            "prompt_tokens": cat([np.asarray(g.prompt_ids) for g in self.store], np.int64),
            "completion_tokens": cat([c for g in self.store for c in g.completion_ids], np.int64),
            "logprobs": cat([lp for g in self.store for lp in g.logprobs], np.float32),
            "rewards": cat([g.rewards for g in self.store], np.float64),
        }
        groups = [
            {
                "prompt_length": len(g.prompt_ids),
                "lengths": [len(c) for c in g.completion_ids],
                "policy_version": g.policy_version,
                "score": g.score,
                "order": g.order,
            }
            for g in self.store
        ]
        v, internal, gauss = self.rng.getstate()
        return tensors, {"groups": groups, "counter": self.counter, "rng": [v, list(internal), gauss]}

    def load_state_dict(self, tensors: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        p = c = r = 0
        self.store = []
        for m in meta["groups"]:
            lengths = m["lengths"]
            comps, lps = [], []
            for n in lengths:
                comps.append(np.asarray(tensors["completion_tokens"][c : c + n], dtype=np.int64))
                lps.append(np.asarray(tensors["logprobs"][c : c + n], dtype=np.float32))
                c += n
            self.store.append(
                StoredGroup(
                    prompt_ids=[int(x) for x in tensors["prompt_tokens"][p : p + m["prompt_length"]]],
                    completion_ids=comps,
                    logprobs=lps,
                    rewards=np.asarray(tensors["rewards"][r : r + len(lengths)], dtype=np.float64),
                    policy_version=int(m["policy_version"]),
                    score=float(m["score"]),
                    order=int(m["order"]),
                )
            )
            p += m["prompt_length"]
            r += len(lengths)
        self.counter = int(meta["counter"])
        v, internal, gauss = meta["rng"]
        self.rng.setstate((v, tuple(internal), gauss))
