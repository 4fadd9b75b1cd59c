"""ExGRPO: learning to reason from experience (Zhan et al., 2025, arXiv 2510.02245), on GRPO.

1. Experience: after each optimizer step, every fresh completion that succeeded (reward >= ``success_reward``) enters
   a per-prompt store (at most ``max_per_prompt``, oldest evicted first) with the behaviour log-probs it was
   generated with, and the prompt's latest pass rate (the fraction of its fresh group that succeeded) is recorded.
   A prompt whose latest group all succeeded is retired: it is not revisited while that holds.
2. Delayed start: nothing is revisited until a step's fresh completions succeed at >= ``start_accuracy`` (ExGRPO
   starts once the batch Pass@1 passes 35%); from then on it stays on.
3. Prompt selection (before rollout, the trainer's ``revisit_prompts`` seam): ``experience_ratio`` of each step's
   prompts are stored prompts, the rest the sampler's new ones (so the step generates as much as GRPO's). The stored
   prompts are bucketed by latest pass rate, low [0, 0.25] / medium (0.25, 0.75] / high (0.75, 1); each draw picks a
   bucket with probability proportional to N(centre; 0.5, ``bucket_sigma``) (ExGRPO's Gaussian around 0.5, sigma 1),
   then a prompt of it uniformly, without repeats. A prompt whose latest group failed entirely but that holds earlier
   successes counts as low.
4. Trajectory selection: each revisited prompt is generated afresh (G completions) and joined by its stored success of
   lowest entropy. The entropy is the mean of -log pi(token) over the trajectory's own tokens at generation (the
   Monte-Carlo estimate of the policy's per-token entropy along it, from the stored behaviour log-probs; ExGRPO
   scores with the current policy, which would cost a forward pass over the store). Ties: the newest.
5. Mixed-policy group: the G fresh rewards and the stored one are normalised together (G + 1 rows; ExGRPO replaces one
   of G fresh samples instead). With ``importance_correction`` the stored row's ratio uses its stored behaviour
   log-probs with GRPO's clip (ExGRPO's ``exp_is_correct``; its policy shaping f(w) = w / (w + 0.1) is not
   implemented); without, it is trained as if sampled now (ratio 1 at the step's first iteration). The loss is GRPO's
   over all rows of the step.

Each process revisits only prompts it owns (its store holds the prompts it generated); the store, the pass rates, the
start flag and the draw RNG are saved in checkpoints.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from algorithms.base import RolloutGroup, TrainBatch, register_algorithm
from algorithms.grpo import GRPO, GRPOConfig, effective_step_metrics, group_advantages, row_weights_for
from algorithms.replay_buffer import ReplayBuffer
from algorithms.repo import config_seed
from harness.schema import ConfigError

#: Pass-rate buckets (ExGRPO section 3.2): (name, lowest, highest, centre). A rate r is in the first bucket whose
#: highest it does not exceed; 1.0 is retired, never in a bucket.
BUCKETS: tuple[tuple[str, float, float, float], ...] = (
    ("low", 0.0, 0.25, 0.125),
    ("medium", 0.25, 0.75, 0.5),
    ("high", 0.75, 1.0, 0.875),
)


@dataclass
class ExGRPOConfig(GRPOConfig):
    experience_ratio: float = field(
        default=0.5,
        metadata={
            "help": "Share of each step's prompts drawn from the experience store instead of the sampler (ExGRPO, "
            "arXiv 2510.02245: 50%); at most prompts_per_step - 1."
        },
    )
    start_accuracy: float = field(
        default=0.35,
        metadata={"help": "Revisit nothing until a step's fresh completions succeed at this rate (ExGRPO: 35%)."},
    )
    bucket_sigma: float = field(
        default=1.0,
        metadata={"help": "Width of the Gaussian around pass rate 0.5 that weights the buckets (ExGRPO: 1)."},
    )
    success_reward: float = field(
        default=1.0, metadata={"help": "A completion with at least this reward is a success and is stored."}
    )
    max_per_prompt: int = field(
        default=8, metadata={"help": "Most successes stored per prompt (oldest evicted first)."}
    )
    importance_correction: bool = field(
        default=True,
        metadata={
            "help": "Clip the stored row's ratio against its stored behaviour log-probs (ExGRPO's exp_is_correct); "
            "false: train it as if sampled now."
        },
    )


def bucket_of(pass_rate: float) -> str | None:
    """The bucket of a latest pass rate; None for a retired prompt (rate 1)."""
    if pass_rate >= 1.0:
        return None
    return next(name for name, _, high, _ in BUCKETS if pass_rate <= high)


def bucket_weights(sigma: float, mu: float = 0.5) -> dict[str, float]:
    """Unnormalised draw weight of each bucket: the Gaussian density's shape at its centre."""
    return {name: math.exp(-((centre - mu) ** 2) / (2 * sigma**2)) for name, _, _, centre in BUCKETS}


def draw_prompts(candidates: dict[str, float], n: int, sigma: float, rng: random.Random) -> list[str]:
    """``n`` distinct prompts from ``candidates`` (prompt id -> latest pass rate, retired ones excluded): each draw a
    bucket in proportion to its weight among the non-empty ones, then a prompt of it uniformly."""
    pools: dict[str, list[str]] = {}
    for pid in sorted(candidates):  # sorted: the draw depends on the RNG only, not on insertion order
        b = bucket_of(candidates[pid])
        if b is not None:
            pools.setdefault(b, []).append(pid)
    weights = bucket_weights(sigma)
    out: list[str] = []
    while len(out) < n and pools:
        names = [b for b, _, _, _ in BUCKETS if pools.get(b)]
        total = sum(weights[b] for b in names)
        u, acc, pick = rng.random() * total, 0.0, names[-1]
        for b in names:
            acc += weights[b]
            if u < acc:
                pick = b
                break
        pool = pools[pick]
        out.append(pool.pop(rng.randrange(len(pool))))
        if not pool:
            del pools[pick]
    return out


def lowest_entropy(logprobs: list[np.ndarray], versions: np.ndarray) -> int:
    """Index of the stored trajectory with the lowest mean -log pi(token); ties: the newest, then the first."""
    ent = [float(-np.mean(lp)) if len(lp) else 0.0 for lp in logprobs]
    return min(range(len(ent)), key=lambda i: (ent[i], -int(versions[i]), i))


@register_algorithm
class ExGRPO(GRPO):
    name = "exgrpo"
    config_cls = ExGRPOConfig
    summed_metrics = GRPO.summed_metrics + ("exgrpo/experience_groups", "exgrpo/rescued_groups")

    @classmethod
    def validate_config(cls, c: ExGRPOConfig) -> None:
        super().validate_config(c)
        if not 0.0 <= c.experience_ratio < 1.0:
            raise ConfigError(f"algorithm.experience_ratio must be in [0, 1), got {c.experience_ratio}")
        if not 0.0 <= c.start_accuracy <= 1.0:
            raise ConfigError(f"algorithm.start_accuracy must be in [0, 1], got {c.start_accuracy}")
        if c.bucket_sigma <= 0:
            raise ConfigError(f"algorithm.bucket_sigma must be > 0, got {c.bucket_sigma}")
        if c.max_per_prompt < 1:
            raise ConfigError(f"algorithm.max_per_prompt must be >= 1, got {c.max_per_prompt}")

    @classmethod
    def max_rows_per_prompt(cls, config: ExGRPOConfig, num_generations: int) -> int:
        return num_generations + 1

    def __init__(self, config: ExGRPOConfig, **kw: Any):
        super().__init__(config, **kw)
        self.store = ReplayBuffer(config.max_per_prompt)
        self.pass_rate: dict[str, float] = {}
        self.started = False
        self.rng = random.Random(config_seed(self.seed, self.process_index))  # draws; saved in checkpoints
        self.revisiting: list[str] = []  # this step's experience prompts (set before rollout, used by build_batch)
        self._fresh_successes = np.zeros(0, dtype=bool)  # the step's fresh rows that succeeded (set by build_batch)

    # -- before rollout -------------------------------------------------------------------------
    def revisit_prompts(self, step: int, prompts_per_step: int) -> list[str]:
        cfg = self.config
        n = min(int(cfg.experience_ratio * prompts_per_step), prompts_per_step - 1)
        candidates = {p: r for p, r in self.pass_rate.items() if self.store.size(p) and r < 1.0}
        self.revisiting = draw_prompts(candidates, n, cfg.bucket_sigma, self.rng) if self.started and n > 0 else []
        return list(self.revisiting)

    # -- batch ----------------------------------------------------------------------------------
    def build_batch(self, groups: list[RolloutGroup], step: int) -> TrainBatch:
        cfg = self.config
        on = self.on_policy_rows(groups)
        advantages = on["advantages"].copy()
        prompts, completions = list(on["prompt_ids"]), list(on["completion_ids"])
        old: list[np.ndarray | None] = [None] * len(completions)
        group_index, versions = list(on["group_index"]), list(on["policy_version"])
        off_signal = np.zeros(len(groups), dtype=bool)
        # a revisited prompt's group: the last group of that prompt (the sampler may also have offered it afresh)
        last = {g.prompt_id: gi for gi, g in enumerate(groups)}
        experience = sorted(last[p] for p in self.revisiting if p in last and self.store.size(p))
        staleness = []
        start = np.concatenate([[0], np.cumsum([len(g.completion_ids) for g in groups])]).astype(int)
        for gi in experience:
            g = groups[gi]
            versions_stored = self.store.versions(g.prompt_id)
            entries = self.store.get(g.prompt_id, range(self.store.size(g.prompt_id)))
            e = entries[lowest_entropy([x.logprobs for x in entries], versions_stored)]
            mixed = group_advantages(np.append(g.rewards, e.reward), cfg.scale_rewards, cfg.std_eps)
            advantages[start[gi] : start[gi + 1]] = mixed[:-1]
            prompts.append(g.prompt_ids)
            completions.append(e.completion_ids.astype(np.int64))
            advantages = np.append(advantages, np.float32(mixed[-1]))
            old.append(e.logprobs if cfg.importance_correction else None)
            group_index.append(gi)
            versions.append(e.policy_version)
            off_signal[gi] = bool(np.any(mixed != 0))
            staleness.append(g.policy_version - e.policy_version)
        n_on = len(on["completion_ids"])
        self._fresh_successes = np.concatenate([np.asarray(g.rewards) >= cfg.success_reward for g in groups])
        lengths = np.array([len(c) for c in completions])
        weights, token_sum = row_weights_for(cfg.loss_type, lengths, self.max_completion_length)
        batch = TrainBatch(
            prompt_ids=prompts,
            completion_ids=completions,
            advantages=advantages.astype(np.float32),
            row_weights=weights,
            token_sum=token_sum,
            old_logprobs=old,
            source=np.concatenate([np.zeros(n_on, np.int8), np.ones(len(completions) - n_on, np.int8)]),
            group_index=np.asarray(group_index, dtype=np.int64),
            policy_version=np.asarray(versions, dtype=np.int64),
        )
        batch.metrics = effective_step_metrics(on["group_has_signal"], off_signal, batch)
        batch.metrics.update(
            {
                "exgrpo/experience_groups": float(len(experience)),
                # groups whose fresh completions all got the same reward, given signal by the stored success
                "exgrpo/rescued_groups": float(
                    sum(off_signal[gi] and not on["group_has_signal"][gi] for gi in experience)
                ),
                "exgrpo/staleness_mean": float(np.mean(staleness)) if staleness else 0.0,
                "exgrpo/started": float(self.started),
            }
        )
        return batch

    def rows_needing_logprobs(self, batch: TrainBatch) -> np.ndarray:
        # Fresh successes enter the store with their behaviour (pre-step) log-probs, with or without gradient.
        fresh = np.zeros(len(batch), dtype=bool)
        fresh[batch.source == 0] = self._fresh_successes
        return fresh

    # -- store update ---------------------------------------------------------------------------
    def after_step(
        self, groups: list[RolloutGroup], batch: TrainBatch, behaviour_logprobs: list[np.ndarray], step: int
    ) -> dict[str, float]:
        cfg = self.config
        successes = 0
        for gi, g in enumerate(groups):
            rows = np.nonzero((batch.group_index == gi) & (batch.source == 0))[0]
            ok = np.asarray(g.rewards) >= cfg.success_reward
            successes += int(ok.sum())
            self.pass_rate[g.prompt_id] = float(ok.mean())
            for r, c, reward, good in zip(rows, g.completion_ids, g.rewards, ok):
                if good:
                    self.store.add(g.prompt_id, c, behaviour_logprobs[r], float(reward), g.policy_version)
        fresh = sum(len(g.completion_ids) for g in groups)
        if fresh and successes / fresh >= cfg.start_accuracy:
            self.started = True
        self.revisiting = []
        buckets = {name: 0 for name, _, _, _ in BUCKETS}
        retired = 0
        for p, r in self.pass_rate.items():
            if self.store.size(p):
                b = bucket_of(r)
                retired += b is None
                if b is not None:
                    buckets[b] += 1
        return {
            "exgrpo/store_prompts": float(len(self.store)),
            "exgrpo/store_entries": float(self.store.num_entries()),
            "exgrpo/retired_prompts": float(retired),
            **{f"exgrpo/bucket_{name}": float(n) for name, n in buckets.items()},
        }

    # -- state ----------------------------------------------------------------------------------
    def state_dict(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        tensors, meta = self.store.state_dict()
        v, internal, gauss = self.rng.getstate()
        return tensors, {
            "store": meta,
            "pass_rate": dict(sorted(self.pass_rate.items())),
            "started": self.started,
            "rng": [v, list(internal), gauss],
        }

    def load_state_dict(self, tensors: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.store = ReplayBuffer.from_state_dict(tensors, meta["store"])
        self.pass_rate = {str(k): float(v) for k, v in meta["pass_rate"].items()}
        self.started = bool(meta["started"])
        v, internal, gauss = meta["rng"]
        self.rng.setstate((v, tuple(internal), gauss))
