"""The seam between the shared trainer and an algorithm plug-in.

The trainer turns prompts into :class:`RolloutGroup` objects (a prompt, its G completions and their
rewards). A plug-in decides which of the step's groups to train on and whether to generate more first
(``select_groups``: DAPO's dynamic sampling), turns the groups into a :class:`TrainBatch` (rows with
advantages, loss weights and, for off-policy rows, stored behaviour log-probs), computes the loss on the
policy's log-probs, and sees the step's outcome in ``after_step``. Everything an algorithm adds (replay
buffers, resampling included) lives behind this interface; the trainer never mentions replay.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, get_type_hints

import numpy as np
import torch

from harness.schema import ConfigError, coerce


@dataclass
class RolloutGroup:
    """One prompt's on-policy samples for this step."""

    prompt_id: str  # stable id from the dataset (never the templated text)
    prompt_ids: list[int]  # prompt token ids after the chat template and truncation
    completion_ids: list[np.ndarray]  # G arrays of int token ids (eos included when generated)
    rewards: np.ndarray  # [G] float64
    policy_version: int  # optimizer steps taken by the policy that generated them
    # The rollout engine's per-token log-probs of each completion under the distribution it sampled from
    # (temperature, top-k, top-p applied); None when the engine returned none.
    engine_logprobs: list[np.ndarray | None] | None = None


@dataclass
class GroupSelection:
    """An algorithm's answer to "these groups were generated this step: what now?" (``Algorithm.select_groups``).

    ``more_prompts`` > 0: the trainer generates that many more prompts (from this process's own prompts, in the
    sampler's order), appends their groups to the step's and asks again. 0: the step trains on the groups ``keep``
    (indices into the step's groups, in the order given; never empty). Every generated token counts in the
    step's ``tokens/generated`` and FLOPs, kept or not, so budgets stay honest.
    """

    keep: list[int]
    more_prompts: int = 0
    metrics: dict[str, float] = field(default_factory=dict)  # the plug-in's own (logged with the step)
    warning: str | None = None  # printed once by the trainer (main process) with the run's name


def check_choice(chosen: list[int], num_offered: int, name: str) -> list[int]:
    """A plug-in's ``choose_prompts`` answer, checked: distinct indices into the offer, at least one."""
    out = [int(i) for i in chosen]
    if not out or len(set(out)) != len(out) or any(not 0 <= i < num_offered for i in out):
        raise ValueError(
            f"algorithm '{name}': choose_prompts returned {out}, not distinct indices in range(0, {num_offered}) "
            "(at least one)"
        )
    return out


def check_revisits(revisits: list[str], owned: dict[str, int], prompts_per_step: int, name: str) -> list[int]:
    """A plug-in's ``revisit_prompts`` answer as training-row indices, checked: distinct prompt ids this process owns,
    fewer than ``prompts_per_step``."""
    ids = [str(p) for p in revisits]
    if len(set(ids)) != len(ids) or len(ids) >= max(prompts_per_step, 1):
        raise ValueError(
            f"algorithm '{name}': revisit_prompts returned {len(ids)} prompt ids ({len(set(ids))} distinct), not at "
            f"most {prompts_per_step - 1} distinct ones (prompts_per_step - 1)"
        )
    unknown = [p for p in ids if p not in owned]
    if unknown:
        raise ValueError(
            f"algorithm '{name}': revisit_prompts returned prompt ids this process does not own: {unknown[:5]}"
        )
    return [owned[p] for p in ids]


def check_selection(selection: GroupSelection, num_groups: int, name: str) -> GroupSelection:
    """A plug-in's :class:`GroupSelection`, checked (as replay strategies' output is): distinct in-range indices, a
    non-negative request, and a non-empty ``keep`` once it asks for nothing more."""
    keep = [int(i) for i in selection.keep]
    if len(set(keep)) != len(keep) or any(not 0 <= i < num_groups for i in keep):
        raise ValueError(
            f"algorithm '{name}': select_groups kept {keep}, not distinct indices in range(0, {num_groups})"
        )
    if selection.more_prompts < 0:
        raise ValueError(f"algorithm '{name}': select_groups asked for {selection.more_prompts} more prompts")
    if not keep and not selection.more_prompts:
        raise ValueError(f"algorithm '{name}': select_groups kept no group and asked for no more")
    selection.keep = keep
    return selection


@dataclass
class TrainBatch:
    """Rows the trainer runs forward/backward on. All per-row arrays have the same length R."""

    prompt_ids: list[list[int]]
    completion_ids: list[np.ndarray]
    advantages: np.ndarray  # [R] float32, one sequence-level advantage per row
    row_weights: np.ndarray  # [R] float64: weight of the row's aggregated token loss (encodes loss_type)
    token_sum: np.ndarray  # [R] bool: aggregate a row's tokens by sum (bnpo, dr_grpo) instead of mean (grpo)
    old_logprobs: list[np.ndarray | None]  # stored behaviour log-probs; None = the current policy (on-policy)
    source: np.ndarray  # [R] int8: 0 = on-policy, 1 = replayed
    group_index: np.ndarray  # [R] index into the step's groups; -1: a replayed row of none of them
    policy_version: np.ndarray  # [R] version that generated the row
    metrics: dict[str, float] = field(default_factory=dict)  # batch-construction metrics (advantages, replay)
    # [R] float64: weight of each row's summed KL tokens when beta > 0 (like row_weights, fixed before the
    # forward so micro-batches add up to the whole batch's loss); None = the KL is aggregated like the policy loss.
    kl_weights: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.completion_ids)

    def select(self, idx: np.ndarray) -> "TrainBatch":
        """Sub-batch of rows ``idx`` (micro-batching); metrics stay with the full batch."""
        return TrainBatch(
            prompt_ids=[self.prompt_ids[i] for i in idx],
            completion_ids=[self.completion_ids[i] for i in idx],
            advantages=self.advantages[idx],
            row_weights=self.row_weights[idx],
            token_sum=self.token_sum[idx],
            old_logprobs=[self.old_logprobs[i] for i in idx],
            source=self.source[idx],
            group_index=self.group_index[idx],
            policy_version=self.policy_version[idx],
            kl_weights=None if self.kl_weights is None else self.kl_weights[idx],
        )


@dataclass
class LossInputs:
    """Tensors for one micro-batch, aligned on completion positions [B, T]."""

    logprobs: torch.Tensor  # current policy log-probs (with grad)
    old_logprobs: torch.Tensor  # behaviour / pre-step log-probs (no grad)
    ref_logprobs: torch.Tensor | None  # reference model log-probs when beta > 0
    mask: torch.Tensor  # [B, T] float, 1 on real completion tokens
    advantages: torch.Tensor  # [B]
    row_weights: torch.Tensor  # [B]
    token_sum: torch.Tensor  # [B] bool
    source: torch.Tensor  # [B] int
    # Optional per-token importance weights [B, T] (no grad) that multiply the policy-gradient token loss:
    # the trainer's truncated-IS correction for the rollout engine vs trainer mismatch (generation.tis_cap).
    # None = off (the loss is then exactly the uncorrected one).
    is_weights: torch.Tensor | None = None
    # Optional [B] weights of each row's summed KL tokens (TrainBatch.kl_weights); None = like the policy loss.
    kl_weights: torch.Tensor | None = None


class Algorithm:
    """Base class of algorithm plug-ins. Subclasses set ``name`` and ``config_cls``."""

    name: ClassVar[str] = ""
    config_cls: ClassVar[type] = object
    #: Metrics of this plug-in that are counts: summed over processes (the others are averaged, ``*/max`` and
    #: ``*/min`` take the extreme). The trainer's multi-process reduction reads it; nothing else lists them.
    summed_metrics: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self, config: Any, *, seed: int, max_completion_length: int, process_index: int = 0, num_processes: int = 1
    ):
        self.config = config
        self.seed = seed
        self.max_completion_length = max_completion_length  # dr_grpo's constant normaliser
        self.process_index = process_index
        self.num_processes = num_processes

    # -- what the trainer asks ----------------------------------------------------------------
    @property
    def num_iterations(self) -> int:
        return 1

    @property
    def needs_reference_model(self) -> bool:
        return False

    def choose_prompts(self, prompt_ids: list[str], step: int) -> list[int]:
        """Before rollout: which of the prompts the trainer offers to generate, and in what order (indices into
        ``prompt_ids``, distinct, at least one). The offer is the next prompts of this process's own shard (so a prompt
        stays with its process); the ones skipped are consumed, not generated. State the choice depends on belongs in
        ``state_dict``. Default: every prompt, as offered."""
        return list(range(len(prompt_ids)))

    def revisit_prompts(self, step: int, prompts_per_step: int) -> list[str]:
        """Before rollout: ids of earlier prompts to generate again this step, in place of as many of the sampler's new
        ones (ExGRPO's experience prompts). Only prompts of this process's own shard qualify (a plug-in that keeps
        per-prompt state has seen no other), distinct, at most ``prompts_per_step - 1`` (a step always takes one new
        prompt); their groups come after the sampler's. Default: none."""
        return []

    def select_groups(self, groups: list[RolloutGroup], *, rounds: int, prompts_per_step: int) -> GroupSelection:
        """After scoring: which of the step's groups to train on, or how many more prompts to generate first.

        ``groups``: every group generated this step so far (the first ``prompts_per_step``, then each extra round's);
        ``rounds``: extra rounds generated so far. The plug-in caps the rounds itself. Default: train on every group
        (no extra generation: the step is exactly one rollout of the sampler's prompts)."""
        return GroupSelection(keep=list(range(len(groups))))

    @classmethod
    def max_prompts_per_step(cls, config: Any, prompts_per_step: int) -> int:
        """The most prompts one step can generate (``select_groups``' extra rounds included): ``--dry-run``'s bounds."""
        return prompts_per_step

    def build_batch(self, groups: list[RolloutGroup], step: int) -> TrainBatch:
        raise NotImplementedError

    def rows_with_gradient(self, batch: TrainBatch) -> np.ndarray:
        """Rows whose loss can have a non-zero gradient; the trainer skips forward/backward for the rest.

        A row with zero advantage and no KL term contributes exactly zero to the loss and its gradient
        (the aggregation weights are fixed before the forward pass), so skipping it changes nothing.
        """
        return batch.advantages != 0

    def rows_needing_logprobs(self, batch: TrainBatch) -> np.ndarray:
        """Rows whose pre-step log-probs ``after_step`` needs even when they carry no gradient."""
        return np.zeros(len(batch), dtype=bool)

    @classmethod
    def max_rows_per_prompt(cls, config: Any, num_generations: int) -> int:
        """The most training rows one prompt can add to a step (``--dry-run``'s compute and memory upper bounds)."""
        return num_generations

    def plan_warnings(self, *, num_generations: int, visits_per_prompt: float) -> list[str]:
        """Warnings about the planned run (printed before training), e.g. a setting that cannot take effect in it.

        ``visits_per_prompt``: how often each training prompt is sampled over the whole run (steps x
        prompts per step / training prompts)."""
        return []

    def loss(self, inputs: LossInputs) -> tuple[torch.Tensor, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
        """Return the loss to backpropagate and metrics as name -> (numerator, denominator)."""
        raise NotImplementedError

    def after_step(
        self, groups: list[RolloutGroup], batch: TrainBatch, behaviour_logprobs: list[np.ndarray], step: int
    ) -> dict[str, float]:
        """Called after the optimizer step with the pre-step log-probs of every batch row."""
        return {}

    def state_dict(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Tensors (saved with safetensors) and JSON metadata; never pickle."""
        return {}, {}

    def load_state_dict(self, tensors: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        pass

    @classmethod
    def apply_variant(cls, values: dict[str, Any], variant: str) -> dict[str, Any]:
        """Map a variant suffix (``repo:recent_k``) onto config fields. Plug-ins without variants reject it."""
        raise ConfigError(f"algorithm '{cls.name}' has no variants; got '{cls.name}:{variant}'")

    @classmethod
    def validate_config(cls, config: Any) -> None:
        pass


# ------------------------------------------------------------------------------------------------
# Registry

_ALGORITHMS: dict[str, type[Algorithm]] = {}


def register_algorithm(cls: type[Algorithm]) -> type[Algorithm]:
    if not cls.name:
        raise ValueError(f"{cls.__name__} must set a non-empty `name`")
    if cls.name in _ALGORITHMS and _ALGORITHMS[cls.name] is not cls:
        raise ValueError(f"algorithm '{cls.name}' is already registered")
    _ALGORITHMS[cls.name] = cls
    return cls


def available_algorithms() -> list[str]:
    return sorted(_ALGORITHMS)


def get_algorithm_class(name: str) -> type[Algorithm]:
    if name not in _ALGORITHMS:
        raise ConfigError(
            f"unknown algorithm '{name}'; available: {', '.join(available_algorithms())} "
            "(an algorithm of your own: load its module with --plugin MODULE)"
        )
    return _ALGORITHMS[name]


def split_variant(spec: str) -> tuple[str, str | None]:
    """``"repo:recent_k"`` -> ``("repo", "recent_k")``; ``"grpo"`` -> ``("grpo", None)``."""
    name, _, variant = spec.partition(":")
    return name.strip(), (variant.strip() or None)


def resolve_algorithm(section: dict[str, Any]) -> tuple[type[Algorithm], Any]:
    """Turn the config's ``algorithm`` mapping into (plug-in class, its validated config object)."""
    values = dict(section)
    spec = values.pop("name", None)
    if not isinstance(spec, str) or not spec:
        raise ConfigError("algorithm.name is required (e.g. grpo, repo:recent_k)")
    name, variant = split_variant(spec)
    cls = get_algorithm_class(name)
    if variant:
        values = cls.apply_variant(values, variant)
    config = cls.config_cls()
    hints = get_type_hints(cls.config_cls)
    valid = {f.name for f in fields(config)}
    for key, value in values.items():
        if key not in valid:
            raise ConfigError(
                f"unknown config key 'algorithm.{key}' for algorithm '{name}'; valid keys: {', '.join(sorted(valid))}"
            )
        choices = cls.config_cls.__dataclass_fields__[key].metadata.get("choices")
        coerced = coerce(value, hints[key], f"algorithm.{key}")
        if choices and coerced not in choices:
            raise ConfigError(f"algorithm.{key}: expected one of {', '.join(choices)}, got {coerced!r}")
        setattr(config, key, coerced)
    cls.validate_config(config)
    return cls, config


def algorithm_config_dict(section: dict[str, Any]) -> dict[str, Any]:
    """The fully resolved algorithm section (name + every field), for saving with the run."""
    cls, config = resolve_algorithm(section)
    return {"name": section["name"], **dataclasses.asdict(config)}


def create_algorithm(
    section: dict[str, Any], *, seed: int, max_completion_length: int, process_index: int = 0, num_processes: int = 1
) -> Algorithm:
    cls, config = resolve_algorithm(section)
    return cls(
        config,
        seed=seed,
        max_completion_length=max_completion_length,
        process_index=process_index,
        num_processes=num_processes,
    )
