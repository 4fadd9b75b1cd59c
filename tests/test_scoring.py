"""Tests for benchmarks.scoring: verdicts on tricky answers and the time-limited pool.

Every expected verdict below is the mathematically right one, except rows marked
``LIMITATION`` (math-verify gets them wrong; we assert what it does so any change in
behaviour is noticed) and ``POLICY`` (a deliberate choice of the RePO extraction
settings, e.g. answers must be in LaTeX).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import threading
import time

import pytest

from benchmarks.scoring import Scorer, ScoreResult, score, score_one

# (gold, completion, expected reward)
TRICKY: list[tuple[str, str, float]] = [
    # fractions, decimals, \dfrac
    ("\\frac{1}{2}", "So the answer is \\boxed{0.5}.", 1.0),
    ("0.5", "\\boxed{\\frac{1}{2}}", 1.0),
    ("\\frac{1}{2}", "\\boxed{\\dfrac{1}{2}}", 1.0),
    ("\\frac12", "\\boxed{1/2}", 1.0),
    ("\\frac{7}{2}", "\\boxed{3\\frac{1}{2}}", 1.0),  # mixed number
    ("\\frac{1}{3}", "\\boxed{0.33}", 0.0),
    # LIMITATION: floats are compared after rounding to 6 decimals, so a 6-digit
    # truncation of 1/3 is accepted although it is not equal to 1/3.
    ("\\frac{1}{3}", "\\boxed{0.333333}", 1.0),
    # LIMITATION: repeating-decimal notation is not understood.
    ("-\\frac{1}{3}", "\\boxed{-0.\\overline{3}}", 0.0),
    # units, degrees, currency, percentages
    ("5", "\\boxed{5\\text{ cm}}", 1.0),
    ("5\\text{ cm}", "\\boxed{5}", 1.0),
    ("90^\\circ", "\\boxed{90}", 1.0),
    ("\\$5", "\\boxed{\\$5.00}", 1.0),
    ("50\\%", "\\boxed{50\\%}", 1.0),
    ("50\\%", "\\boxed{50}", 1.0),  # "50" read as "50 percent"
    ("50\\%", "\\boxed{0.5}", 1.0),
    # intervals and tuples
    ("[1,3)", "\\boxed{[1,3)}", 1.0),
    ("[1,3)", "\\boxed{(1,3]}", 0.0),
    ("(-\\infty, 2]", "\\boxed{(-\\infty,2]}", 1.0),
    ("(1,2)", "\\boxed{(2,1)}", 0.0),
    # radicals, nested boxes, algebra
    ("\\frac{\\sqrt{3}}{2}", "Thus \\boxed{\\frac{\\sqrt{3}}{2}}", 1.0),
    ("\\frac{\\sqrt{3}}{2}", "\\boxed{\\boxed{\\frac{\\sqrt{3}}{2}}}", 1.0),
    ("\\frac{\\sqrt{3}}{2}", "\\boxed{\\frac{1}{2}}", 0.0),
    ("\\sqrt{2}/2", "\\boxed{\\frac{1}{\\sqrt{2}}}", 1.0),
    ("2\\sqrt{2}", "\\boxed{\\sqrt{8}}", 1.0),
    ("x^2+2x+1", "\\boxed{(x+1)^2}", 1.0),
    ("y=2x+3", "\\boxed{y = 3 + 2x}", 1.0),
    ("1+i", "\\boxed{i+1}", 1.0),
    ("\\pi", "\\boxed{3.14}", 0.0),
    ("10^{10}", "\\boxed{10000000000}", 1.0),
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\boxed{\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}}", 1.0),
    # equations: a bare value matches "x = value", chains keep the last part
    ("x=2", "\\boxed{2}", 1.0),
    ("2", "\\boxed{x = 2}", 1.0),
    ("\\frac{1}{2}", "\\boxed{x = 1 - \\frac{1}{2} = \\frac{1}{2}}", 1.0),
    # text and multiple-choice answers
    ("\\text{Monday}", "\\boxed{\\text{Monday}}", 1.0),
    ("\\text{Monday}", "\\boxed{\\text{Tuesday}}", 0.0),
    ("Monday", "\\boxed{\\text{Monday}}", 1.0),
    ("\\text{(C)}", "\\boxed{C}", 1.0),
    ("\\text{(C)}", "\\boxed{\\textbf{(C)}}", 1.0),
    ("\\text{(C)}", "\\boxed{D}", 0.0),
    ("\\text{even}", "\\boxed{\\text{odd}}", 0.0),
    # sets / lists of answers are order-free
    ("\\{1,2\\}", "\\boxed{\\{2,1\\}}", 1.0),
    ("1,2", "\\boxed{2, 1}", 1.0),
    ("\\frac{1}{2}, 3", "\\boxed{3, \\frac{1}{2}}", 1.0),
    # signs, integers, formatting of numbers
    ("-3", "\\boxed{-3}", 1.0),
    ("-3", "\\boxed{3}", 0.0),
    ("85", "\\boxed{85}", 1.0),
    ("85", "\\boxed{86}", 0.0),
    ("\\boxed{85}", "The answer is $\\boxed{85}$", 1.0),
    ("12", "\\boxed{12.0}", 1.0),
    ("1000", "\\boxed{1,000}", 1.0),
    ("1,\\!000", "\\boxed{1000}", 1.0),
    ("\\infty", "\\boxed{\\infty}", 1.0),
    # no usable answer
    ("3", "\\boxed{}", 0.0),
    ("3", "\\boxed{3", 0.0),
    # POLICY: answers must be LaTeX ($...$ after an anchor, or \boxed{}); plain prose
    # or an unanchored $...$ earns nothing, as in the RePO reference.
    ("85", "The answer is 85.", 0.0),
    ("85", "$85$", 0.0),
    ("85", "Final answer: $85$", 1.0),
    # several boxed answers: far apart -> the last one counts ...
    (
        "42",
        "\\boxed{41}.\n\nWait, let me recheck. " + "We recompute the sum. " * 20 + "\nSo the answer is \\boxed{42}",
        1.0,
    ),
    (
        "42",
        "\\boxed{42}.\n\nWait, let me recheck. " + "We recompute the sum. " * 20 + "\nSo the answer is \\boxed{41}",
        0.0,
    ),
    # ... but adjacent ones are merged into a set, so hedging between candidates fails
    # (good: it cannot be used to game the reward). Repeating one answer is fine.
    ("42", "\\boxed{41} or \\boxed{42}", 0.0),
    ("42", "\\boxed{42} \\boxed{42}", 1.0),
]


def _id(row: tuple[str, str, float]) -> str:
    gold, pred, _ = row
    return f"{gold[:20]}|{pred[-25:]}"


@pytest.mark.parametrize("gold,completion,expected", TRICKY, ids=[_id(r) for r in TRICKY])
def test_tricky_verdicts(gold: str, completion: str, expected: float) -> None:
    assert score(completion, gold) == expected


def test_table_is_large_and_balanced() -> None:
    assert len(TRICKY) >= 25
    assert sum(r[2] == 1.0 for r in TRICKY) >= 10 and sum(r[2] == 0.0 for r in TRICKY) >= 10


def test_reasons_and_extraction() -> None:
    assert score_one("\\boxed{\\dfrac{1}{2}}", "0.5") == ScoreResult(1.0, "\\frac{1}{2}", None)
    assert score_one("\\boxed{86}", "85") == ScoreResult(0.0, "86", None)
    assert score_one("no answer here", "85").reason == "no_answer"
    assert score_one("\\boxed{3}", "").reason == "gold_unparseable"
    assert score_one("\\boxed{3}", "   ").reward == 0.0


def test_truncation_keeps_the_end() -> None:
    tail = "\\boxed{7}"
    assert score_one("a" * 100 + tail, "7", max_chars=50).reward == 1.0
    res = score_one(tail + " " + "a" * 100, "7", max_chars=50)
    assert res == ScoreResult(0.0, None, "no_answer")


POWER_TOWER = "Therefore \\boxed{9^{9^{9^{9^{9}}}}}"
NESTED = "\\boxed{" + "{" * 3000 + "1" + "}" * 3000 + "}"


@pytest.mark.slow  # seconds of waiting or subprocesses: out of the fast subset
def test_in_process_score_has_a_time_limit() -> None:
    t0 = time.monotonic()
    res = score_one(POWER_TOWER, "42", timeout_s=1.0)
    assert res == ScoreResult(0.0, None, "timeout")
    assert score(POWER_TOWER, "42", timeout_s=1.0) == 0.0
    assert time.monotonic() - t0 < 5.0
    assert score("\\boxed{42}", "42") == 1.0  # alarm state restored


TIMEOUT_S = 1.5


@pytest.fixture(scope="module")
def scorer():
    with Scorer(num_workers=2, timeout_s=TIMEOUT_S) as s:
        s.score_batch(["\\boxed{1}"], ["1"])  # start workers outside the timed tests
        yield s


def test_batch_matches_per_pair_score(scorer: Scorer) -> None:
    golds = [g for g, _, _ in TRICKY]
    comps = [c for _, c, _ in TRICKY]
    batch = scorer.score_batch(comps, golds)
    assert [r.reward for r in batch] == [score(c, g) for c, g in zip(comps, golds)]
    assert batch == [score_one(c, g, timeout_s=5.0) for c, g in zip(comps, golds)]


@pytest.mark.slow  # seconds of waiting or subprocesses: out of the fast subset
def test_pathological_outputs_time_out_without_stalling(scorer: Scorer) -> None:
    long_text = "Let us think step by step. " * 4000 + "The answer is \\boxed{17}."  # ~100 kB
    assert len(long_text) > 100_000
    comps = ["\\boxed{17}", POWER_TOWER, "\\boxed{\\frac{3}{4}}", long_text, NESTED, "\\boxed{16}"]
    golds = ["17", "17", "0.75", "17", "17", "17"]
    t0 = time.monotonic()
    res = scorer.score_batch(comps, golds)
    elapsed = time.monotonic() - t0
    assert elapsed < TIMEOUT_S * 3 + 5.0, f"batch took {elapsed:.1f}s"
    assert res[1] == ScoreResult(0.0, None, "timeout")
    assert [r.reward for r in res] == [1.0, 0.0, 1.0, 1.0, 0.0, 0.0]
    assert res[4].reason is not None  # nested braces: timeout or no answer, never a verdict
    # the pool keeps working after a timeout
    again = scorer.score_batch(["\\boxed{17}", "\\boxed{18}"], ["17", "17"])
    assert [r.reward for r in again] == [1.0, 0.0]


@pytest.mark.slow  # seconds of waiting or subprocesses: out of the fast subset
def test_hung_worker_is_killed_and_replaced() -> None:
    # Without the in-worker alarm the only way out is killing the worker process.
    with Scorer(num_workers=1, timeout_s=1.0, soft_timeout=False, kill_grace_s=0.2) as s:
        t0 = time.monotonic()
        res = s.score_batch([POWER_TOWER, "\\boxed{5}"], ["42", "5"])
        assert time.monotonic() - t0 < 1.0 * 3 + 10.0  # includes the first worker start
        assert res == [ScoreResult(0.0, None, "timeout"), ScoreResult(1.0, "5", None)]
        assert s.stats["killed"] == 1
        assert s.score_batch(["\\boxed{6}"], ["6"])[0].reward == 1.0


def test_cache_and_duplicates(scorer: Scorer) -> None:
    comps = ["\\boxed{123456}", "\\boxed{123456}", "\\boxed{654321}"]
    golds = ["123456", "123456", "123456"]
    scored = scorer.stats["scored"]
    assert [r.reward for r in scorer.score_batch(comps, golds)] == [1.0, 1.0, 0.0]
    assert scorer.stats["scored"] - scored == 2  # the duplicate was scored once
    hits = scorer.stats["cache_hits"]
    assert [r.reward for r in scorer.score_batch(comps, golds)] == [1.0, 1.0, 0.0]
    assert scorer.stats["cache_hits"] - hits == 3


def test_empty_batch_and_bad_input(scorer: Scorer) -> None:
    assert scorer.score_batch([], []) == []
    with pytest.raises(ValueError, match="completions"):
        scorer.score_batch(["\\boxed{1}"], [])
    with pytest.raises(ValueError, match="num_workers"):
        Scorer(num_workers=0)
    with pytest.raises(ValueError, match="fork"):
        Scorer(start_method="fork")


def test_closed_scorer_refuses_work() -> None:
    s = Scorer(num_workers=1)
    s.close()
    s.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        s.score_batch(["\\boxed{1}"], ["1"])


def test_score_off_main_thread_uses_worker_pool() -> None:
    out: list[float] = []
    t = threading.Thread(target=lambda: out.extend([score("\\boxed{2}", "2"), score("\\boxed{3}", "2")]))
    t.start()
    t.join(timeout=60)
    assert out == [1.0, 0.0]


@pytest.mark.slow  # seconds of waiting or subprocesses: out of the fast subset
def test_interrupted_batch_does_not_leak_into_the_next() -> None:
    import _thread
    import signal

    # interrupt_main does nothing while SIGINT is ignored or default (Python >= 3.10); a library an earlier test loaded
    # in this process may have set it so (this test failed once in a full run): install Python's own handler here
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _interrupt_a_batch_then_score_another(_thread)
    finally:
        signal.signal(signal.SIGINT, previous)


def _interrupt_a_batch_then_score_another(_thread) -> None:
    with Scorer(num_workers=2, timeout_s=2.0) as s:
        s.score_batch(["\\boxed{1}"], ["1"])
        timer = threading.Timer(0.3, _thread.interrupt_main)
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            s.score_batch([POWER_TOWER] * 2 + ["\\boxed{1}"] * 10, ["1"] * 12)
            time.sleep(5)  # only reached if the batch beat the interrupt
        timer.join()
        res = s.score_batch([f"so \\boxed{{{i}}}" for i in range(6)], [str(i) for i in range(6)])
        assert [r.reward for r in res] == [1.0] * 6


# --------------------------------------------------------------------------- issue 11: answers the scorer misread

# (gold, completion, expected): each 1.0 row scored 0 before the fix, each 0.0 row guards it.
FORMATTING: list[tuple[str, str, float]] = [
    # LaTeX shorthand without braces (math-verify's malformed-operator repair is on for predictions now)
    ("\\frac{1}{2}", "\\boxed{\\frac12}", 1.0),
    ("\\frac{5}{6}", "so $\\boxed{\\frac56}$", 1.0),
    ("3\\sqrt{2}", "\\boxed{3\\sqrt2}", 1.0),
    ("\\frac{5}{6}", "\\boxed{\\frac65}", 0.0),
    ("3\\sqrt{2}", "\\boxed{3\\sqrt3}", 0.0),
    # thin-space thousands, a trailing period inside the answer
    ("70000", "\\boxed{70\\,000}", 1.0),
    ("1234567", "\\boxed{1\\,234\\,567}", 1.0),
    ("7000", "\\boxed{70\\,000}", 0.0),
    ("42", "\\boxed{42.}", 1.0),
    ("460", "The final answer is $460.$", 1.0),
    ("\\frac{1}{2}", "\\boxed{\\frac{1}{2}.}", 1.0),
    ("42", "\\boxed{43.}", 0.0),
    ("4.5", "\\boxed{4.5}", 1.0),
    # degree signs
    ("90", "\\boxed{90°}", 1.0),
    ("90^\\circ", "\\boxed{90°}", 1.0),
    ("90^\\circ", "\\boxed{90^\\circ}", 1.0),
    ("90", "\\boxed{90\\degree}", 1.0),
    ("90", "\\boxed{80°}", 0.0),
    # a percent sign on a plain gold is the unit of the gold's number
    ("12.5", "\\boxed{12.5\\%}", 1.0),
    ("12.5", "\\boxed{12.5%}", 1.0),
    ("0.125", "\\boxed{12.5\\%}", 1.0),  # math-verify: 12.5% = 0.125
    ("12.5", "\\boxed{13\\%}", 0.0),
    ("50\\%", "\\boxed{50}", 1.0),
    # \fbox is a box
    ("116", "\\fbox{116}", 1.0),
    ("116", "\\fbox{117}", 0.0),
    # the factorisation rule: a factored gold is not matched by the expanded polynomial (the question copied back)
    ("(x^2+x+1)(x^2-x+1)", "\\boxed{x^4+x^2+1}", 0.0),
    ("(x^2+x+1)(x^2-x+1)", "\\boxed{(x^2-x+1)(x^2+x+1)}", 1.0),
    ("(x^2+x+1)(x^2-x+1)", "\\boxed{(x^2-x+1)(x^2+x+2)}", 0.0),
    ("(x+1)^2", "\\boxed{x^2+2x+1}", 0.0),
    ("(x+1)^2", "\\boxed{(x+1)(1+x)}", 1.0),
    ("2(x-1)(x+1)", "\\boxed{(2x-2)(x+1)}", 1.0),  # constants moved between factors: still a factorisation
    ("x^2+2x+1", "\\boxed{(x+1)^2}", 1.0),  # an expanded gold takes any equal form
    ("\\frac{n(n+1)}{2}", "\\boxed{\\frac{n^2+n}{2}}", 1.0),  # one sum factor: a closed form, not a factorisation
    ("n(n+1)(2n+1)/6", "\\boxed{\\frac{n(2n^2+3n+1)}{6}}", 1.0),  # partly factored: a product
    ("n(n+1)(2n+1)/6", "\\boxed{\\frac{2n^3+3n^2+n}{6}}", 0.0),  # a sum over a constant: set aside, still a sum
    ("2(x-1)(x+1)", "\\boxed{2(x^2-1)}", 0.0),
    ("x = (t-1)(t+1)", "\\boxed{x = t^2-1}", 0.0),
]


@pytest.mark.parametrize("gold,completion,expected", FORMATTING, ids=[_id(r) for r in FORMATTING])
def test_formatting_verdicts(gold: str, completion: str, expected: float) -> None:
    assert score(completion, gold) == expected


def test_tricky_tables_agree_with_the_worker_pool(scorer: Scorer) -> None:
    golds = [g for g, _, _ in FORMATTING]
    comps = [c for _, c, _ in FORMATTING]
    assert [r.reward for r in scorer.score_batch(comps, golds)] == [e for _, _, e in FORMATTING]


# --------------------------------------------------------------------------- format reward: no empty boxes


@pytest.mark.parametrize(
    "text,expected",
    [
        ("so \\boxed{5}", True),
        ("\\boxed{\\frac{1}{2}}.", True),
        ("\\boxed{ x = {3} }", True),
        ("\\fbox{7}", True),
        ("\\boxed {5}", True),
        ("\\boxed{}", False),
        ("The answer is \\boxed{ }.", False),
        ("\\boxed{$ $}", False),
        ("\\boxed{3", False),  # never closed
        ("no box at all: 5", False),
        ("\\boxed{} then \\boxed{8}", True),
    ],
)
def test_has_boxed_answer(text: str, expected: bool) -> None:
    from benchmarks.scoring import has_boxed_answer

    assert has_boxed_answer(text) is expected


# --------------------------------------------------------------------------- answer_fallback (issue 10)


@pytest.mark.parametrize(
    "text,mode,expected",
    [
        ("The answer is: 10", "answer_is", "10"),
        ("So the answer is 85. I hope it is correct.", "answer_is", "85"),
        ("Final Answer: $\\frac{3}{4}$", "answer_is", "\\frac{3}{4}"),
        ("**Answer:** 3.5 cm.", "answer_is", "3.5 cm"),
        ("the answer is 2, then later the final answer is 7", "answer_is", "7"),
        ("I computed 3 + 4 = 7", "answer_is", None),
        ("The answer is: 10", "none", None),
        ("So 3 + 4 = 7 apples.", "last_number", "7"),
        ("We get -12 in total", "last_number", "-12"),
        ("about 1,000 or 2.5", "last_number", "2.5"),
        ("the ratio is 3/4", "last_number", "3/4"),
        ("no digits here", "last_number", None),
        ("x2 and v3", "last_number", None),
    ],
)
def test_fallback_answer_rule(text: str, mode: str, expected: str | None) -> None:
    from benchmarks.scoring import fallback_answer

    assert fallback_answer(text, mode) == expected


def test_fallback_is_off_by_default_and_only_used_without_an_answer() -> None:
    assert score("The answer is 85.", "85") == 0.0  # POLICY: the paper's scoring
    assert score("The answer is 85.", "85", answer_fallback="answer_is") == 1.0
    assert score("So we get 3 + 4 = 85", "85", answer_fallback="last_number") == 1.0
    res = score_one("The answer is: 10", "10", answer_fallback="answer_is")
    assert res == ScoreResult(1.0, "10", None, fallback=True)
    # a boxed answer wins: the fallback never overrides a wrong boxed one
    assert score("\\boxed{84}, and 85 is the last number: 85", "85", answer_fallback="last_number") == 0.0
    # an empty box is no answer, so the fallback reads on
    assert score_one("total 85 \\boxed{}", "85", answer_fallback="last_number") == ScoreResult(
        1.0, "85", None, fallback=True
    )
    assert score_one("nothing", "85", answer_fallback="last_number").reason == "no_answer"
    with pytest.raises(ValueError, match="answer_fallback"):
        score_one("\\boxed{1}", "1", answer_fallback="guess")


def test_scorer_fallback_setting_and_cache_are_per_mode(scorer: Scorer) -> None:
    comps, golds = ["The answer is 31.", "we get 31"], ["31", "31"]
    assert [r.reward for r in scorer.score_batch(comps, golds)] == [0.0, 0.0]  # the fixture's default: none
    assert [r.reward for r in scorer.score_batch(comps, golds, answer_fallback="answer_is")] == [1.0, 0.0]
    assert [r.reward for r in scorer.score_batch(comps, golds, answer_fallback="last_number")] == [1.0, 1.0]
    bound = scorer.bound("answer_is")
    assert bound.answer_fallback == "answer_is" and scorer.answer_fallback == "none"
    assert [r.reward for r in bound.score_batch(comps, golds)] == [1.0, 0.0]
    assert scorer.bound("none") is scorer
    with pytest.raises(ValueError, match="answer_fallback"):
        scorer.score_batch(comps, golds, answer_fallback="guess")
    with pytest.raises(ValueError, match="answer_fallback"):
        Scorer(num_workers=1, answer_fallback="guess")


def test_config_field_choices_match_the_scorer() -> None:
    from benchmarks.scoring import ANSWER_FALLBACKS
    from harness.config import ConfigError, HarnessConfig, build_config, validate

    field = next(f for f in dataclasses.fields(HarnessConfig().data) if f.name == "answer_fallback")
    assert tuple(field.metadata["choices"]) == ANSWER_FALLBACKS and field.default == "none"
    for preset in ("paper-qwen2.5-math-1.5b", "paper-qwen2.5-math-7b", "paper-qwen3-1.7b"):
        assert build_config(preset).data.answer_fallback == "none"
    with pytest.raises(ConfigError, match="data.answer_fallback"):
        validate(build_config("tiny", overrides=["data.answer_fallback=guess"]))


def test_default_scorer_factory_binds_the_setting() -> None:
    from benchmarks.scoring import get_default_scorer

    shared = get_default_scorer()
    assert get_default_scorer("none") is shared and get_default_scorer(None) is shared
    view = get_default_scorer("last_number")
    assert view.answer_fallback == "last_number" and view.stats is shared.stats  # one pool
    with pytest.raises(ValueError, match="answer_fallback"):
        get_default_scorer("guess")


def test_fallback_reaches_the_trainer_rewards(make_config, monkeypatch) -> None:
    """data.answer_fallback reaches the trainer's scorer; the format reward ignores an empty box."""
    from harness.trainer import Trainer

    cfg = make_config(
        "grpo", data={"train_size": 4, "answer_fallback": "last_number"}, train={"format_reward_weight": 0.5}
    )
    tr = Trainer(cfg, progress=False)
    assert tr.scorer.answer_fallback == "last_number"
    tr.train_rows = [{"id": "p0", "problem": "What is 3 + 4?", "answer": "7"}]
    texts = iter(["3 + 4 = 7", "\\boxed{}", "so \\boxed{7}", "\\boxed{ } nothing"] * 4)
    monkeypatch.setattr(tr.tokenizer, "decode", lambda ids, **kw: next(texts))
    groups, metrics = tr.rollout([0])
    assert groups[0].rewards.tolist() == [1.0, 0.0, 1.5, 0.0]
    assert metrics["reward/format"] == 0.25 and metrics["reward/accuracy"] == 0.5


def test_fallback_reaches_harness_eval(make_config, tmp_path, monkeypatch) -> None:
    """run_eval (``harness eval``) scores with the config's data.answer_fallback."""
    import harness.evaluation as ev

    class Stop(Exception):
        pass

    seen = []

    def fake_evaluate(engine, tok, names, settings, scorer, *a, **kw):
        seen.append(scorer)
        raise Stop

    monkeypatch.setattr(ev, "evaluate", fake_evaluate)
    cfg = make_config("grpo", data={"answer_fallback": "answer_is"}, generation={"engine": "hf"})
    with pytest.raises(Stop):
        ev.run_eval(
            [cfg.model.name], "arith", lambda m: cfg, results_dir=tmp_path / "res", progress=False, tracking=False
        )
    (s,) = seen
    assert s.answer_fallback == "answer_is"
    assert [r.reward for r in s.score_batch(["The answer is 7.", "\\boxed{7}"], ["7", "7"])] == [1.0, 1.0]


# --------------------------------------------------------------------------- CHAMP prose golds

PROSE_GOLDS = [
    ("2 inequalities", "2"),
    ("98 values", "98"),
    ("n times", "n"),
    ("C(10, 5), or equivalently 252", "252"),
    ("The limit exists and is equal to 2/3", "2/3"),
    ("5/14, or approximately 35.7%", "5/14"),
    ("100 (i.e., all values)", "100"),
    ("0 (none of the values)", "0"),
    ("At most 0 integer-valued zeros (i.e., no integer zeros)", "0"),
    ("Exactly one sequence", "1"),
    ("At least 1 number", "1"),
    ("-3 is the only possible value", "-3"),
    ("The only possible value for the limit is sqrt(a)", "\\sqrt{a}"),
    ("The function is periodic, with a period of 8", "8"),
    ("((-1)^(n+1)+n+1)/(n+2) (i.e., 1 if for odd n, and n/(n+2) for even n)", "((-1)^{n+1}+n+1)/(n+2)"),
    ("C(n+1, 2m+1)", "\\binom{n+1}{2m+1}"),
    ("2^floor(n/2)*floor(n/2)!", "2^{\\lfloor n/2 \\rfloor}*\\lfloor n/2 \\rfloor!"),
    ("sum_(k=1)^n 1/k", "\\sum_{k=1}^{n} 1/k"),
    ("x=±1, ±2, ±1/2", "x=\\pm 1, \\pm 2, \\pm 1/2"),
    ("No integer solutions", "\\text{No integer solutions}"),
    # left alone
    ("(x=8, y=2), (x=2, y=8)", "(x=8, y=2), (x=2, y=8)"),
    ("376 and 625", "376 and 625"),
    ("No", "No"),
    ("\\frac{3}{4}", "\\frac{3}{4}"),
    ("2^997", "2^997"),
]


@pytest.mark.parametrize("raw,expected", PROSE_GOLDS, ids=[r for r, _ in PROSE_GOLDS])
def test_normalize_gold(raw: str, expected: str) -> None:
    from benchmarks.golds import normalize_gold

    assert normalize_gold(raw) == expected


@pytest.mark.parametrize(
    "raw,answer",
    [
        ("2 inequalities", "\\boxed{2}"),
        ("98 values", "\\boxed{98}"),
        ("C(10, 5), or equivalently 252", "\\boxed{252}"),
        ("The limit exists and is equal to 2/3", "\\boxed{\\frac{2}{3}}"),
        ("5/14, or approximately 35.7%", "\\boxed{\\frac{5}{14}}"),
        ("The only possible value for the limit is sqrt(a)", "\\boxed{\\sqrt{a}}"),
        ("2^floor(n/2)*floor(n/2)!", "\\boxed{2^{\\lfloor n/2 \\rfloor} \\cdot \\lfloor n/2 \\rfloor!}"),
    ],
)
def test_right_answers_to_prose_golds_score(raw: str, answer: str) -> None:
    from benchmarks.golds import normalize_gold

    assert score(answer, raw) == 0.0  # against CHAMP's text: the failure of issue 11
    assert score(answer, normalize_gold(raw)) == 1.0


def test_champ_golds_are_normalised_and_score_against_themselves() -> None:
    if importlib.util.find_spec("champ_dataset") is None:
        pytest.skip("champ-dataset is not installed (pip install champ-dataset)")
    from benchmarks.datasets import load_benchmark

    rows = load_benchmark("champ")
    assert len(rows) == 270 and all("answer_original" in r for r in rows)
    changed = [r for r in rows if r["answer"] != r["answer_original"]]
    assert 90 <= len(changed) <= 130  # 110 of 270
    assert any(r["answer_original"] == "2 inequalities" and r["answer"] == "2" for r in rows)
    assert all(r["answer"] == r["answer_original"] for r in rows if r["answer_original"] in ("No", "Yes", "239"))
    # in-process, no time limit: ~5 s in all, the pool's short test timeout could trip on a loaded machine
    res = [score_one(f"\\boxed{{{r['answer']}}}", r["answer"]) for r in rows]
    bad = [(r["id"], r["answer"], x) for r, x in zip(rows, res) if x.reward != 1.0]
    assert not bad, bad
