"""RePO: Replay-Enhanced Policy Optimization (Li et al., 2025, arXiv 2506.09340), everything it adds to GRPO.

Per step, for each prompt:
1. On-policy: the G fresh completions, advantages as in GRPO.
2. Off-policy: if the prompt's replay buffer holds >= ``min_cache_to_replay`` entries, a strategy picks
   k = min(size, ``num_replays``) of them (``all`` takes every entry). Their advantages use the rewards
   stored with them, normalised on their own (``split``, the reference) or together with the fresh
   group (``mixed``). Their importance ratio uses the behaviour log-probs stored at generation time,
   with the same clip as on-policy rows.
3. Loss = on-policy term + ``off_policy_loss_coef`` x off-policy term. ``loss_weighting=reference``
   aggregates as the reference code does: ``grpo`` / ``dr_grpo`` average both terms over all G+k rows
   of the batch (its implicit 1/2 once replay starts), ``bnpo`` divides each term by its own token
   count; with ``beta`` > 0 it adds beta x one token mean of the k3 KL over all fresh tokens,
   whatever the loss type. ``paper`` normalises each term over its own rows (the paper's 1/G
   formula) and aggregates the KL like the on-policy term, so ``repo:none`` is then exactly ``grpo``.
4. After the optimizer step, the fresh completions enter the buffer with their pre-step log-probs,
   so a step never replays its own samples.

The buffer is keyed by the dataset's prompt id. Each process keeps the buffer of the prompts it owns
(the trainer's sampler sends a prompt to the same process on every visit), so nothing is gathered.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from algorithms.base import LossInputs, RolloutGroup, TrainBatch, register_algorithm
from algorithms.grpo import GRPO, GRPOConfig, effective_step_metrics, group_advantages, ratio_metrics, row_weights_for
from algorithms.replay_buffer import ReplayBuffer
from algorithms.replay_strategies import available_strategies, get_strategy, select_indices
from harness.schema import ConfigError


@dataclass
class RePOConfig(GRPOConfig):
    strategy: str = field(
        default="highest_k",
        metadata={
            "help": f"Replay strategy: {', '.join(available_strategies())} or one registered with "
            "algorithms.register_strategy (reference script default: highest_k; Qwen2.5-Math runs used recent_k)."
        },
    )
    num_replays: int = field(
        default=8, metadata={"help": "k: replayed completions per prompt (paper: 8). `all` ignores it."}
    )
    min_cache_to_replay: int = field(
        default=16,
        metadata={
            "help": "Replay a prompt only once its buffer holds this many entries (reference: 16, so replay starts in epoch 3 with G=8)."
        },
    )
    max_cache_size: int = field(default=16, metadata={"help": "Per-prompt FIFO capacity (reference: 16)."})
    adv_norm: str = field(
        default="split",
        metadata={
            "help": "split: replayed group normalised on its own (reference); mixed: one group of G+k.",
            "choices": ("split", "mixed"),
        },
    )
    off_policy_loss_coef: float = field(default=1.0, metadata={"help": "Weight of the off-policy term (paper: 1.0)."})
    loss_weighting: str = field(
        default="reference",
        metadata={
            "help": "reference: as the reference code (grpo/dr_grpo: both terms over all G+k rows, its implicit 1/2; bnpo: each term over its own tokens; "
            "KL: one token mean over the fresh tokens); paper: each term over its own rows, KL like the on-policy term.",
            "choices": ("reference", "paper"),
        },
    )


@register_algorithm
class RePO(GRPO):
    name = "repo"
    config_cls = RePOConfig
    summed_metrics = GRPO.summed_metrics + ("replay/rows",)

    @classmethod
    def max_rows_per_prompt(cls, config: RePOConfig, num_generations: int) -> int:
        replayed = {"none": 0, "all": config.max_cache_size}.get(config.strategy, config.num_replays)
        return num_generations + replayed

    @classmethod
    def apply_variant(cls, values: dict[str, Any], variant: str) -> dict[str, Any]:
        if "strategy" in values and values["strategy"] != variant:
            raise ConfigError(f"algorithm: 'repo:{variant}' conflicts with algorithm.strategy={values['strategy']!r}")
        return {**values, "strategy": variant}

    @classmethod
    def validate_config(cls, c: RePOConfig) -> None:
        super().validate_config(c)
        if c.strategy not in available_strategies():
            raise ConfigError(
                f"algorithm.strategy: unknown replay strategy '{c.strategy}'; available: {', '.join(available_strategies())}"
            )
        if c.max_cache_size < 1:
            raise ConfigError(f"algorithm.max_cache_size must be >= 1, got {c.max_cache_size}")
        if c.min_cache_to_replay < 1:
            raise ConfigError(f"algorithm.min_cache_to_replay must be >= 1, got {c.min_cache_to_replay}")
        if c.min_cache_to_replay > c.max_cache_size:
            raise ConfigError(
                f"algorithm.min_cache_to_replay ({c.min_cache_to_replay}) > algorithm.max_cache_size ({c.max_cache_size}): the buffer can never "
                "hold enough entries, so replay would silently never happen (the reference code's defaults have this bug)"
            )
        if c.strategy not in ("none", "all") and not 1 <= c.num_replays <= c.max_cache_size:
            raise ConfigError(
                f"algorithm.num_replays must be in [1, max_cache_size={c.max_cache_size}], got {c.num_replays}"
            )
        if c.off_policy_loss_coef < 0:
            raise ConfigError(f"algorithm.off_policy_loss_coef must be >= 0, got {c.off_policy_loss_coef}")

    def __init__(self, config: RePOConfig, **kw: Any):
        super().__init__(config, **kw)
        self.buffer = ReplayBuffer(config.max_cache_size)
        self.select = get_strategy(config.strategy)
        # Replay selection RNG: per process (each process owns its prompts), saved in checkpoints.
        self.rng = random.Random(config_seed(self.seed, self.process_index))
        self._replay_metrics: dict[str, float] = {}

    # -- batch ----------------------------------------------------------------------------------
    def build_batch(self, groups: list[RolloutGroup], step: int) -> TrainBatch:
        cfg = self.config
        on = self.on_policy_rows(groups)
        G = len(groups[0].completion_ids) if groups else 0
        off_prompt, off_completion, off_adv, off_old, off_group, off_version = [], [], [], [], [], []
        on_adv = on["advantages"].copy()
        off_signal = np.zeros(len(groups), dtype=bool)
        staleness: list[int] = []
        for gi, g in enumerate(groups):
            size = self.buffer.size(g.prompt_id)
            if cfg.strategy == "none" or size < cfg.min_cache_to_replay:
                continue
            stored = self.buffer.rewards(g.prompt_id)
            picked = select_indices(
                self.select, stored.tolist(), min(size, cfg.num_replays), self.rng
            )  # a user strategy's output checked
            if not picked:
                continue
            entries = self.buffer.get(g.prompt_id, list(picked))
            rewards = np.array([e.reward for e in entries], dtype=np.float64)
            if cfg.adv_norm == "split":
                adv = group_advantages(rewards, cfg.scale_rewards, cfg.std_eps)
            else:  # mixed: one group of G + k, fresh advantages recomputed too
                both = group_advantages(np.concatenate([g.rewards, rewards]), cfg.scale_rewards, cfg.std_eps)
                on_adv[gi * G : (gi + 1) * G] = both[:G]
                adv = both[G:]
            off_signal[gi] = bool(np.any(adv != 0))
            for e, a in zip(entries, adv):
                off_prompt.append(g.prompt_ids)
                off_completion.append(e.completion_ids.astype(np.int64))
                off_adv.append(a)
                off_old.append(e.logprobs)
                off_group.append(gi)
                off_version.append(e.policy_version)
                staleness.append(g.policy_version - e.policy_version)
        on_signal = (
            on["group_has_signal"]
            if cfg.adv_norm == "split"
            else np.array([np.any(on_adv[i * G : (i + 1) * G] != 0) for i in range(len(groups))], dtype=bool)
        )

        n_on, n_off = len(on["completion_ids"]), len(off_completion)
        on_len = np.array([len(c) for c in on["completion_ids"]])
        off_len = np.array([len(c) for c in off_completion], dtype=np.int64)
        reference = cfg.loss_weighting == "reference"
        if (
            reference and cfg.loss_type != "bnpo"
        ):  # the reference's grpo / dr_grpo: one normaliser over all G+k rows of the batch
            w, ts = row_weights_for(cfg.loss_type, np.concatenate([on_len, off_len]), self.max_completion_length)
            w = w.copy()
            w[n_on:] *= cfg.off_policy_loss_coef
        else:  # each term over its own rows (paper); the reference's bnpo divides each term by its own token count
            w_on, ts_on = row_weights_for(cfg.loss_type, on_len, self.max_completion_length)
            w_off, ts_off = row_weights_for(
                cfg.loss_type, off_len, self.max_completion_length, scale=cfg.off_policy_loss_coef
            )
            w, ts = np.concatenate([w_on, w_off]), np.concatenate([ts_on, ts_off])
        kl_w = None  # paper: the KL is aggregated like the on-policy term (as in grpo)
        if (
            reference and cfg.beta > 0
        ):  # the reference: one token mean of the KL over every fresh token, whatever the loss type
            kl_w = np.concatenate([np.full(n_on, 1.0 / max(int(on_len.sum()), 1)), np.zeros(n_off)])
        batch = TrainBatch(
            prompt_ids=on["prompt_ids"] + off_prompt,
            completion_ids=on["completion_ids"] + off_completion,
            advantages=np.concatenate([on_adv, np.asarray(off_adv, dtype=np.float32)]).astype(np.float32),
            row_weights=w,
            token_sum=ts,
            old_logprobs=[None] * n_on + off_old,
            source=np.concatenate([np.zeros(n_on, np.int8), np.ones(n_off, np.int8)]),
            group_index=np.concatenate([on["group_index"], np.asarray(off_group, dtype=np.int64)]),
            policy_version=np.concatenate([on["policy_version"], np.asarray(off_version, dtype=np.int64)]),
            kl_weights=kl_w,
        )
        batch.metrics = effective_step_metrics(on_signal, off_signal, batch)
        replayed = np.zeros(len(groups), dtype=bool)
        for gi in off_group:
            replayed[gi] = True
        batch.metrics.update(
            {
                "replay/hit_rate": float(replayed.mean()) if len(groups) else 0.0,
                "replay/rows": float(n_off),
                "replay/staleness_mean": float(np.mean(staleness)) if staleness else 0.0,
                "replay/staleness_max": float(np.max(staleness)) if staleness else 0.0,
            }
        )
        return batch

    def rows_with_gradient(self, batch: TrainBatch) -> np.ndarray:
        on = batch.source == 0
        return (batch.advantages != 0) | (on & (self.config.beta > 0))  # KL applies to on-policy rows only

    def plan_warnings(self, *, num_generations: int, visits_per_prompt: float) -> list[str]:
        # A prompt's buffer gains G entries per visit; it replays from the visit after it holds min_cache_to_replay.
        cfg = self.config
        if cfg.strategy == "none":
            return []
        first = -(-cfg.min_cache_to_replay // num_generations) + 1
        if visits_per_prompt < first:
            return [
                f"RePO replays a prompt from its visit {first} on (min_cache_to_replay {cfg.min_cache_to_replay}, G={num_generations}), but this run "
                f"visits each prompt ~{visits_per_prompt:.1f} times: it will train like GRPO. Train on fewer prompts (data.train_size), "
                f"for more steps, or lower algorithm.min_cache_to_replay."
            ]
        return []

    def rows_needing_logprobs(self, batch: TrainBatch) -> np.ndarray:
        # Fresh completions enter the buffer with their behaviour (pre-step) log-probs.
        return (batch.source == 0) & (self.config.strategy != "none")

    # -- loss -----------------------------------------------------------------------------------
    def loss(self, inputs: LossInputs) -> tuple[torch.Tensor, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
        # GRPO's clipped loss with the rows split into two terms (the off-policy coefficient is inside the row weights;
        # the trainer gives replayed rows IS weight 1); the KL applies to the first term, the on-policy rows.
        is_on = inputs.source == 0
        total, metrics, (ratio, clip_low, clip_high) = self.clipped_loss(
            inputs, {"on_policy": is_on, "off_policy": ~is_on}
        )
        on_mask = inputs.mask * is_on.unsqueeze(1)
        off_mask = inputs.mask * (~is_on).unsqueeze(1)
        metrics.update(ratio_metrics(ratio, clip_low, clip_high, on_mask, prefix="on_"))
        if bool((~is_on).any()):
            metrics.update(ratio_metrics(ratio, clip_low, clip_high, off_mask, prefix="off_"))
        return total, metrics

    # -- buffer update --------------------------------------------------------------------------
    def after_step(
        self, groups: list[RolloutGroup], batch: TrainBatch, behaviour_logprobs: list[np.ndarray], step: int
    ) -> dict[str, float]:
        if self.config.strategy != "none":
            G = len(groups[0].completion_ids) if groups else 0
            for gi, g in enumerate(groups):
                self.buffer.add_many(
                    g.prompt_id,
                    g.completion_ids,
                    behaviour_logprobs[gi * G : (gi + 1) * G],
                    [float(r) for r in g.rewards],
                    g.policy_version,
                )
        return {
            "replay/buffer_prompts": float(len(self.buffer)),
            "replay/buffer_entries": float(self.buffer.num_entries()),
            "replay/buffer_tokens": float(self.buffer.num_tokens()),
            "replay/buffer_bytes": float(self.buffer.nbytes()),
            "replay/bytes_per_token": float(self.buffer.bytes_per_token()) if self.buffer.num_tokens() else 0.0,
        }

    # -- state ----------------------------------------------------------------------------------
    def state_dict(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        tensors, meta = self.buffer.state_dict()
        v, internal, gauss = self.rng.getstate()
        return tensors, {"buffer": meta, "rng": [v, list(internal), gauss]}

    def load_state_dict(self, tensors: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.buffer = ReplayBuffer.from_state_dict(tensors, meta["buffer"])
        v, internal, gauss = meta["rng"]
        self.rng.setstate((v, tuple(internal), gauss))


def config_seed(seed: int, process_index: int) -> int:
    return seed * 1_000_003 + process_index
