"""Tests for the synthetic arithmetic benchmark (benchmarks.arith)."""

from __future__ import annotations

import re

import pytest

from benchmarks.arith import (
    DEFAULT_SIZES,
    evaluate_expression,
    format_completion,
    make_arith,
    pool_size,
    worked_solution,
)

_PROBLEM_RE = re.compile(r"^(\d+)([+\-*])(\d+)$")


def _python_value(problem: str) -> int:
    m = _PROBLEM_RE.match(problem)
    assert m, problem
    a, op, b = int(m.group(1)), m.group(2), int(m.group(3))
    return {"+": a + b, "-": a - b, "*": a * b}[op]


def test_rows_have_the_documented_shape_and_default_sizes():
    for split in ("train", "test"):
        rows = make_arith(split)
        assert len(rows) == DEFAULT_SIZES[split]
        assert [r["id"] for r in rows[:3]] == [f"arith-{split}-{i}" for i in range(3)]
        for r in rows:
            assert set(r) == {"id", "problem", "answer", "benchmark"}
            assert r["benchmark"] == "arith"
            assert _PROBLEM_RE.match(r["problem"])
            assert isinstance(r["answer"], str) and r["answer"].isdigit()
    assert DEFAULT_SIZES == {"train": 4096, "test": 256}


def test_deterministic_for_a_seed_and_n_truncates():
    assert make_arith("train", 300, seed=3) == make_arith("train", 300, seed=3)
    assert make_arith("train", 300, seed=3) != make_arith("train", 300, seed=4)
    full = make_arith("test", seed=1)
    assert make_arith("test", 10, seed=1) == full[:10]
    assert make_arith("test", 0) == []


def test_problems_are_distinct_within_a_split():
    rows = make_arith("train", pool_size("train"))
    assert len({r["problem"] for r in rows}) == len(rows)


def test_splits_are_disjoint_for_any_seed():
    train_all = {r["problem"] for r in make_arith("train", pool_size("train"))}
    test_all = {r["problem"] for r in make_arith("test", pool_size("test"))}
    assert train_all.isdisjoint(test_all)
    assert len(train_all) + len(test_all) == 8100 + 4095 + 720  # the whole problem space
    for seed in (0, 1, 42):
        assert not {r["problem"] for r in make_arith("test", seed=seed)} & train_all


def test_gold_answers_match_python_arithmetic():
    for split in ("train", "test"):
        for r in make_arith(split, pool_size(split)):
            value = _python_value(r["problem"])
            assert value >= 0
            assert r["answer"] == str(value)
            assert evaluate_expression(r["problem"]) == value


def test_mix_of_operations_in_the_test_split():
    ops = {_PROBLEM_RE.match(r["problem"]).group(2) for r in make_arith("test")}
    assert ops == {"+", "-", "*"}


def test_worked_solution_is_correct_column_arithmetic():
    examples = {
        "37+48": "7+8=15,3+4+1=8 \\boxed{85}",
        "93-47": "13-7=6,9-1-4=4 \\boxed{46}",
        "7*48": "7*8=56,7*4+5=33 \\boxed{336}",
        "52-47": "12-7=5,5-1-4=0 \\boxed{5}",
        "99+99": "9+9=18,9+9+1=19 \\boxed{198}",
    }
    for problem, expected in examples.items():
        assert worked_solution(problem) == expected
    for r in make_arith("train", 2000) + make_arith("test"):
        sol = worked_solution(r["problem"])
        chain, boxed = sol.split(" ")
        assert boxed == format_completion(r["answer"])
        for step in chain.split(","):
            lhs, rhs = step.split("=")
            assert eval(lhs) == int(rhs), (r["problem"], step)  # noqa: S307 - digits and +-* only
        assert len(sol) <= 27


def test_worked_solutions_score_as_correct():
    from benchmarks.scoring import score

    for r in make_arith("test", 20):
        assert score(worked_solution(r["problem"]), r["answer"]) == 1.0
        assert score(format_completion(r["answer"]), r["answer"]) == 1.0
        assert score(format_completion(str(int(r["answer"]) + 1)), r["answer"]) == 0.0


def test_bad_split_and_bad_n_raise_clear_errors():
    with pytest.raises(ValueError, match="unknown split 'validation'.*train, test"):
        make_arith("validation")
    with pytest.raises(ValueError, match="only .* problems"):
        make_arith("test", pool_size("test") + 1)
    with pytest.raises(ValueError, match="n must be >= 0"):
        make_arith("train", -1)
    with pytest.raises(ValueError, match="not an arith problem"):
        worked_solution("What is 1+1?")
