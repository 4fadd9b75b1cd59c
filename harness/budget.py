"""Matched compute: budget units, what a run has spent, the LR by budget fraction, the FLOPs rule, plan estimates.

Every run of a comparison stops once the same budget is spent (``train.budget: UNIT:VALUE``); without one the
budget is the step count. One rule each, in one place:

- :func:`parse_budget`: ``"flops:2e13"`` -> ``("flops", 2e13)``, units in :data:`BUDGET_UNITS`.
- :class:`Budget`: a run's unit, value and step cap; what it has spent, the fraction, whether it is done.
  Every unit but ``steps`` is read from the trainer's running totals (:data:`UNIT_TOTALS`).
- :func:`lr_factor`: the learning-rate multiplier as a function of the budget fraction spent.
- :func:`step_flops`: FLOPs of one step from its token counts (2N per processed token, 6N per trained token).
- :func:`planned_steps` / :func:`visits_per_prompt` / :func:`plan_warnings`: how long a run is, known before it starts.
- :func:`param_count` / :func:`estimate`: the upper-bound compute of a planned run (``harness run --dry-run``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from harness.schema import ConfigError

BUDGET_UNITS = ("steps", "generated_tokens", "trained_tokens", "flops", "wall_seconds")

#: The trainer's running total that each budget unit is measured by (``steps`` counts optimizer steps).
UNIT_TOTALS = {
    "generated_tokens": "tokens/generated",
    "trained_tokens": "tokens/trained",
    "flops": "flops/total",
    "wall_seconds": "time/step_s",
}

#: Per-step metrics the trainer keeps running totals of; each is also logged as ``<name>_total``
#: (``effective/step`` as ``effective/steps_total``), which is what reports read.
TOTALED = (
    "tokens/generated",
    "tokens/trained",
    "tokens/prompt",
    "tokens/with_gradient",
    "effective/step",
    "groups/generated",
    "groups/dropped",
    "time/step_s",
    "time/generate_s",
    "time/train_s",
    "time/score_s",
    "time/weight_sync_s",
    "flops/total",
    "flops/generate",
    "flops/train",
)


def total_name(key: str) -> str:
    """The logged name of a running total: ``flops/total`` -> ``flops/total_total``, ``effective/step`` -> ``effective/steps_total``."""
    return "effective/steps_total" if key.startswith("effective/") else f"{key}_total"


def parse_budget(text: str) -> tuple[str, float]:
    """``"flops:2e13"`` -> ``("flops", 2e13)``; errors name ``train.budget`` and the valid units."""
    unit, sep, value = str(text).partition(":")
    unit = unit.strip()
    if not sep or unit not in BUDGET_UNITS:
        raise ConfigError(f"train.budget: expected UNIT:VALUE with UNIT one of {', '.join(BUDGET_UNITS)}, got {text!r}")
    try:
        amount = float(value)
    except ValueError:
        raise ConfigError(f"train.budget: the value after '{unit}:' must be a number, got {value!r}") from None
    if not amount > 0:
        raise ConfigError(f"train.budget: the value must be > 0, got {amount}")
    if unit == "steps" and not amount.is_integer():
        raise ConfigError(f"train.budget: a steps budget must be a whole number, got {amount}")
    return unit, amount


@dataclass(frozen=True)
class Budget:
    """A run's budget: it stops once ``value`` of ``unit`` is spent, or at ``step_cap`` steps."""

    unit: str
    value: float
    step_cap: int

    @classmethod
    def from_train(cls, train: Any, steps_per_epoch: int) -> "Budget":
        """From ``train.budget`` / ``train.max_steps`` / ``train.epochs`` (the budget is the step count without a budget)."""
        if train.budget:
            unit, value = parse_budget(train.budget)
        else:
            unit, value = "steps", float(train.max_steps if train.max_steps > 0 else train.epochs * steps_per_epoch)
        cap = train.max_steps if train.max_steps > 0 else (int(value) if unit == "steps" else 10**12)
        return cls(unit, value, cap)

    @property
    def total_steps(self) -> int:
        """Steps of a step budget (the progress bar's length); otherwise the step cap."""
        return int(self.value) if self.unit == "steps" else self.step_cap

    def spent(self, step: int, totals: dict[str, float]) -> float:
        """How much is used, in the budget's unit."""
        return float(step) if self.unit == "steps" else totals.get(UNIT_TOTALS[self.unit], 0.0)

    def fraction(self, step: int, totals: dict[str, float]) -> float:
        return min(self.spent(step, totals) / self.value, 1.0)

    def done(self, step: int, totals: dict[str, float]) -> bool:
        return self.spent(step, totals) >= self.value or step >= self.step_cap


def lr_factor(fraction: float, warmup_ratio: float, scheduler: str) -> float:
    """LR multiplier as a function of the budget fraction spent: linear warm-up, then cosine/linear/constant."""
    w = warmup_ratio
    if w > 0 and fraction < w:
        return fraction / w
    q = (fraction - w) / (1 - w) if w < 1 else 1.0
    q = min(max(q, 0.0), 1.0)
    return {"cosine": 0.5 * (1 + math.cos(math.pi * q)), "linear": 1 - q, "constant": 1.0}[scheduler]


def step_flops(num_params: float, num_generations: int, tokens: dict[str, float]) -> dict[str, float]:
    """FLOPs of one step from its token counts: 2N per processed token forward, 6N per trained token (forward and
    backward), N = all parameters (Kaplan et al. 2020, "C ~ 6ND"; attention's context term is ignored). Each of the
    G rows of a group prefills its prompt."""
    n = num_params
    out = {
        "flops/generate": 2.0 * n * (tokens["tokens/prompt"] * num_generations + tokens["tokens/generated"]),
        "flops/train": 6.0 * n * tokens["tokens/trained"],
        "flops/logprob": 2.0 * n * tokens["tokens/logprob"],
        "flops/ref": 2.0 * n * tokens["tokens/ref"],
    }
    out["flops/total"] = out["flops/generate"] + out["flops/train"] + out["flops/logprob"] + out["flops/ref"]
    return out


def planned_steps(train: Any, num_prompts: int | None) -> float | None:
    """Steps a run will take, when known before it starts: ``max_steps``, a steps budget (the smaller of the two), or
    epochs over ``num_prompts``; None for token/FLOPs/seconds budgets or an unknown number of prompts."""
    unit, value = parse_budget(train.budget) if train.budget else (None, None)
    if train.max_steps > 0 or unit == "steps":
        return float(
            min(v for v in (train.max_steps if train.max_steps > 0 else None, value if unit == "steps" else None) if v)
        )
    if unit is None and num_prompts:
        return float(train.epochs * -(-num_prompts // train.prompts_per_step))
    return None


def visits_per_prompt(train: Any, prompts_owned: int | None) -> float | None:
    """How often each training prompt is sampled over the whole run, when that is known before it starts.

    Each prompt belongs to one process, so with a step count (``max_steps`` or a steps budget, the smaller) it is
    steps x prompts per step / the prompts that process owns; with epochs, every prompt once per epoch. None for
    token/FLOPs/seconds budgets (the step count is only known while training) or an unknown number of prompts."""
    unit = parse_budget(train.budget)[0] if train.budget else None
    if train.max_steps > 0 or unit == "steps":
        return planned_steps(train, prompts_owned) * train.prompts_per_step / prompts_owned if prompts_owned else None
    return float(train.epochs) if unit is None else None


def plan_warnings(cfg: Any) -> list[str]:
    """The algorithm's warnings about a planned run (``--dry-run``; the trainer repeats the check with its prompts)."""
    from algorithms import create_algorithm  # imports torch

    visits = visits_per_prompt(cfg.train, cfg.data.train_size)
    if visits is None:
        return []
    algo = create_algorithm(
        cfg.algorithm, seed=cfg.train.seed, max_completion_length=cfg.generation.max_completion_length
    )
    return algo.plan_warnings(num_generations=cfg.generation.num_generations, visits_per_prompt=visits)


def param_count(model: str) -> float | None:
    """Parameters of a model without loading it (the registry's shapes, the tiny model's, a local config.json)."""
    from harness.memory import model_arch

    arch = model_arch(model)
    return arch.params if arch else None


def estimate(cfg: Any, model: str, *, processes: int = 1, gpu_memory: float | None = None) -> dict[str, Any]:
    """Upper-bound compute per step of a planned run from its config: every prompt and completion at its maximum
    length, every prompt training the most rows its algorithm can add (RePO: k replayed rows), and a step generating
    the most prompts its algorithm can ask for (DAPO: every extra round). ``peak_memory``: per process when the member
    runs ``processes`` processes (``memory``: its parts; ``replay_rows``: the rows the estimate adds for replay);
    ``gpu_memory`` (bytes) sizes a colocated vLLM engine."""
    from algorithms import resolve_algorithm
    from harness.memory import estimate_for_config, model_arch, sharding_of

    g, t = cfg.generation, cfg.train
    rows = t.prompts_per_step * g.num_generations
    cls, algo_cfg = resolve_algorithm(cfg.algorithm)
    extra = t.prompts_per_step * (cls.max_rows_per_prompt(algo_cfg, g.num_generations) - g.num_generations)
    generated_rows = cls.max_prompts_per_step(algo_cfg, t.prompts_per_step) * g.num_generations  # DAPO: extra rounds
    width = cfg.data.max_prompt_length + g.max_completion_length
    gen_tokens, train_tokens = generated_rows * width, (rows + extra) * width
    n = param_count(model)
    flops = (2 * gen_tokens + 6 * train_tokens) * n if n else None
    mem = estimate_for_config(
        cfg, model_arch(model), replay_rows=extra, sharding=sharding_of(cfg, processes), gpu_memory=gpu_memory
    )
    out = {
        "flops_per_step_max": flops,
        "params": n,
        "peak_memory": mem["total"] if mem else None,
        "memory": mem,
        "replay_rows": extra,
    }
    if t.budget:
        unit, value = parse_budget(t.budget)
    else:
        owned = -(-cfg.data.train_size // processes) if cfg.data.train_size else None  # each process owns 1/N
        unit, value = "steps", planned_steps(t, owned)
    if value is None:
        return {**out, "budget": f"{t.epochs} epochs", "min_steps": None}
    per_step = {
        "steps": 1.0,
        "generated_tokens": float(generated_rows * g.max_completion_length),
        "trained_tokens": float(train_tokens),
        "flops": flops,
        "wall_seconds": None,
    }[unit]
    return {**out, "budget": f"{unit}:{value:g}", "min_steps": (value / per_step) if per_step else None}
