"""Compute budgets: every unit stops a run as soon as the budget is spent; evals land at budget fractions."""

from __future__ import annotations

import pytest

from harness.config import ConfigError, build_config, parse_budget
from harness.trainer import Trainer


def _totals_key(unit):
    return {
        "generated_tokens": "tokens/generated",
        "trained_tokens": "tokens/trained",
        "flops": "flops/total",
        "wall_seconds": "time/step_s",
    }.get(unit)


REPO = {"name": "repo:recent_k", "min_cache_to_replay": 4, "max_cache_size": 8, "num_replays": 2}


@pytest.mark.parametrize(
    "unit, value, algorithm",
    [
        ("steps", 3, "grpo"),
        ("generated_tokens", 400, "grpo"),
        ("trained_tokens", 600, REPO),
        ("flops", 2.0e9, REPO),
        ("wall_seconds", 1.5, "grpo"),
    ],
)
def test_budget_stops_at_the_first_step_that_spends_it(make_config, unit, value, algorithm):
    cfg = make_config(algorithm, train={"max_steps": -1, "budget": f"{unit}:{value}"}, data={"train_size": 4})
    tr = Trainer(cfg, progress=False)
    spent = []
    tr.callbacks.append(lambda r: spent.append(tr.spent()))
    summary = tr.fit()
    assert spent[-1] >= value  # spent...
    assert all(s < value for s in spent[:-1])  # ...and not a step earlier
    assert summary["budget"]["unit"] == unit and summary["budget"]["spent"] == spent[-1]
    key = _totals_key(unit)
    if key:
        assert summary["totals"][key] == pytest.approx(spent[-1])
    else:
        assert summary["steps"] == value


def test_lr_schedule_follows_budget_fraction(make_config):
    cfg = make_config("grpo", train={"max_steps": -1, "budget": "steps:4", "warmup_ratio": 0.5, "learning_rate": 1e-3})
    tr = Trainer(cfg, progress=False)
    lrs = []
    tr.callbacks.append(lambda r: lrs.append(r.metrics["train/lr"]))
    tr.fit()
    # fractions before each step: 0, .25, .5, .75 -> warm-up 0, 0.5; then cosine from 1 at q=0 to 0.5 at q=0.5
    assert lrs == pytest.approx([0.0, 5e-4, 1e-3, 5e-4])


def test_evaluations_at_budget_fractions(make_config):
    cfg = make_config(
        "grpo",
        train={"max_steps": -1, "budget": "steps:4"},
        eval={"before_training": True, "after_training": True, "at_budget_fractions": [0.5], "max_examples": 4},
    )
    summary = Trainer(cfg, progress=False).fit()
    tags = [(e["tag"], e["step"], e["budget_fraction"]) for e in summary["evals"]]
    assert tags == [("before", 0, 0.0), ("budget0.50", 2, 0.5), ("after", 4, 1.0)]


def test_budget_syntax_errors():
    assert parse_budget("flops:2e13") == ("flops", 2e13)
    for bad, fragment in [
        ("gpu_hours:3", "UNIT one of steps"),
        ("flops:lots", "must be a number"),
        ("steps:0", "> 0"),
        ("steps:2.5", "whole number"),
    ]:
        with pytest.raises(ConfigError, match=fragment):
            build_config("tiny", overrides=[f"train.budget={bad}"])
