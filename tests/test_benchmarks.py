"""Benchmark specs, loading and normalising (offline, on fixture files in each real source schema),
`harness data prepare`, the offline error, and evaluation (metrics, skipped prompts, stored completions,
MLflow + local results) with a stub engine and with an untrained tiny model.

Fixtures (tests/fixtures/<benchmark>/...) are a few rows written for these tests in the schema each hub
source is believed to have (see benchmarks/datasets.py: ``SourceSpec.columns``); the layouts mimic hub
snapshots (``test.jsonl``, ``data/train-00000-of-00001.parquet``, ``main/test-...parquet``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import pytest

from benchmarks import datasets as D
from benchmarks.datasets import (
    BENCHMARKS,
    PAPER_BENCHMARKS,
    DatasetError,
    expand_benchmarks,
    load_benchmark,
    load_train_set,
)
from benchmarks.metrics import pass_at_k

FIXTURES = Path(__file__).parent / "fixtures"

# first gold answer of each fixture after normalisation
EXPECTED_FIRST = {
    "math500": "\\left( 3, \\frac{\\pi}{2} \\right)",
    "amc23": "27",
    "olympiadbench": "2",
    "minerva": "1.6",
    "aime24": "204",
    "aime25": "70",
    "gsm8k": "18",
}


@pytest.fixture(autouse=True)
def _hermetic(hermetic_data):
    """No real data dir, no hub, no HF cache: only what a test points at (conftest.hermetic_data)."""


def _records(path: Path) -> list[dict]:
    return D.read_records(path)


class InProcessScorer:
    """The real verifier, in-process (no worker pool start-up in unit tests)."""

    def score_batch(self, completions, golds):
        from benchmarks.scoring import score_one

        return [score_one(c, g, timeout_s=5.0) for c, g in zip(completions, golds)]


# ------------------------------------------------------------------------------------------------
# specs and mappings


def test_paper_benchmarks_match_the_reference_table():
    table = {
        "math500": ("HuggingFaceH4/MATH-500", "test", None),
        "amc23": ("math-ai/amc23", "test", None),
        "olympiadbench": ("zwhe99/simplerl-OlympiadBench", "test", None),
        "minerva": ("zwhe99/simplerl-minerva-math", "test", None),
        "aime24": ("HuggingFaceH4/aime_2024", "train", None),
        "aime25": ("math-ai/aime25", "test", None),
        "gsm8k": ("openai/gsm8k", "test", "main"),
    }
    assert set(PAPER_BENCHMARKS) == set(table)
    for name, (hub, split, config) in table.items():
        s = BENCHMARKS[name]
        assert (s.hub_id, s.split, s.config) == (hub, split, config), name
        assert s.schema_verified is False  # nothing could be checked against the hub here: say so
    assert D.REFERENCE_SAMPLES == {"aime24": 32, "aime25": 32, "amc23": 32}
    assert D.TRAIN_SETS["deepmath"].hub_id == "zwhe99/DeepMath-103K"


@pytest.mark.parametrize("name", PAPER_BENCHMARKS)
def test_fixture_loads_in_our_schema(name):
    rows = load_benchmark(name, data_dir=FIXTURES)
    assert rows and all(set(r) == {"id", "problem", "answer", "benchmark"} for r in rows)
    assert all(r["benchmark"] == name and r["problem"].strip() and r["answer"].strip() for r in rows)
    assert len({r["id"] for r in rows}) == len(rows)
    assert rows[0]["answer"] == EXPECTED_FIRST[name]
    assert load_benchmark(name, max_examples=1, data_dir=FIXTURES) == rows[:1]


def test_gsm8k_gold_is_the_text_after_hashes_and_train_split_is_ignored():
    rows = load_benchmark("gsm8k", data_dir=FIXTURES)
    raw = _records(FIXTURES / "gsm8k/main/test-00000-of-00001.parquet")
    assert [r["answer"] for r in rows] == ["18", "3", "5000"]  # "#### 5,000" -> "5000"
    assert [r["problem"] for r in rows] == [x["question"] for x in raw]
    assert not any("TRAIN ROW" in r["problem"] for r in rows)
    assert D.gsm8k_answer("blah <<2*3=6>>6\n####  -1,234 ") == "-1234"
    assert D.gsm8k_answer("a #### 3.5") == "3.5"
    with pytest.raises(ValueError):
        D.gsm8k_answer("no marker 18")


def test_olympiadbench_prompt_is_the_question_not_the_solution():
    raw = _records(FIXTURES / "olympiadbench/test.jsonl")
    rows = load_benchmark("olympiadbench", data_dir=FIXTURES)
    for r, x in zip(rows, raw):
        assert r["problem"] == x["question"]
        assert x["solution"][0] not in r["problem"]
        assert r["answer"] == x["final_answer"][0].strip()
        assert r["id"] == str(x["id"])
    # the reference's mapping exists only to reproduce its numbers, and feeds the worked solution
    ref = load_benchmark("olympiadbench_reference", data_dir=FIXTURES)
    assert [r["problem"] for r in ref] == [" ".join(x["solution"]) for x in raw]
    assert "olympiadbench_reference" not in expand_benchmarks("all")


def test_olympiadbench_without_question_column_fails_loudly(tmp_path):
    bad = [{k: v for k, v in x.items() if k != "question"} for x in _records(FIXTURES / "olympiadbench/test.jsonl")]
    (tmp_path / "olympiadbench.jsonl").write_text("".join(json.dumps(x) + "\n" for x in bad))
    with pytest.raises(DatasetError, match=r"olympiadbench.*no problem field.*question.*final_answer"):
        load_benchmark("olympiadbench", data_dir=tmp_path)


def test_minerva_gold_from_answer_column_or_last_boxed(tmp_path):
    rows = load_benchmark("minerva", data_dir=FIXTURES)
    assert [r["answer"] for r in rows] == ["1.6", "6"]  # no answer column: last \boxed{} of the solution
    assert [r["id"] for r in rows] == ["0", "1"]
    (tmp_path / "minerva.jsonl").write_text(
        json.dumps({"problem": "p", "solution": "\\boxed{1}", "answer": "2"}) + "\n"
    )
    assert load_benchmark("minerva", data_dir=tmp_path)[0]["answer"] == "2"
    assert D.last_boxed("a \\boxed{1} then \\boxed{\\frac{a}{b^{2}}} end") == "\\frac{a}{b^{2}}"
    assert D.last_boxed("none here") is None


def test_numeric_answers_are_written_as_plain_numbers():
    assert [r["answer"] for r in load_benchmark("amc23", data_dir=FIXTURES)] == ["27", "11"]
    assert D._number_text(27.0) == "27" and D._number_text(2.5) == "2.5" and D._number_text(" 7 ") == "7"


def test_expand_benchmarks():
    assert expand_benchmarks("all") == list(PAPER_BENCHMARKS)
    assert expand_benchmarks("arith, all,champ") == ["arith", *PAPER_BENCHMARKS, "champ"]
    assert expand_benchmarks(["gsm8k", "gsm8k"]) == ["gsm8k"]


# ------------------------------------------------------------------------------------------------
# offline behaviour


@pytest.mark.parametrize("name", PAPER_BENCHMARKS)
def test_offline_and_not_prepared_is_a_clear_error(name):
    with pytest.raises(DatasetError) as ei:
        load_benchmark(name)
    msg = str(ei.value)
    assert f"benchmark '{name}'" in msg and f"harness data prepare --benchmarks {name}" in msg and "--data-dir" in msg


def test_offline_training_set_error_names_the_command():
    with pytest.raises(DatasetError, match=r"training set 'deepmath'.*harness data prepare --train-sets deepmath"):
        load_train_set("deepmath", 1024, 42)


def test_unknown_names_are_errors():
    with pytest.raises(DatasetError, match="unknown benchmark 'nope'"):
        load_benchmark("nope")
    with pytest.raises(DatasetError, match="unknown training set"):
        load_train_set("nope")


def test_env_data_dir_is_used(monkeypatch):
    monkeypatch.setenv("HARNESS_DATA_DIR", str(FIXTURES))
    assert load_benchmark("aime25")[0]["answer"] == "70"


def test_local_files_as_benchmarks_and_train_sets(tmp_path):
    rows = [{"problem": "1+1", "answer": 2}, {"id": "b", "problem": "2+2", "answer": "4"}]
    (tmp_path / "mine.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"problem": "3+3", "answer": "6"}]), tmp_path / "mine.parquet")
    got = load_benchmark(str(tmp_path / "mine.jsonl"))
    assert [(r["id"], r["answer"], r["benchmark"]) for r in got] == [("mine-0", "2", "mine"), ("b", "4", "mine")]
    assert load_benchmark(str(tmp_path / "mine.parquet"))[0]["answer"] == "6"
    assert len(load_train_set(str(tmp_path / "mine.jsonl"))) == 2
    (tmp_path / "bad.jsonl").write_text(json.dumps({"problem": "x"}) + "\n")
    with pytest.raises(DatasetError, match="bad.jsonl:1: field 'answer'"):
        load_benchmark(str(tmp_path / "bad.jsonl"))


# ------------------------------------------------------------------------------------------------
# training set


def test_deepmath_subset_is_the_seed_shuffle_prefix_with_final_answer_gold():
    raw = _records(FIXTURES / "deepmath/train.jsonl")
    import numpy as np

    perm = np.random.default_rng(42).permutation(len(raw))
    rows = load_train_set("deepmath", 4, 42, data_dir=FIXTURES)
    assert [r["problem"] for r in rows] == [raw[i]["question"] for i in perm[:4]]
    assert [r["answer"] for r in rows] == [raw[i]["final_answer"] for i in perm[:4]]
    assert [r["id"] for r in rows] == [f"deepmath-{i}" for i in perm[:4]]
    assert all(set(r) == {"id", "problem", "answer", "benchmark"} for r in rows)
    # the reference's gold (the full R1 solution) stays available
    r1 = load_train_set("deepmath_r1", 4, 42, data_dir=FIXTURES)
    assert [r["answer"] for r in r1] == [raw[i]["r1_solution_1"] for i in perm[:4]]
    assert [r["problem"] for r in r1] == [r["problem"] for r in rows]


def test_deepmath_shuffle_matches_datasets_shuffle():
    datasets = pytest.importorskip("datasets")
    raw = _records(FIXTURES / "deepmath/train.jsonl")
    ds = datasets.Dataset.from_list(raw).shuffle(seed=42).select(range(5))
    assert [r["problem"] for r in load_train_set("deepmath", 5, 42, data_dir=FIXTURES)] == ds["question"]


# ------------------------------------------------------------------------------------------------
# harness data prepare


def _prepare_args(**kw):
    base = dict(
        benchmarks="all", train_sets="deepmath", train_size="4", seed=42, data_dir=None, source_dir=None, force=False
    )
    base.update(kw)
    return argparse.Namespace(**base)


def test_data_prepare_from_local_source_round_trips(tmp_path, capsys):
    from benchmarks.prepare import cmd_data_prepare

    out = tmp_path / "prepared"
    assert cmd_data_prepare(_prepare_args(data_dir=str(out), source_dir=str(FIXTURES))) == 0
    for name in PAPER_BENCHMARKS:
        assert (out / f"{name}.jsonl").is_file()
        meta = json.loads((out / f"{name}.meta.json").read_text())
        assert meta["num_rows"] == len(load_benchmark(name, data_dir=FIXTURES))
        assert meta["schema_verified"] is False and meta["hub_id"] == BENCHMARKS[name].hub_id
        assert load_benchmark(name, data_dir=out) == load_benchmark(name, data_dir=FIXTURES)
    meta = json.loads((out / "olympiadbench.meta.json").read_text())
    assert meta["field_usage"]["problem"] == {"question": 2}
    assert json.loads((out / "minerva.meta.json").read_text())["field_usage"]["answer"] == {"solution": 2}
    # DeepMath: the prepared subset equals the local shuffle, and remembers its seed and size
    assert load_train_set("deepmath", 4, 42, data_dir=out) == load_train_set("deepmath", 4, 42, data_dir=FIXTURES)
    assert load_train_set("deepmath_r1", 3, 42, data_dir=out) == load_train_set("deepmath_r1", 3, 42, data_dir=FIXTURES)
    with pytest.raises(DatasetError, match="seed 42.*seed 7"):
        load_train_set("deepmath", 4, 7, data_dir=out)
    with pytest.raises(DatasetError, match="holds 4 DeepMath prompts, 8 were asked"):
        load_train_set("deepmath", 8, 42, data_dir=out)
    # second run skips what is there
    assert cmd_data_prepare(_prepare_args(data_dir=str(out), source_dir=str(FIXTURES))) == 0
    assert "skip" in capsys.readouterr().out


def test_data_prepare_failure_is_reported_and_nonzero(tmp_path, capsys):
    from benchmarks.prepare import cmd_data_prepare

    rc = cmd_data_prepare(_prepare_args(benchmarks="math500,champ", train_sets="none", data_dir=str(tmp_path / "o")))
    assert rc == 1
    err = capsys.readouterr()
    assert "FAILED" in err.err and "math500" in err.err
    assert "champ" in err.out and "built in" in err.out


def test_data_prepare_from_the_hub_checks_the_schema(tmp_path, monkeypatch, capsys):
    """Online path with `datasets.load_dataset` stubbed by the fixtures (as real `Dataset` objects)."""
    datasets = pytest.importorskip("datasets")
    from benchmarks.prepare import cmd_data_prepare, prepare_train_set

    by_hub = {
        "zwhe99/simplerl-OlympiadBench": FIXTURES / "olympiadbench/test.jsonl",
        "zwhe99/DeepMath-103K": FIXTURES / "deepmath/train.jsonl",
        "openai/gsm8k": FIXTURES / "gsm8k/main/test-00000-of-00001.parquet",
    }
    calls, drop = [], set()

    def fake_load_dataset(path, name=None, split=None, **kw):
        calls.append((path, name, split))
        recs = [{k: v for k, v in r.items() if k not in drop} for r in D.read_records(by_hub[path])]
        if path == "openai/gsm8k":
            recs = [dict(r, extra_column="x") for r in recs]
        return datasets.Dataset.from_list(recs)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    out = tmp_path / "prepared"
    rc = cmd_data_prepare(
        _prepare_args(benchmarks="olympiadbench,gsm8k", train_sets="deepmath", train_size="3", data_dir=str(out))
    )
    assert rc == 0, capsys.readouterr().err
    assert ("openai/gsm8k", "main", "test") in calls and ("zwhe99/DeepMath-103K", None, "train") in calls
    meta = json.loads((out / "gsm8k.meta.json").read_text())
    assert meta["source"] == "hub:openai/gsm8k" and "extra_column" in meta["columns_present"]
    assert load_benchmark("gsm8k", data_dir=out) == load_benchmark("gsm8k", data_dir=FIXTURES)
    assert load_benchmark("olympiadbench", data_dir=out) == load_benchmark("olympiadbench", data_dir=FIXTURES)
    # hub shuffle (datasets) == the local shuffle of the raw split
    assert load_train_set("deepmath", 3, 42, data_dir=out) == load_train_set("deepmath", 3, 42, data_dir=FIXTURES)
    # a source without a documented column is flagged (the schema check the first online prepare does)
    drop.add("topic")
    meta = prepare_train_set("deepmath", tmp_path / "p2", size=2, seed=42)
    assert meta["columns_expected_but_missing"] == ["topic"]
    # and the hub path itself works without a prepared file
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")
    assert load_benchmark("gsm8k")[0]["answer"] == "18"


# ------------------------------------------------------------------------------------------------
# CHAMP (real data from PyPI, offline)


def test_champ_offline_benchmark():
    if importlib.util.find_spec("champ_dataset") is None:
        pytest.skip("champ-dataset is not installed (pip install champ-dataset)")
    rows = load_benchmark("champ")
    assert len(rows) == 270 and len({r["id"] for r in rows}) == 270
    assert all(
        r["benchmark"] == "champ" and r["problem"] and r["answer"] and "@@" not in r["problem"] + r["answer"]
        for r in rows
    )
    assert "champ" not in expand_benchmarks("all")


# ------------------------------------------------------------------------------------------------
# evaluation with a stub engine


class _StubTok:
    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(int(i)) for i in ids)


class _StubEngine:
    """Completions are fixed texts per problem (sample j of problem p gets answers[p][j % len])."""

    def __init__(self, answers):
        self.answers, self.calls = answers, 0

    def generate(self, prompts, params):
        import numpy as np

        from harness.rollout import Completion

        self.calls += 1
        out = []
        for p in prompts:
            texts = self.answers["".join(chr(i) for i in p)]
            out.append(
                [
                    Completion(token_ids=np.array([ord(c) for c in texts[j % len(texts)]]), finish_reason="stop")
                    for j in range(params.n)
                ]
            )
        return out


def test_evaluate_metrics_skips_and_stored_completions(tmp_path):
    from benchmarks.evaluation import EvalSettings, evaluate, flat_metrics
    from harness.evaluation import CompletionCache

    rows = load_benchmark("aime25", data_dir=FIXTURES) + load_benchmark("math500", data_dir=FIXTURES)
    answers = {r["problem"]: ["\\boxed{0}"] for r in rows}
    answers["Compute $5+8$."] = ["\\boxed{13}", "\\boxed{12}", "no idea", "\\boxed{13}"]  # 2 of 4 right
    answers["Compute $\\dbinom{8}{4}$."] = ["The answer is $\\boxed{70}$."]
    engine = _StubEngine(answers)
    encode = lambda p: ([ord(c) for c in p], len(p) > 60)  # noqa: E731 - long prompts count as "too long"
    settings = EvalSettings(num_samples=1, samples_per_benchmark={"aime25": 4}, data_dir=str(FIXTURES), batch_size=1)
    cache = CompletionCache(tmp_path / "completions", "stub-model")
    res = evaluate(
        engine, _StubTok(), ["aime25", "math500"], settings, InProcessScorer(), encode, progress=False, cache=cache
    )

    a = res["benchmarks"]["aime25"]
    assert (a["num_rows"], a["num_prompts"], a["skipped_too_long"], a["num_samples"]) == (2, 1, 1, 4)
    assert res["skipped"]["aime25"] == ["0"]  # the long AIME problem is listed, not silently dropped
    assert a["accuracy"] == pytest.approx(0.5)
    for k in (1, 2, 4):
        assert a[f"pass_at_{k}"] == pytest.approx(pass_at_k(4, 2, k))
    assert a["no_answer_frac"] == pytest.approx(0.25)
    m = res["benchmarks"]["math500"]
    assert (m["num_prompts"], m["skipped_too_long"]) == (2, 1) and m["accuracy"] == pytest.approx(0.5)
    assert res["macro_accuracy"] == pytest.approx(0.5)
    assert res["macro_accuracy_ci_low"] <= 0.5 <= res["macro_accuracy_ci_high"]
    flat = flat_metrics(res)
    assert flat["eval/aime25/pass_at_4"] == pytest.approx(pass_at_k(4, 2, 4)) and "eval/macro_accuracy" in flat
    s = [x for x in res["samples"] if x["benchmark"] == "aime25"]
    assert len(s) == 4 and {"prompt", "completion", "extracted", "correct", "reward", "gold"} <= set(s[0])
    assert [x["correct"] for x in s] == [True, False, False, True] and s[0]["extracted"] == "13"
    assert (
        res["settings"]["temperature"] == 0.2
        and res["settings"]["top_k"] == 50
        and res["settings"]["max_new_tokens"] == 2048
    )

    # same eval again: every completion comes from the store, the engine is not called, results identical
    calls = engine.calls
    again = evaluate(
        engine,
        _StubTok(),
        ["aime25", "math500"],
        settings,
        InProcessScorer(),
        encode,
        progress=False,
        cache=CompletionCache(tmp_path / "completions", "stub-model"),
    )
    assert engine.calls == calls
    assert again["benchmarks"]["aime25"]["reused_prompts"] == 1 and again["macro_accuracy"] == res["macro_accuracy"]
    # other sampling settings do not reuse
    other = EvalSettings(num_samples=1, samples_per_benchmark={"aime25": 4}, data_dir=str(FIXTURES), temperature=0.7)
    evaluate(
        engine,
        _StubTok(),
        ["aime25"],
        other,
        InProcessScorer(),
        encode,
        progress=False,
        cache=CompletionCache(tmp_path / "completions", "stub-model"),
    )
    assert engine.calls == calls + 1


def test_reference_sample_counts_by_default():
    from benchmarks.evaluation import EvalSettings

    s = EvalSettings()
    assert [s.samples_for(b) for b in PAPER_BENCHMARKS] == [1, 32, 1, 1, 32, 32, 1]
    assert EvalSettings(samples_per_benchmark={}).samples_for("aime24") == 1


# ------------------------------------------------------------------------------------------------
# harness eval, offline, with a (random) tiny model: MLflow metrics + per-sample artifact + local file


@pytest.fixture(scope="module")
def untrained_tiny_dir(tmp_path_factory):
    from harness.tiny_model import TinyBuildConfig, build_tokenizer, make_untrained_model

    d = tmp_path_factory.mktemp("tiny-untrained")
    cfg = TinyBuildConfig(layers=1, hidden=64, heads=1, kv_heads=1, intermediate=64)
    tok = build_tokenizer(cfg.max_positions)
    make_untrained_model(cfg, tok).save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.mark.slow  # seconds of waiting or subprocesses: out of the fast subset
def test_run_eval_offline_writes_mlflow_and_local_results(untrained_tiny_dir, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    from harness.config import build_config
    from harness.evaluation import run_eval

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = build_config(
        "tiny",
        {
            "model": {"name": str(untrained_tiny_dir)},
            "data": {"max_prompt_length": 64},
            "eval": {"max_examples": 3, "max_new_tokens": 16, "samples_per_benchmark": {"aime24": 2}},
            "tracking": {"tracking_uri": uri, "experiment_name": "eval-test"},
        },
    )
    res_dir = tmp_path / "results"
    recs = run_eval(
        [str(untrained_tiny_dir)],
        "arith,math500,gsm8k,aime24",
        lambda m: cfg,
        results_dir=res_dir,
        data_dir=str(FIXTURES),
        progress=False,
    )
    (rec,) = recs
    b = rec["benchmarks"]
    assert b["arith"]["num_prompts"] == 3 and b["aime24"]["num_samples"] == 2
    assert (
        b["gsm8k"]["skipped_too_long"] == 3 and b["gsm8k"]["num_prompts"] == 0
    )  # 64-token limit: reported, not dropped
    assert rec["settings"]["max_prompt_length"] == 64 and rec["settings"]["max_new_tokens"] == 16
    lines = (res_dir / "results.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["mlflow_run_id"] == rec["mlflow_run_id"]
    samples = [json.loads(x) for x in Path(rec["samples_file"]).read_text().splitlines()]
    assert (
        len(samples) == 3 + 2 + 0 + 2
    )  # arith 3, math500 2 of 3 fit, gsm8k none, aime24 the short problem x 2 samples
    assert {"prompt", "completion", "extracted", "correct", "gold", "benchmark"} <= set(samples[0])

    client = MlflowClient(uri)
    run = client.get_run(rec["mlflow_run_id"])
    assert "eval/arith/accuracy" in run.data.metrics and "eval/macro_accuracy" in run.data.metrics
    assert "eval/gsm8k/skipped_too_long" in run.data.metrics
    assert run.data.params["eval.temperature"] == "0.2" and run.data.params["eval.top_k"] == "50"
    arts = [a.path for a in client.list_artifacts(rec["mlflow_run_id"], "eval")]
    assert "eval/samples.jsonl" in arts and "eval/results.json" in arts
    assert "macro accuracy" in capsys.readouterr().out

    # re-running the same eval reuses the stored completions
    (rec2,) = run_eval(
        [str(untrained_tiny_dir)],
        "arith,math500,gsm8k,aime24",
        lambda m: cfg,
        results_dir=res_dir,
        data_dir=str(FIXTURES),
        progress=False,
        tracking=False,
    )
    assert rec2["benchmarks"]["arith"]["reused_prompts"] == 3 and rec2["benchmarks"]["aime24"]["reused_prompts"] == 1
    assert rec2["macro_accuracy"] == rec["macro_accuracy"]
    assert len((res_dir / "results.jsonl").read_text().splitlines()) == 2


def test_eval_cli_takes_the_configs_benchmarks_unless_given(untrained_tiny_dir, tmp_path, monkeypatch):
    """`harness eval --config X` evaluates X's eval.benchmarks (it used to fall back to arith whatever the config);
    --benchmarks still wins."""
    from harness.cli import main

    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "eval.yaml"
    cfg.write_text(
        "data: {max_prompt_length: 256}\neval: {benchmarks: [math500, gsm8k], max_examples: 2, max_new_tokens: 4}\n"
    )
    common = ["eval", "--models", str(untrained_tiny_dir), "--config", str(cfg), "--data-dir", str(FIXTURES)]
    common += ["--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--no-progress"]
    assert main([*common, "--results-dir", str(tmp_path / "a")]) == 0
    (rec,) = [json.loads(line) for line in (tmp_path / "a" / "results.jsonl").read_text().splitlines()]
    assert set(rec["benchmarks"]) == {"math500", "gsm8k"}
    assert main([*common, "--results-dir", str(tmp_path / "b"), "--benchmarks", "math500"]) == 0
    (rec,) = [json.loads(line) for line in (tmp_path / "b" / "results.jsonl").read_text().splitlines()]
    assert set(rec["benchmarks"]) == {"math500"}
