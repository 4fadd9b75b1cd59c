"""Tests for harness.tiny_model: tokenizer, chat template, model (de)serialisation, cached builds.

The full warm start (until the accuracy band) is not run here; builds use a few steps.
"""

from __future__ import annotations

import json
import string

import pytest
import torch

from harness import tiny_model as tm
from harness.tiny_model import (
    ASSISTANT_TOKEN,
    EOS_TOKEN,
    PAD_TOKEN,
    USER_TOKEN,
    TinyBuildConfig,
    TinyBuildError,
    build_tiny_model,
    build_tokenizer,
    make_untrained_model,
    tiny_model_path,
)

# A few optimizer steps, a tiny held-out eval, no accuracy band.
QUICK = dict(max_steps=3, eval_every=3, eval_size=8, pass_k=2, max_new_tokens=8)


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def test_round_trip_of_ascii_text(tok):
    texts = [
        string.printable.replace("\r", "").replace("\x0b", "").replace("\x0c", ""),
        "What is 37+48?\n\\boxed{85}",
        "  two  spaces, $x^2_1$ and {braces}\t\n",
        "7+8=15,3+4+1=8 \\boxed{85}",
        "",
    ]
    for s in texts:
        ids = tok.encode(s, add_special_tokens=False)
        assert tok.decode(ids) == s
        assert len(ids) == len(s)  # one token per character
    assert tok.encode("ab") == tok.encode("ab", add_special_tokens=False)  # no BOS/EOS added


def test_special_tokens(tok):
    assert tok.pad_token == PAD_TOKEN and tok.eos_token == EOS_TOKEN
    assert tok.pad_token_id != tok.eos_token_id
    assert tok.unk_token == "<unk>"
    ids = tok.encode(f"{USER_TOKEN}hi{ASSISTANT_TOKEN}x{EOS_TOKEN}")
    assert ids == [
        tok.convert_tokens_to_ids(USER_TOKEN),
        *tok.encode("hi"),
        tok.convert_tokens_to_ids(ASSISTANT_TOKEN),
        *tok.encode("x"),
        tok.eos_token_id,
    ]
    assert tok.decode(ids, skip_special_tokens=True) == "hix"
    assert tok.encode("é") == [tok.unk_token_id]
    assert len(tok) == 5 + 2 + 95  # specials, \n \t, printable ASCII
    assert tok.padding_side == "left"


def test_chat_template_exact_output(tok):
    user = [{"role": "user", "content": "37+48"}]
    assert tok.apply_chat_template(user, tokenize=False, add_generation_prompt=True) == "<|user|>37+48<|assistant|>"
    assert tok.apply_chat_template(user, tokenize=False) == "<|user|>37+48"
    convo = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "1+1"},
        {"role": "assistant", "content": "\\boxed{2}"},
        {"role": "user", "content": [{"type": "text", "text": "2+2"}]},
    ]
    assert (
        tok.apply_chat_template(convo, tokenize=False, add_generation_prompt=True)
        == "Be brief.\n<|user|>1+1<|assistant|>\\boxed{2}<|endoftext|><|user|>2+2<|assistant|>"
    )
    enc = tok.apply_chat_template(convo[1:3], return_dict=True, return_assistant_tokens_mask=True)
    masked = [i for i, m in zip(enc["input_ids"], enc["assistant_masks"]) if m]
    assert tok.decode(masked) == "\\boxed{2}<|endoftext|>"
    with pytest.raises(Exception, match="unsupported chat role"):
        tok.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


def test_tokenizer_save_load_round_trip(tok, tmp_path):
    from transformers import AutoTokenizer

    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    s = "12*34=408 \\boxed{408}\n"
    assert loaded.encode(s) == tok.encode(s)
    assert loaded.decode(loaded.encode(s)) == s
    assert (loaded.pad_token_id, loaded.eos_token_id, loaded.unk_token_id) == (
        tok.pad_token_id,
        tok.eos_token_id,
        tok.unk_token_id,
    )
    assert len(loaded) == len(tok)
    msgs = [{"role": "user", "content": "5+6"}]
    assert loaded.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == "<|user|>5+6<|assistant|>"
    assert loaded.padding_side == "left"


def test_untrained_model_config_and_save_load(tok, tmp_path):
    from transformers import AutoModelForCausalLM, GenerationConfig

    cfg = TinyBuildConfig()
    model = make_untrained_model(cfg, tok)
    c = model.config
    assert c.model_type == "qwen3"
    assert c.head_dim >= 64 and c.hidden_size == cfg.hidden and c.num_hidden_layers == cfg.layers
    assert c.vocab_size == len(tok)
    assert c.tie_word_embeddings
    assert c.max_position_embeddings == 256
    assert (
        c.eos_token_id == tok.eos_token_id and c.pad_token_id == tok.pad_token_id and c.bos_token_id == tok.eos_token_id
    )
    assert model.generation_config.eos_token_id == tok.eos_token_id
    assert model.generation_config.pad_token_id == tok.pad_token_id

    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert GenerationConfig.from_pretrained(tmp_path).eos_token_id == tok.eos_token_id
    ids = torch.tensor([tok.encode("<|user|>37+48<|assistant|>\\boxed{85}")])
    model.eval()
    reloaded.eval()
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reloaded(ids).logits)
    # same seed -> same init
    again = make_untrained_model(cfg, tok)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_config_key_covers_settings_but_not_threads():
    base = TinyBuildConfig()
    assert base.key() == TinyBuildConfig().key()
    assert base.key() != TinyBuildConfig(seed=1).key()
    assert base.key() != TinyBuildConfig(lr=2e-3).key()
    assert base.key() == TinyBuildConfig(threads=2).key()


def test_quick_build_saves_a_loadable_model_and_is_reused(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = TinyBuildConfig(**QUICK)
    threads_before = torch.get_num_threads()
    path = build_tiny_model(cfg, cache_dir=tmp_path, check_band=False, progress=False)
    assert torch.get_num_threads() == threads_before
    assert path == tmp_path / "models" / f"tiny-{cfg.key()}"
    info = json.loads((path / "build_info.json").read_text())
    assert info["steps"] == 3 and info["band_checked"] is False
    assert info["config"]["seed"] == cfg.seed
    assert 0.0 <= info["greedy_acc"] <= 1.0 and 0.0 <= info["pass@2_t1"] <= 1.0
    assert info["num_parameters"] > 0 and info["seconds"] > 0
    assert [p.name for p in (tmp_path / "models").iterdir()] == [path.name]  # no temp dirs left

    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    assert (
        tok.apply_chat_template([{"role": "user", "content": "1+2"}], tokenize=False, add_generation_prompt=True)
        == "<|user|>1+2<|assistant|>"
    )
    enc = tok(["1+2", "10+20"], return_tensors="pt", padding=True)
    out = model.generate(**enc, max_new_tokens=4, do_sample=False)
    assert out.shape[0] == 2

    # cached: reused without training again
    def boom(*a, **k):
        raise AssertionError("should not retrain")

    monkeypatch.setattr(tm, "warm_start", boom)
    assert build_tiny_model(cfg, cache_dir=tmp_path, check_band=False, progress=False) == path
    assert tiny_model_path(cfg, cache_dir=tmp_path) == path
    with pytest.raises(AssertionError, match="should not retrain"):
        build_tiny_model(cfg, cache_dir=tmp_path, force=True, progress=False)
    assert (path / "build_info.json").is_file()  # a failed rebuild leaves the old build in place


def test_quick_build_is_deterministic(tmp_path):
    from safetensors.torch import load_file

    cfg = TinyBuildConfig(**{**QUICK, "pass_k": 0})
    a = build_tiny_model(cfg, cache_dir=tmp_path / "a", check_band=False, progress=False)
    b = build_tiny_model(cfg, cache_dir=tmp_path / "b", check_band=False, progress=False)
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    c = build_tiny_model(
        TinyBuildConfig(**{**QUICK, "pass_k": 0, "seed": 1}), cache_dir=tmp_path / "a", check_band=False, progress=False
    )
    assert c != a


def test_band_check_with_target_zero_stops_at_max_steps(tmp_path):
    cfg = TinyBuildConfig(max_steps=2, eval_size=4, pass_k=0, max_new_tokens=4, target_min_acc=0.0)
    path = build_tiny_model(cfg, cache_dir=tmp_path, progress=False)
    info = json.loads((path / "build_info.json").read_text())
    assert info["steps"] == 2 and info["band_checked"] is True


def test_unreachable_band_raises_and_saves_nothing(tmp_path):
    cfg = TinyBuildConfig(max_steps=2, eval_every=1, eval_size=4, max_new_tokens=4, target_min_acc=0.99)
    with pytest.raises(TinyBuildError, match="did not reach greedy test accuracy >= 0.99 within 2 steps"):
        build_tiny_model(cfg, cache_dir=tmp_path, progress=False)
    assert list((tmp_path / "models").iterdir()) == []


def test_bad_completion_format_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="completion_format"):
        build_tiny_model(
            TinyBuildConfig(completion_format="latex", **QUICK), cache_dir=tmp_path, check_band=False, progress=False
        )
