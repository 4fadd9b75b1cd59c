"""Tests for benchmarks.scoring: verdicts on tricky answers and the time-limited pool.

Every expected verdict below is the mathematically right one, except rows marked
``LIMITATION`` (math-verify gets them wrong; we assert what it does so any change in
behaviour is noticed) and ``POLICY`` (a deliberate choice of the RePO extraction
settings, e.g. answers must be in LaTeX).
"""

from __future__ import annotations

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
    ("42", "\\boxed{41}.\n\nWait, let me recheck. " + "We recompute the sum. " * 20 + "\nSo the answer is \\boxed{42}", 1.0),
    ("42", "\\boxed{42}.\n\nWait, let me recheck. " + "We recompute the sum. " * 20 + "\nSo the answer is \\boxed{41}", 0.0),
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


def test_interrupted_batch_does_not_leak_into_the_next() -> None:
    import _thread

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
