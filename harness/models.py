"""Model registry and loading: the built-in tiny model, the paper's models, any hub id or local path.

Each entry carries what the reference code hard-codes per model: the pad token (never equal to eos,
or padding would be trained as end-of-sequence), chat-template handling, dtype and lengths.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch


@dataclass(frozen=True)
class ModelSpec:
    name: str
    source: str  # hub id, or "builtin" for the tiny model
    confirmed: bool = True  # named by the paper/code (False: our best guess)
    pad_token: str | None = None  # used when the tokenizer's pad is missing or equals eos
    dtype: str = "bfloat16"
    max_prompt_length: int = 512
    max_completion_length: int = 1024
    recommended_engine: str = "vllm"
    preset: str | None = None  # config preset applied under this model (tiny: harness/presets/tiny.yaml)
    chat_template_kwargs: dict = field(default_factory=dict, hash=False)
    notes: str = ""


REGISTRY: dict[str, ModelSpec] = {
    s.name: s
    for s in [
        ModelSpec("tiny", "builtin", pad_token="<|pad|>", dtype="float32", max_prompt_length=64, max_completion_length=16, recommended_engine="hf", preset="tiny",
                  notes="Built locally by `harness models build tiny`: Qwen3 architecture, character tokenizer, warm-started on arith."),
        ModelSpec("qwen2.5-math-1.5b", "Qwen/Qwen2.5-Math-1.5B", pad_token="<|endoftext|>",
                  notes="Paper model. Its chat template injects a 'reason step by step ... \\boxed{}' system prompt."),
        ModelSpec("qwen2.5-math-7b", "Qwen/Qwen2.5-Math-7B", pad_token="<|endoftext|>", notes="Paper model (named in the reference checkpoints)."),
        ModelSpec("qwen3-1.7b", "Qwen/Qwen3-1.7B", pad_token="<|endoftext|>", chat_template_kwargs={"enable_thinking": True},
                  notes="Paper model. Thinking mode on (the template's default); 1,024 training tokens truncate many thoughts."),
        ModelSpec("qwen2.5-1.5b-instruct", "Qwen/Qwen2.5-1.5B-Instruct", confirmed=False, pad_token="<|endoftext|>",
                  notes="UNCONFIRMED: the paper's other two models were not recovered; a plausible small Qwen model."),
        ModelSpec("deepseek-r1-distill-qwen-1.5b", "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", confirmed=False, pad_token="<|fim_pad|>",
                  notes="UNCONFIRMED: listed in the reference's PAD_TOKEN_MAP; not named by the paper."),
    ]
}

PAPER_MODELS = ["qwen2.5-math-1.5b", "qwen2.5-math-7b", "qwen3-1.7b", "qwen2.5-1.5b-instruct", "deepseek-r1-distill-qwen-1.5b"]


def get_spec(name: str) -> ModelSpec:
    """Registry entry, or a generic entry for a hub id / local path."""
    if name in REGISTRY:
        return REGISTRY[name]
    return ModelSpec(name=name, source=name, confirmed=True, notes="not in the registry: loaded as given")


def resolve_path(spec: ModelSpec) -> str:
    if spec.source == "builtin":
        from harness.tiny_model import tiny_model_path

        return str(tiny_model_path())
    return spec.source


def load_tokenizer(name: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    spec = get_spec(name)
    tok = AutoTokenizer.from_pretrained(resolve_path(spec), trust_remote_code=trust_remote_code)
    fix_pad_token(tok, spec)
    tok.padding_side = "left"
    return tok


def fix_pad_token(tok, spec: ModelSpec) -> None:
    """Make pad != eos, so padded positions are never mistaken for (or trained as) end of sequence."""
    if tok.pad_token_id is not None and tok.pad_token_id != tok.eos_token_id:
        return
    if spec.pad_token and spec.pad_token in tok.get_vocab() and tok.convert_tokens_to_ids(spec.pad_token) != tok.eos_token_id:
        tok.pad_token = spec.pad_token
        return
    raise ValueError(f"model '{spec.name}': pad token is missing or equal to eos ({tok.eos_token!r}) and the registry names no usable pad token; add one with ModelSpec(pad_token=...)")


def load_model(name: str, dtype: str = "float32", trust_remote_code: bool = False, attn_implementation: str | None = None, path: str | None = None):
    from transformers import AutoModelForCausalLM

    spec = get_spec(name)
    kwargs = {"dtype": getattr(torch, dtype), "trust_remote_code": trust_remote_code}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    return AutoModelForCausalLM.from_pretrained(path or resolve_path(spec), **kwargs)


def encode_prompt(tokenizer, problem: str, max_prompt_length: int, chat_template_kwargs: dict | None = None) -> tuple[list[int], bool]:
    """Chat-templated prompt ids (one user message, no system prompt, as in the reference),
    left-truncated to ``max_prompt_length``. Returns (ids, was_truncated)."""
    ids = tokenizer.apply_chat_template([{"role": "user", "content": problem}], add_generation_prompt=True, tokenize=True, **(chat_template_kwargs or {}))
    if hasattr(ids, "input_ids"):
        ids = ids["input_ids"]
    if isinstance(ids, dict):
        ids = ids["input_ids"]
    ids = list(ids)
    if len(ids) > max_prompt_length:
        return ids[-max_prompt_length:], True
    return ids, False


def describe(spec: ModelSpec) -> str:
    return f"{spec.name:32s} {spec.source:45s} {'confirmed' if spec.confirmed else 'UNCONFIRMED':11s} {spec.notes}"


def model_dir_exists(path: str) -> bool:
    return Path(path).exists()
