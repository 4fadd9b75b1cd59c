"""DeepMind mathematics_dataset as an offline task (``dm_*``), champ as a training set, offline hub errors.

The generator is exercised for real (``mathematics-dataset`` from PyPI with the NumPy 2 / SymPy shims of
``benchmarks/mathematics.py``); answers go through the project's scorer (``get_default_scorer``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import random
import re
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from benchmarks import datasets as D
from benchmarks import mathematics as M
from benchmarks.datasets import DatasetError, available_benchmarks, available_train_sets, load_benchmark, load_train_set

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("mathematics_dataset") is None,
    reason="mathematics-dataset is not installed (pip install mathematics-dataset)",
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _hermetic(hermetic_data):
    """No real data dir, no hub, no HF cache (conftest.hermetic_data)."""


def _fingerprint(rows: list[dict]) -> str:
    return hashlib.sha256(json.dumps([[r["id"], r["problem"], r["answer"]] for r in rows]).encode()).hexdigest()


def _wrong(answer: str) -> str:
    """A different answer of the same kind (number + 1, Yes <-> No, another letter, one factor changed)."""
    if answer in ("Yes", "No"):
        return "No" if answer == "Yes" else "Yes"
    try:
        return str(Fraction(answer) + 1)
    except (ValueError, ZeroDivisionError):
        pass
    if re.fullmatch(r"[a-z]", answer):
        return "b" if answer != "b" else "a"
    if ", " in answer:
        *head, last = answer.split(", ")
        return ", ".join(head + [_wrong(last)])
    raise AssertionError(f"an answer of an unexpected kind: {answer!r}")


# ------------------------------------------------------------------------------------------------
# determinism and splits


def test_same_seed_same_problems_and_global_rngs_untouched():
    random.seed(123)
    np.random.seed(123)
    before = (random.getstate(), np.random.get_state()[1].copy())
    a = M.make_dm("dm_easy", "train", 48, seed=3)
    after = (random.getstate(), np.random.get_state()[1].copy())
    assert before[0] == after[0] and (before[1] == after[1]).all(), (
        "the generator must not move the caller's random streams"
    )
    M._generate_module.cache_clear()  # really generate again
    assert M.make_dm("dm_easy", "train", 48, seed=3) == a
    assert M.make_dm("dm_easy", "train", 48, seed=4) != a
    assert len(a) == 48 and len({r["problem"] for r in a}) == 48
    assert {r["module"] for r in a} == set(M.MIXES["dm_easy"])  # equal shares of every module of the mix
    assert all(r["benchmark"] == "dm_easy" and r["level"] == "easy" and r["id"].startswith("dm_easy-train-") for r in a)


def test_same_problems_in_a_fresh_process_whatever_the_hash_seed():
    names = [
        ("dm_easy", "test", 40),
        ("dm_algebra__linear_1d_composed", "train", 12),
        ("dm_comparison__pair_composed-medium", "test", 12),
    ]
    here = {n: _fingerprint(M.make_dm(n, split, k, seed=None if split == "test" else 7)) for n, split, k in names}
    code = (
        "import hashlib, json; from benchmarks import mathematics as M\n"
        f"names = {names!r}\n"
        "print(json.dumps({n: hashlib.sha256(json.dumps([[r['id'], r['problem'], r['answer']] for r in "
        "M.make_dm(n, s, k, seed=None if s == 'test' else 7)]).encode()).hexdigest() for n, s, k in names}))"
    )
    env = dict(os.environ, PYTHONHASHSEED="4242", PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == here


def test_train_and_test_splits_are_disjoint():
    train = load_train_set("dm_easy", 1024, 42)
    test = load_benchmark("dm_easy")
    assert len(train) == 1024 and len(test) == M.DEFAULT_SIZES["test"] == 200
    train_p, test_p = {r["problem"] for r in train}, {r["problem"] for r in test}
    assert len(train_p) == len(train) and len(test_p) == len(test)  # unique within a split
    assert not train_p & test_p
    assert all(M.split_of(p) == "train" for p in train_p) and all(M.split_of(p) == "test" for p in test_p)
    # any other training seed or module stays off the test split of every set
    other = load_train_set("dm_arithmetic__add_or_sub", 200, 7)
    assert not {r["problem"] for r in other} & {r["problem"] for r in load_benchmark("dm_arithmetic__add_or_sub")}
    # the benchmark does not depend on the training seed
    assert load_benchmark("dm_easy") == test


# ------------------------------------------------------------------------------------------------
# answers through the project's scorer


def test_every_offered_module_scores_1_when_boxed_and_0_when_wrong():
    from benchmarks.scoring import get_default_scorer

    texts, golds, expect, where = [], [], [], []
    for module in M.MODULES:
        n = 6 if module.startswith("probability") else 16  # probability is slow to generate (~0.2 s a problem)
        for r in M.make_dm(f"dm_{module}", "train", n, seed=11):  # train: 3 in 4 draws kept (test: 1 in 4)
            gold = r["answer"]
            assert gold == M.normalize_answer(r["answer_original"])
            texts += [f"Let me compute. The answer is \\boxed{{{gold}}}.", f"The answer is \\boxed{{{_wrong(gold)}}}."]
            golds += [gold, gold]
            expect += [1.0, 0.0]
            where += [(module, r["problem"], gold, "right"), (module, r["problem"], gold, "wrong")]
    results = get_default_scorer().score_batch(texts, golds)
    bad = [(w, res.reward, res.reason) for w, res, e in zip(where, results, expect) if res.reward != e]
    assert not bad, bad[:10]


def test_answer_normalisation_and_filters():
    assert (
        M.normalize_answer("True") == "Yes"
        and M.normalize_answer("False") == "No"
        and M.normalize_answer("-7/2") == "-7/2"
    )
    rows = M.make_dm("dm_numbers__is_prime", "test", 20)
    assert {r["answer"] for r in rows} <= {"Yes", "No"} and {r["answer_original"] for r in rows} <= {"True", "False"}
    # no answer with more decimals than the verifier compares (it rounds to 6 places)
    rows = M.make_dm("dm_numbers__round_number", "train", 100, seed=1)
    assert not [r["answer"] for r in rows if re.search(r"\.\d{7,}", r["answer"])]


# ------------------------------------------------------------------------------------------------
# names, levels, loading


def test_names_levels_and_errors():
    assert "dm_easy" in available_benchmarks() and "dm_easy" in available_train_sets()
    assert {f"dm_{m}" for m in M.MODULES} <= set(available_benchmarks()) & set(available_train_sets())
    assert M.parse_name("dm_numbers__gcd") == (("numbers__gcd",), "easy")
    assert M.parse_name("dm_numbers__gcd-hard") == (("numbers__gcd",), "hard")
    easy = load_benchmark("dm_arithmetic__add_or_sub", 20)
    hard = load_benchmark("dm_arithmetic__add_or_sub-hard", 20)
    assert len(hard) == 20 and hard[0]["benchmark"] == "dm_arithmetic__add_or_sub-hard" and hard[0]["level"] == "hard"
    assert max(len(r["problem"]) for r in hard) > max(len(r["problem"]) for r in easy)  # bigger numbers
    assert len(load_train_set("dm_easy-medium", 16, 1)) == 16
    with pytest.raises(DatasetError, match="unknown level 'extreme'"):
        load_benchmark("dm_numbers__gcd-extreme")
    with pytest.raises(
        DatasetError, match="calculus__differentiate' is not offered.*verifier reads predictions as LaTeX"
    ):
        load_train_set("dm_calculus__differentiate", 10)
    with pytest.raises(DatasetError, match="not offered"):
        load_benchmark("dm_nope")
    assert set(M.MODULES).isdisjoint(M.EXCLUDED) and all(set(mods) <= set(M.MODULES) for mods in M.MIXES.values())


def test_dm_train_set_in_a_training_config(tmp_path):
    """What the trainer calls: load_train_set(cfg.data.train, cfg.data.train_size, cfg.data.shuffle_seed)."""
    rows = load_train_set("dm_arithmetic__add_or_sub", None, 42)
    assert len(rows) == M.DEFAULT_SIZES["train"] == 1024
    assert load_train_set("dm_arithmetic__add_or_sub", 100, 42) == rows[:100]  # a smaller size is a prefix
    assert all(
        set(r) >= {"id", "problem", "answer", "benchmark"}
        and all(isinstance(r[k], str) for k in ("id", "problem", "answer"))
        for r in rows
    )


# ------------------------------------------------------------------------------------------------
# champ as a training set


def test_champ_is_a_training_set():
    if importlib.util.find_spec("champ_dataset") is None:
        pytest.skip("champ-dataset is not installed (pip install champ-dataset)")
    bench = {r["id"]: r for r in load_benchmark("champ")}
    rows = load_train_set("champ", 50, 1)
    assert len(rows) == 50 and all(bench[r["id"]] == r for r in rows)  # the benchmark's rows, golds unchanged
    assert load_train_set("champ", 50, 1) == rows and load_train_set("champ", 50, 2) != rows
    assert sorted(r["id"] for r in load_train_set("champ", 1024, 1)) == sorted(bench)  # 1,024 asked: all 270


# ------------------------------------------------------------------------------------------------
# hub data sets offline: fail at once, naming the command that prepares them


def test_deepmath_offline_fails_fast_naming_the_prepare_command(tmp_path):
    t = time.perf_counter()
    with pytest.raises(DatasetError) as ei:
        load_train_set("deepmath", 1024, 42)
    assert time.perf_counter() - t < 5.0
    msg = str(ei.value)
    assert "harness data prepare --train-sets deepmath" in msg and "offline mode (HF_HUB_OFFLINE=1)" in msg
    assert str(tmp_path / "no-data" / "deepmath.jsonl") in msg and "deepmath/" in msg  # where it is expected
    t = time.perf_counter()
    with pytest.raises(DatasetError, match=r"benchmark 'math500'.*harness data prepare --benchmarks math500"):
        load_benchmark("math500")
    assert time.perf_counter() - t < 5.0


def test_unreachable_hub_is_treated_as_offline(monkeypatch):
    """No HF_HUB_OFFLINE but no network: the load runs in offline mode (HF cache only) instead of retrying for ~50 s."""
    datasets = pytest.importorskip("datasets")
    import huggingface_hub.constants as hc

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")
    monkeypatch.setattr(D, "_hub_unreachable", lambda: "huggingface.co:443: gaierror: no DNS")
    seen = []

    def fake_load_dataset(path, name=None, split=None, **kw):
        seen.append((datasets.config.HF_HUB_OFFLINE, hc.HF_HUB_OFFLINE))
        raise ConnectionError(f"Couldn't reach '{path}' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    flags = (datasets.config.HF_HUB_OFFLINE, hc.HF_HUB_OFFLINE)
    with pytest.raises(
        DatasetError, match=r"cannot be reached \(huggingface.co:443.*harness data prepare --train-sets deepmath"
    ):
        load_train_set("deepmath", 16, 42)
    assert seen == [(True, True)] and (datasets.config.HF_HUB_OFFLINE, hc.HF_HUB_OFFLINE) == flags  # restored
