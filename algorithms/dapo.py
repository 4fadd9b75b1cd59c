"""DAPO's dynamic sampling (Yu et al., 2025, *DAPO: An Open-Source LLM Reinforcement Learning System at Scale*,
arXiv 2503.14476, section 3.2), on top of GRPO.

A group whose G rewards are all equal has zero advantage everywhere: it costs its generation and gives no gradient.
DAPO over-samples and filters:

1. After scoring, drop every group whose rewards are all equal (DAPO: accuracy 0 or 1 for every sample).
2. While fewer than ``train.prompts_per_step`` groups carry signal, generate more prompts (``round_prompts`` per
   round, default: as many as are missing), at most ``max_gen_batches`` extra rounds.
3. Train on the first ``prompts_per_step`` groups with signal, in generation order. If the rounds run out first, train
   on what there is (``dapo/short_step`` = 1, a warning; never an abort); with no group carrying signal at all, the
   step trains on the first round's groups (zero gradient, as GRPO would).

Every sample generated, kept or dropped, counts in ``tokens/generated``, ``flops/generate`` and every budget unit (the
trainer's rule), so a matched-compute comparison charges DAPO for what it throws away.

DAPO's other documented choices are the defaults here: clip-higher (``epsilon_high`` 0.28, ``epsilon_low`` 0.2) and
the token-level policy-gradient loss (``loss_type=bnpo``: every token of the batch weighs the same); set
``epsilon_high=0.2 loss_type=grpo`` to isolate dynamic sampling. Overlong reward shaping is not included.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from algorithms.base import GroupSelection, RolloutGroup, register_algorithm
from algorithms.grpo import GRPO, GRPOConfig
from harness.schema import ConfigError


@dataclass
class DAPOConfig(GRPOConfig):
    epsilon_high: float = field(
        default=0.28,
        metadata={"help": "Upper clip, DAPO's clip-higher (arXiv 2503.14476, section 3.1: 0.28; GRPO's 0.2)."},
    )
    loss_type: str = field(
        default="bnpo",
        metadata={
            "help": "Loss aggregation; DAPO's token-level policy-gradient loss is bnpo (arXiv 2503.14476, section 3.3). "
            "grpo / dr_grpo as in GRPO.",
            "choices": ("grpo", "bnpo", "dr_grpo"),
        },
    )
    dynamic_sampling: bool = field(
        default=True,
        metadata={
            "help": "Drop groups whose rewards are all equal and generate more prompts until the step holds "
            "train.prompts_per_step groups with signal (DAPO, arXiv 2503.14476, section 3.2). Off = GRPO with DAPO's "
            "clip and loss."
        },
    )
    max_gen_batches: int = field(
        default=10,
        metadata={
            "help": "Most extra generation rounds per step (verl's DAPO recipe: max_num_gen_batches 10); when they run "
            "out, the step trains on the groups with signal it has (dapo/short_step, a warning)."
        },
    )
    round_prompts: int = field(
        default=0,
        metadata={
            "help": "Prompts generated per extra round: 0 = as many as groups with signal are still missing (the "
            "least generation); N = N each round (verl generates a whole gen_batch_size)."
        },
    )


def has_signal(rewards: np.ndarray) -> bool:
    """A group carries signal when its rewards are not all equal (else every GRPO advantage is exactly 0)."""
    r = np.asarray(rewards)
    return r.size > 1 and bool(np.any(r != r[0]))


def dynamic_selection(
    signal: list[bool], *, rounds: int, target: int, max_rounds: int, round_prompts: int
) -> tuple[list[int], int]:
    """(groups to keep, prompts to generate next) given which of the step's groups carry signal.

    Keep the first ``target`` groups with signal; ask for more while fewer exist and ``rounds < max_rounds``; when the
    rounds run out, keep those there are, or, if none, the first round's ``target`` groups."""
    kept = [i for i, s in enumerate(signal) if s][:target]
    missing = target - len(kept)
    if missing > 0 and rounds < max_rounds:
        return kept, round_prompts or missing
    return (kept or list(range(min(target, len(signal))))), 0


@register_algorithm
class DAPO(GRPO):
    name = "dapo"
    config_cls = DAPOConfig

    @classmethod
    def validate_config(cls, config: DAPOConfig) -> None:
        super().validate_config(config)
        if config.max_gen_batches < 0:
            raise ConfigError(f"algorithm.max_gen_batches must be >= 0, got {config.max_gen_batches}")
        if config.round_prompts < 0:
            raise ConfigError(
                f"algorithm.round_prompts must be >= 0 (0 = the missing count), got {config.round_prompts}"
            )

    @classmethod
    def max_prompts_per_step(cls, config: DAPOConfig, prompts_per_step: int) -> int:
        if not config.dynamic_sampling:
            return prompts_per_step
        return prompts_per_step + config.max_gen_batches * (config.round_prompts or prompts_per_step)

    def select_groups(self, groups: list[RolloutGroup], *, rounds: int, prompts_per_step: int) -> GroupSelection:
        if not self.config.dynamic_sampling:
            return GroupSelection(keep=list(range(len(groups))))
        signal = [has_signal(g.rewards) for g in groups]
        keep, more = dynamic_selection(
            signal,
            rounds=rounds,
            target=prompts_per_step,
            max_rounds=self.config.max_gen_batches,
            round_prompts=self.config.round_prompts,
        )
        if more:
            return GroupSelection(keep=keep, more_prompts=more)
        with_signal = sum(signal[i] for i in keep)
        short = with_signal < prompts_per_step
        warning = None
        if short:
            warning = (
                f"DAPO dynamic sampling found {with_signal} of {prompts_per_step} groups with reward variance after "
                f"{rounds} extra rounds (algorithm.max_gen_batches={self.config.max_gen_batches}); training on "
                + ("them" if with_signal else "the first round's groups (no gradient)")
            )
        metrics: dict[str, Any] = {
            "dapo/short_step": float(short),
            "dapo/signal_frac": float(np.mean(signal)) if signal else 0.0,
        }
        return GroupSelection(keep=keep, metrics=metrics, warning=warning)
