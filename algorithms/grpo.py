"""GRPO (Shao et al., 2024) as used by the RePO paper's baseline, read top to bottom.

1. Group-normalised advantages: A_i = (R_i - mean(R)) / (std(R) + eps), one per completion,
   broadcast to its tokens (``scale_rewards=False`` drops the division: Dr. GRPO style).
2. PPO-clipped token loss with asymmetric clip range [1 - epsilon_low, 1 + epsilon_high].
3. Optional KL to a frozen reference model with the k3 estimator, weighted by ``beta``.
4. Aggregation ``grpo`` (token mean per sequence, mean over sequences), ``bnpo`` (sum over all
   tokens / token count) or ``dr_grpo`` (sum / (rows x max_completion_length)).

The small pure functions here are the loss pieces RePO reuses; nothing in this file knows about replay.
"""

from __future__ import annotations

import functools
import operator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from algorithms.base import Algorithm, LossInputs, RolloutGroup, TrainBatch, register_algorithm
from harness.schema import ConfigError

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo")

Metrics = dict[str, tuple[torch.Tensor, torch.Tensor]]  # name -> (numerator, denominator), pooled by the trainer


@dataclass
class GRPOConfig:
    beta: float = field(
        default=0.0,
        metadata={
            "help": "KL coefficient to the reference model (k3 estimator). The paper uses 0: no reference model is loaded."
        },
    )
    epsilon_low: float = field(
        default=0.2, metadata={"help": "Lower clip: ratios below 1 - epsilon_low are clipped (paper: 0.2)."}
    )
    epsilon_high: float = field(
        default=0.2,
        metadata={
            "help": "Upper clip: ratios above 1 + epsilon_high are clipped (paper: 0.2; DAPO's clip-higher uses 0.28)."
        },
    )
    loss_type: str = field(
        default="grpo",
        metadata={
            "help": "Loss aggregation: grpo (token mean per sequence, then mean), bnpo (token mean over the batch), dr_grpo (sum / (rows x max_completion_length)).",
            "choices": LOSS_TYPES,
        },
    )
    scale_rewards: bool = field(
        default=True, metadata={"help": "Divide group-centred rewards by the group's std (+ std_eps). Off = Dr. GRPO."}
    )
    std_eps: float = field(
        default=1e-4, metadata={"help": "Added to the group std before dividing (the reference uses 1e-4)."}
    )
    num_iterations: int = field(
        default=1,
        metadata={"help": "mu: optimizer steps taken on each generated batch (paper: 1, so the clip never binds)."},
    )


# ------------------------------------------------------------------------------------------------
# Pure loss pieces (shared with RePO)


def group_advantages(rewards: np.ndarray, scale_rewards: bool = True, std_eps: float = 1e-4) -> np.ndarray:
    """Advantages of one group. A group whose rewards are all equal gets exactly zero.

    The std is the unbiased one (torch's default, as in the reference). Computed in float64 and
    forced to 0 for constant groups, so float residue can never be amplified by 1/std_eps.
    """
    r = np.asarray(rewards, dtype=np.float64)
    if r.size == 0:
        return r.astype(np.float32)
    if r.size == 1 or np.all(r == r[0]):
        return np.zeros_like(r, dtype=np.float32)
    centred = r - r.mean()
    if scale_rewards:
        centred = centred / (r.std(ddof=1) + std_eps)
    return centred.astype(np.float32)


def row_weights_for(
    loss_type: str, lengths: np.ndarray, max_completion_length: int, scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Per-row weights and sum/mean flags that make ``aggregate`` equal the named loss type.

    ``lengths`` are the completion lengths of the rows that form one normalisation group;
    ``scale`` multiplies the weights (used for a loss coefficient).
    """
    n = len(lengths)
    if n == 0:
        return np.zeros(0), np.zeros(0, dtype=bool)
    if loss_type == "grpo":
        return np.full(n, scale / n), np.zeros(n, dtype=bool)
    if loss_type == "bnpo":
        return np.full(n, scale / max(int(np.sum(lengths)), 1)), np.ones(n, dtype=bool)
    if loss_type == "dr_grpo":
        return np.full(n, scale / (n * max_completion_length)), np.ones(n, dtype=bool)
    raise ConfigError(f"algorithm.loss_type: expected one of {', '.join(LOSS_TYPES)}, got {loss_type!r}")


def clipped_token_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    epsilon_low: float,
    epsilon_high: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO-clip per-token loss -min(r A, clip(r, 1-el, 1+eh) A) with r = exp(logp - old_logp).

    Returns (loss [B,T], ratio [B,T], clipped_low [B,T] bool, clipped_high [B,T] bool); a token is
    counted as clipped only where the clip actually changes the objective.
    """
    ratio = torch.exp(logprobs - old_logprobs)
    adv = advantages.unsqueeze(1)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high) * adv
    loss = -torch.min(unclipped, clipped)
    clipped_low = (ratio < 1 - epsilon_low) & (adv < 0)
    clipped_high = (ratio > 1 + epsilon_high) & (adv > 0)
    return loss, ratio, clipped_low, clipped_high


def apply_is_weights(token_loss: torch.Tensor, is_weights: torch.Tensor | None) -> torch.Tensor:
    """Token loss times the trainer's (detached) importance weights; unchanged when there are none."""
    return token_loss if is_weights is None else token_loss * is_weights


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(pi || ref): exp(ref - logp) - (ref - logp) - 1 (always >= 0)."""
    d = ref_logprobs - logprobs
    return torch.exp(d) - d - 1


def aggregate(
    token_loss: torch.Tensor, mask: torch.Tensor, row_weights: torch.Tensor, token_sum: torch.Tensor
) -> torch.Tensor:
    """sum_rows weight_row * (sum or mean of the row's masked token losses)."""
    per_row_sum = (token_loss * mask).sum(dim=1)
    per_row_mean = per_row_sum / mask.sum(dim=1).clamp(min=1)
    per_row = torch.where(token_sum, per_row_sum, per_row_mean)
    return (per_row * row_weights).sum()


def aggregate_kl(kl: torch.Tensor, inputs: LossInputs, row_weights: torch.Tensor) -> torch.Tensor:
    """The KL term: each row's KL token sum times ``inputs.kl_weights`` when the batch set them (RePO's
    reference weighting: one token mean over the fresh tokens), else aggregated like the policy loss
    with ``row_weights`` (TRL's GRPO: beta x KL is part of each token's loss)."""
    if inputs.kl_weights is not None:
        return ((kl * inputs.mask).sum(dim=1) * inputs.kl_weights).sum()
    return aggregate(kl, inputs.mask, row_weights, inputs.token_sum)


def masked_mean_parts(values: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum, count) of ``values`` over ``mask`` — the trainer sums these over micro-batches."""
    return (values * mask).sum().detach(), mask.sum().detach()


# ------------------------------------------------------------------------------------------------


@register_algorithm
class GRPO(Algorithm):
    name = "grpo"
    config_cls = GRPOConfig
    summed_metrics = (
        "samples/nonzero_adv",
        "groups/on_policy_nonzero_var",
        "groups/replay_nonzero_var",
    )  # counts (effective_step_metrics)

    @classmethod
    def validate_config(cls, config: GRPOConfig) -> None:
        if config.beta < 0:
            raise ConfigError(f"algorithm.beta must be >= 0, got {config.beta}")
        if not 0 <= config.epsilon_low < 1:
            raise ConfigError(f"algorithm.epsilon_low must be in [0, 1), got {config.epsilon_low}")
        if config.epsilon_high < 0:
            raise ConfigError(f"algorithm.epsilon_high must be >= 0, got {config.epsilon_high}")
        if config.num_iterations < 1:
            raise ConfigError(f"algorithm.num_iterations must be >= 1, got {config.num_iterations}")
        if config.std_eps <= 0:
            raise ConfigError(f"algorithm.std_eps must be > 0, got {config.std_eps}")

    @property
    def num_iterations(self) -> int:
        return self.config.num_iterations

    @property
    def needs_reference_model(self) -> bool:
        return self.config.beta > 0

    # -- batch ----------------------------------------------------------------------------------
    def on_policy_rows(self, groups: list[RolloutGroup]) -> dict[str, Any]:
        """Advantages and bookkeeping for the on-policy rows of every group."""
        cfg = self.config
        prompt_ids, completions, advantages, group_index, versions, nonzero_groups = [], [], [], [], [], []
        for gi, g in enumerate(groups):
            adv = group_advantages(g.rewards, cfg.scale_rewards, cfg.std_eps)
            nonzero_groups.append(bool(np.any(adv != 0)))
            for c, a in zip(g.completion_ids, adv):
                prompt_ids.append(g.prompt_ids)
                completions.append(c)
                advantages.append(a)
                group_index.append(gi)
                versions.append(g.policy_version)
        return {
            "prompt_ids": prompt_ids,
            "completion_ids": completions,
            "advantages": np.asarray(advantages, dtype=np.float32),
            "group_index": np.asarray(group_index, dtype=np.int64),
            "policy_version": np.asarray(versions, dtype=np.int64),
            "group_has_signal": np.asarray(nonzero_groups, dtype=bool),
        }

    def build_batch(self, groups: list[RolloutGroup], step: int) -> TrainBatch:
        rows = self.on_policy_rows(groups)
        lengths = np.array([len(c) for c in rows["completion_ids"]])
        weights, token_sum = row_weights_for(self.config.loss_type, lengths, self.max_completion_length)
        n = len(lengths)
        batch = TrainBatch(
            prompt_ids=rows["prompt_ids"],
            completion_ids=rows["completion_ids"],
            advantages=rows["advantages"],
            row_weights=weights,
            token_sum=token_sum,
            old_logprobs=[None] * n,
            source=np.zeros(n, dtype=np.int8),
            group_index=rows["group_index"],
            policy_version=rows["policy_version"],
        )
        batch.metrics = effective_step_metrics(rows["group_has_signal"], np.zeros(len(groups), dtype=bool), batch)
        return batch

    def rows_with_gradient(self, batch: TrainBatch) -> np.ndarray:
        if self.config.beta > 0:  # the KL term gives every row a gradient
            return np.ones(len(batch), dtype=bool)
        return batch.advantages != 0

    # -- loss -----------------------------------------------------------------------------------
    def loss(self, inputs: LossInputs) -> tuple[torch.Tensor, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
        total, metrics, _ = self.clipped_loss(inputs)
        return total, metrics

    def clipped_loss(
        self, inputs: LossInputs, terms: dict[str, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, Metrics, tuple[torch.Tensor, ...]]:
        """The clipped surrogate (+ beta x KL), its metrics, and (ratio, clip_low, clip_high) for more ratio metrics.

        ``terms`` (name -> bool row mask) splits the policy loss into one aggregate per subset of rows, each logged as
        ``loss/<name>``, that add up to ``loss/policy``; the KL then applies to the first term's rows. GRPO has one
        term (every row); RePO has two (on-policy rows and replayed rows)."""
        cfg = self.config
        token_loss, ratio, clip_low, clip_high = clipped_token_loss(
            inputs.logprobs, inputs.old_logprobs, inputs.advantages, cfg.epsilon_low, cfg.epsilon_high
        )
        token_loss = apply_is_weights(token_loss, inputs.is_weights)
        weights = (
            {"policy": inputs.row_weights}
            if terms is None
            else {n: inputs.row_weights * rows for n, rows in terms.items()}
        )
        losses = {n: aggregate(token_loss, inputs.mask, w, inputs.token_sum) for n, w in weights.items()}
        policy_loss = functools.reduce(operator.add, losses.values())
        total = policy_loss
        metrics: Metrics = {}
        if cfg.beta > 0:
            assert inputs.ref_logprobs is not None, "beta > 0 needs reference log-probs"
            kl_rows = None if terms is None else next(iter(terms.values()))
            kl = kl_k3(inputs.logprobs, inputs.ref_logprobs)
            kl_loss = aggregate_kl(kl, inputs, next(iter(weights.values())))
            total = total + cfg.beta * kl_loss
            metrics["kl/mean"] = masked_mean_parts(
                kl, inputs.mask if kl_rows is None else inputs.mask * kl_rows.unsqueeze(1)
            )
            metrics["loss/kl"] = (kl_loss.detach(), torch.tensor(1.0))
        one = torch.tensor(1.0)
        if terms is not None:
            metrics.update({f"loss/{n}": (loss.detach(), one) for n, loss in losses.items()})
        metrics["loss/policy"] = (policy_loss.detach(), one)
        metrics["loss/total"] = (total.detach(), one)
        metrics.update(ratio_metrics(ratio, clip_low, clip_high, inputs.mask, prefix=""))
        return total, metrics, (ratio, clip_low, clip_high)


def ratio_metrics(
    ratio: torch.Tensor, clip_low: torch.Tensor, clip_high: torch.Tensor, mask: torch.Tensor, prefix: str
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Clip fractions and importance-ratio statistics over the masked tokens."""
    m = mask.bool()
    out = {
        f"clip/{prefix}low_frac": masked_mean_parts(clip_low.float(), mask),
        f"clip/{prefix}high_frac": masked_mean_parts(clip_high.float(), mask),
        f"clip/{prefix}region_frac": masked_mean_parts((clip_low | clip_high).float(), mask),
        f"ratio/{prefix}mean": masked_mean_parts(ratio.detach(), mask),
    }
    if m.any():
        sel = ratio.detach()[m]
        out[f"ratio/{prefix}max"] = (sel.max(), torch.tensor(float("nan")))
        out[f"ratio/{prefix}min"] = (sel.min(), torch.tensor(float("nan")))
    return out


def effective_step_metrics(on_signal: np.ndarray, off_signal: np.ndarray, batch: TrainBatch) -> dict[str, float]:
    """How much of a step carries gradient; defined identically for every algorithm (README, "Effective steps").

    A prompt counts as effective when any of its rows (on-policy or replayed) has a non-zero
    advantage; ``effective/step`` is the fraction of the step's prompts that do, so summing it over
    steps gives effective steps in units of full steps.
    """
    n_groups = max(len(on_signal), 1)
    nonzero = batch.advantages != 0
    lengths = np.array([len(c) for c in batch.completion_ids]) if len(batch) else np.zeros(0, dtype=int)
    on = batch.source == 0
    off = ~on
    tokens = max(int(lengths.sum()), 1)
    grad_tokens = int(lengths[nonzero].sum())
    return {
        "groups/zero_std_frac": float(1.0 - on_signal.mean()) if len(on_signal) else 0.0,
        "groups/on_policy_nonzero_var": float(on_signal.sum()),
        "groups/replay_nonzero_var": float(off_signal.sum()),
        "samples/nonzero_adv_frac": float(nonzero.mean()) if len(batch) else 0.0,
        "samples/nonzero_adv": float(nonzero.sum()),
        "tokens/with_gradient": float(grad_tokens),
        "tokens/with_gradient_frac": grad_tokens / tokens,
        "tokens/on_policy_share": float(lengths[on].sum()) / tokens,
        "tokens/off_policy_share": float(lengths[off].sum()) / tokens,
        "effective/step": float((on_signal | off_signal).sum()) / n_groups,
    }
