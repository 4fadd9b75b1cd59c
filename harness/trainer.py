"""The shared, algorithm-agnostic RL trainer (accelerate).

One step: sample prompts (the algorithm may skip or re-order them, ``choose_prompts``, and put earlier prompts in
place of some, ``revisit_prompts``) -> rollout engine generates G
completions per prompt -> score (math-verify accuracy, optional format reward; or a control, ``reward.kind``) -> the
algorithm keeps groups or asks for more rollouts (``select_groups``; every generated token is counted) -> the
algorithm builds the training batch -> forward/backward with the algorithm's loss (``num_iterations`` times) ->
optimizer/scheduler step -> the algorithm's ``after_step`` -> metrics to MLflow. Nothing here is specific to one
algorithm.

The log-probs of the pre-step policy ("old" log-probs) are taken from the first training forward
pass, detached: before the first optimizer step on a batch they are exactly the behaviour policy's,
so no separate log-prob pass is needed (it would only repeat the same forward).

Rollout engines (README "Rollout engines"): the engine returns per-token log-probs with its samples when
that is cheap (or when they are needed); the trainer then logs the engine-trainer gap on the trained rows
(``engine/logprob_gap_*``), can apply truncated importance sampling (``generation.tis_cap``) and can hand
the engine's log-probs to the algorithm as behaviour log-probs (``generation.behaviour_logprobs=engine``).
After every optimizer step the engine receives the new weights (``time/weight_sync_s``, ``engine/*``).
"""

from __future__ import annotations

import json
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from algorithms import create_algorithm
from algorithms.base import (
    LossInputs,
    RolloutGroup,
    TrainBatch,
    algorithm_config_dict,
    check_choice,
    check_revisits,
    check_selection,
)
from benchmarks.datasets import load_train_set
from benchmarks.evaluation import EvalSettings, evaluate, flat_metrics
from benchmarks.scoring import get_default_scorer, has_boxed_answer
from harness import checkpoint as ckpt
from harness.budget import TOTALED, Budget, lr_factor, step_flops, total_name, visits_per_prompt
from harness.checkpoint import TrainState
from harness.config import HarnessConfig, save_config
from harness.data import PromptSampler
from harness.engines import create_engine, engine_options
from harness.engines.checks import logprob_gap_metrics, truncated_is_weights
from harness.evaluation import CompletionCache, model_key, settings_from_config
from harness.io import atomic_write_json, atomic_write_text, cache_root
from harness.logprobs import completion_logprobs, shared_prompt_logprobs, wrapped_chunked_unsupported_reason
from harness.memory import peak_rss_bytes, plan_microbatches, reset_peak_rss
from harness.metrics import MetricSums, reduce_metrics
from harness.models import (
    disable_dropout,
    encode_prompt,
    get_spec,
    instruction_for,
    load_model,
    load_tokenizer,
    resolve_path,
)
from harness.rewards import training_rewards
from harness.rollout import SamplingParams
from harness.secrets import mask_secrets
from harness.tracking import Tracker, mark_run_failed


@dataclass
class Collated:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    completion_ids: torch.Tensor  # [B, C]
    completion_mask: torch.Tensor  # [B, C] float


def collate(prompts: list[list[int]], completions: list[np.ndarray], pad_id: int) -> Collated:
    """[left-padded prompt | right-padded completion]; positions count real tokens only, as in generate."""
    P = max(len(p) for p in prompts)
    C = max(max(len(c) for c in completions), 1)
    B = len(prompts)
    ids = torch.full((B, P + C), pad_id, dtype=torch.long)
    mask = torch.zeros((B, P + C), dtype=torch.long)
    cmask = torch.zeros((B, C), dtype=torch.float32)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        ids[i, P - len(p) : P] = torch.as_tensor(p, dtype=torch.long)
        mask[i, P - len(p) : P] = 1
        ids[i, P : P + len(c)] = torch.as_tensor(c, dtype=torch.long)
        mask[i, P : P + len(c)] = 1
        cmask[i, : len(c)] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return Collated(ids, mask, pos, ids[:, P:], cmask)


def distinct_prompts(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The distinct prompts left-padded as :func:`collate` pads them ([U, P] ids and mask), and each row's index
    among them ([R])."""
    index: dict[tuple[int, ...], int] = {}
    prompt_of = torch.tensor([index.setdefault(tuple(p), len(index)) for p in prompts], dtype=torch.long)
    P = max(len(p) for p in index)
    ids = torch.full((len(index), P), pad_id, dtype=torch.long)
    mask = torch.zeros((len(index), P), dtype=torch.long)
    for i, p in enumerate(index):
        ids[i, P - len(p) :] = torch.as_tensor(p, dtype=torch.long)
        mask[i, P - len(p) :] = 1
    return ids, mask, prompt_of


def pad_rows(rows: list[np.ndarray], width: int) -> torch.Tensor:
    out = torch.zeros((len(rows), width), dtype=torch.float32)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.as_tensor(r[:width], dtype=torch.float32)
    return out


def row_engine_logprobs(batch: TrainBatch, groups: list[RolloutGroup]) -> list[np.ndarray | None]:
    """The engine's log-probs of every batch row sampled in this step (``old_logprobs is None``), else None.

    A row is matched to a completion of its group (``group_index``) by identity, else by equal tokens, so the
    trainer needs no knowledge of how an algorithm orders its rows.
    """
    out: list[np.ndarray | None] = [None] * len(batch)
    taken: dict[int, set[int]] = {}
    for r in range(len(batch)):
        if batch.old_logprobs[r] is not None:
            continue
        gi = int(batch.group_index[r])
        g = groups[gi]
        if g.engine_logprobs is None:
            continue
        used = taken.setdefault(gi, set())
        row = batch.completion_ids[r]
        j = next((j for j, c in enumerate(g.completion_ids) if c is row and j not in used), None)
        if j is None:
            j = next(
                (
                    j
                    for j, c in enumerate(g.completion_ids)
                    if j not in used and len(c) == len(row) and np.array_equal(c, row)
                ),
                None,
            )
        if j is None or g.engine_logprobs[j] is None:
            continue
        used.add(j)
        out[r] = g.engine_logprobs[j]
    return out


@dataclass
class _Sampled:
    """One rollout round: its groups and the per-sample values the step's metrics are computed from."""

    groups: list[RolloutGroup]
    texts: list[str]
    rewards: np.ndarray
    accuracy: np.ndarray
    format: np.ndarray
    lengths: np.ndarray
    truncated: np.ndarray
    prompt_truncated: list[bool]
    prompt_tokens: int
    versions: list[int]
    t_generate: float
    t_score: float


@dataclass
class StepRecord:
    """What a step consumed and produced (for tests, resume checks and sample logging)."""

    step: int
    prompt_ids: list[str]
    completion_ids: list[list[list[int]]]
    rewards: list[list[float]]
    metrics: dict[str, float] = field(default_factory=dict)


class Trainer:
    def __init__(
        self,
        cfg: HarnessConfig,
        *,
        resume: str | None = None,
        progress: bool = True,
        tracker_tags: dict[str, str] | None = None,
        parent_run_id: str | None = None,
        engine=None,
    ):
        """``engine``: an already started rollout engine to use instead of creating ``generation.engine`` (tests,
        notebooks); it receives the trainer's weights at once and is not closed by the trainer.

        ``resume``: a checkpoint folder, or an output folder (its newest intact checkpoint; see
        :func:`harness.checkpoint.find_checkpoint`). Without it, an output folder that already holds checkpoints is
        refused: a new run never overwrites them. A failure anywhere in set-up closes what was started and leaves no
        MLflow run RUNNING (the resumed run, or the one just created, is set to FAILED)."""
        self.engine = None
        self._owns_engine = False
        self.tracker: Tracker | None = None
        self._resume_run_id: str | None = None
        try:
            self._setup(
                cfg,
                resume=resume,
                progress=progress,
                tracker_tags=tracker_tags,
                parent_run_id=parent_run_id,
                engine=engine,
            )
        except BaseException:
            self._abort_setup(cfg)
            raise

    def _abort_setup(self, cfg: HarnessConfig) -> None:
        from contextlib import suppress

        if self._owns_engine and self.engine is not None:
            with suppress(Exception):
                self.engine.close()
            self.engine = None
        if getattr(self, "is_main", False) and cfg.tracking.enabled:
            if self.tracker is not None and self.tracker.enabled:
                with suppress(Exception):
                    self.tracker.finish("FAILED")
            else:
                mark_run_failed(cfg.tracking.tracking_uri, self._resume_run_id)

    def _find_resume_dir(self, resume: str | None) -> Path | None:
        """The checkpoint to resume from (chosen on the main process, agreed by all); damaged newer ones are set aside."""
        if not resume:
            existing = ckpt.list_checkpoints(self.output_dir)
            if existing:
                raise ckpt.CheckpointError(
                    f"output folder '{self.output_dir}' already holds checkpoints ({', '.join(c.name for c in existing[:3])}): "
                    f"continue it with `harness run --resume {self.output_dir}`, or set another train.output_dir (or remove them); "
                    "a new run never overwrites them"
                )
            return None
        found, err = None, None
        if self.is_main:
            try:
                found = ckpt.find_checkpoint(resume, set_aside_damaged=True)
            except ckpt.CheckpointError as e:
                err = str(e)
                self._resume_run_id = ckpt.recorded_run_id(resume)
        if self.accelerator.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            box = [str(found) if found else None, err]
            broadcast_object_list(box)
            found, err = (Path(box[0]) if box[0] else None), box[1]
        if err:
            raise ckpt.CheckpointError(err)
        return found

    def _trim_after_resume(self, resume_dir: Path) -> None:
        """What the interrupted process logged after the checkpoint (its steps are trained again) goes: metric points in
        MLflow and lines of completions.jsonl; if the checkpoint's MLflow run is gone, the run continues in a new one."""
        tr = self.tracker
        if tr.enabled and tr.missing_run_id:
            print(
                f"warning: MLflow run {tr.missing_run_id} recorded in {resume_dir} is not in {tr.display_uri} (was the store lost or the run "
                f"deleted?): continuing from step {self.step} in a new run {tr.run_id}, tagged harness.continues_run={tr.missing_run_id}",
                file=sys.stderr,
                flush=True,
            )
        elif tr.enabled:
            tr.truncate_history(self.step)
        tr.set_tags({"harness.resumed_from": f"{resume_dir.name} (step {self.step})"})
        log = self.output_dir / "completions.jsonl"
        if log.exists():
            kept = []
            for line in log.read_text().splitlines():
                try:
                    if json.loads(line).get("step", 0) > self.step:
                        continue
                except ValueError:
                    continue  # a line cut short by the interruption
                kept.append(line)
            atomic_write_text(log, "".join(x + "\n" for x in kept))

    def _setup(
        self,
        cfg: HarnessConfig,
        *,
        resume: str | None,
        progress: bool,
        tracker_tags: dict[str, str] | None,
        parent_run_id: str | None,
        engine,
    ) -> None:
        """Set-up in named steps; the order is part of the contract (the seed is set before the model and the algorithm
        are built, so the same seed gives the same run)."""
        resume_dir = self._setup_run(cfg, resume, progress)
        self._setup_model(resume_dir)
        self._setup_data()
        self._setup_optimizer(resume_dir)
        self._setup_engine(engine)
        if resume_dir:
            self._restore(resume_dir)
        if resume_dir or not self._owns_engine:  # a new engine already holds the loaded weights
            self.engine.sync_weights(self._policy(), self.state.policy_version)
        self._setup_tracking(resume_dir, tracker_tags, parent_run_id)

    def _setup_run(self, cfg: HarnessConfig, resume: str | None, progress: bool) -> Path | None:
        """Processes, the run's name and output folder, and the checkpoint to resume from (None for a new run)."""
        from accelerate import Accelerator

        self.cfg = cfg
        self.progress = progress
        self.accelerator = Accelerator(cpu=not torch.cuda.is_available())
        self.is_main = self.accelerator.is_main_process
        self.callbacks: list[Callable[[StepRecord], None]] = []
        self.eval_callbacks: list[Callable[["Trainer", str, dict[str, Any]], None]] = []
        self.spec = get_spec(cfg.model.name)
        self.system_prompt, self.prompt_suffix = instruction_for(
            self.spec, cfg.data.system_prompt, cfg.data.prompt_suffix
        )
        self.run_name = (
            cfg.tracking.run_name
            or f"{cfg.algorithm['name'].replace(':', '-')}-{cfg.model.name.split('/')[-1]}-s{cfg.train.seed}"
        )
        self.output_dir = Path(cfg.train.output_dir.format(run_name=self.run_name))
        self._completions_log = self.output_dir / "completions.jsonl"
        resume_dir = self._find_resume_dir(resume)
        self.state = TrainState.read(resume_dir) if resume_dir else TrainState()
        self._resume_run_id = self.state.mlflow_run_id
        self._flat_steps = 0  # steps in a row with no reward variance in any group (see _check_flat_rewards)
        return resume_dir

    def _setup_model(self, resume_dir: Path | None) -> None:
        """Seeds, tokenizer, policy (from the checkpoint when resuming), the algorithm plug-in and its reference model."""
        cfg, acc, seed = self.cfg, self.accelerator, self.cfg.train.seed
        torch.manual_seed(seed)
        np.random.seed(seed)
        m = cfg.model
        self.tokenizer = load_tokenizer(m.name, m.trust_remote_code)
        self.model = load_model(
            m.name,
            m.dtype,
            m.trust_remote_code,
            m.attn_implementation,
            path=str(resume_dir / "model") if resume_dir else None,
        )
        if m.gradient_checkpointing:
            self.model.gradient_checkpointing_enable()
        # Gradient passes run in training mode (checkpointing recomputes only there; _train_mode); no dropout anywhere,
        # so they compute what the no-grad passes and the engines do.
        disable_dropout(self.model)
        self.model.config.use_cache = True
        self.algorithm = create_algorithm(
            cfg.algorithm,
            seed=seed,
            max_completion_length=cfg.generation.max_completion_length,
            process_index=acc.process_index,
            num_processes=acc.num_processes,
        )
        self.ref_model = None
        if self.algorithm.needs_reference_model:
            self.ref_model = (
                load_model(m.name, m.dtype, m.trust_remote_code, m.attn_implementation).to(acc.device).eval()
            )
            self.ref_model.requires_grad_(False)
        self.num_params = sum(
            p.numel() for p in self.model.parameters()
        )  # N of the FLOPs rule (harness.budget.step_flops)
        self.scorer = get_default_scorer(
            cfg.data.answer_fallback
        )  # the pool shared with evaluation, bound to this run's fallback

    def _setup_data(self) -> None:
        """Training prompts, this process's sampler, the budget, and the algorithm's warnings about the planned run."""
        cfg, acc, t = self.cfg, self.accelerator, self.cfg.train
        self.train_rows = load_train_set(cfg.data.train, cfg.data.train_size, cfg.data.shuffle_seed)
        self.sampler = PromptSampler(
            len(self.train_rows), t.prompts_per_step, cfg.data.shuffle_seed, acc.process_index, acc.num_processes
        )
        self._owned_rows: dict[str, int] | None = None  # prompt id -> training row, this process's (revisits)
        self.budget = Budget.from_train(t, self.sampler.steps_per_epoch)
        visits = visits_per_prompt(t, len(self.sampler.shard))
        if self.is_main and visits is not None:
            for warning in self.algorithm.plan_warnings(
                num_generations=cfg.generation.num_generations, visits_per_prompt=visits
            ):
                print(f"warning: {warning}", file=sys.stderr, flush=True)

    def _setup_optimizer(self, resume_dir: Path | None) -> None:
        """AdamW over the policy, then DDP through accelerate, or FSDP2 (train.sharding=fsdp with several processes:
        the policy, and a reference model if any, are sharded before the optimizer is built; harness.sharding)."""
        t, acc = self.cfg.train, self.accelerator
        from harness.sharding import check_launch

        check_launch(acc.distributed_type)
        self.fsdp = t.sharding == "fsdp" and acc.num_processes > 1
        if t.sharding == "fsdp" and not self.fsdp and self.is_main:
            print("note: train.sharding=fsdp with a single process: training unsharded", file=sys.stderr, flush=True)
        if self.fsdp:
            from harness.sharding import shard_model

            for model in (self.model, self.ref_model):
                if model is not None:
                    shard_model(
                        model, acc.device, mixed_precision=t.fsdp_mixed_precision, cpu_offload=t.fsdp_cpu_offload
                    )
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=t.learning_rate, betas=(t.adam_beta1, t.adam_beta2), weight_decay=t.weight_decay
        )
        if resume_dir and self.fsdp:  # the checkpoint holds the gathered state, in the plain layout
            from harness.sharding import load_gathered_optimizer_state

            load_gathered_optimizer_state(self.model, self.optimizer, ckpt.read_optimizer_state(resume_dir))
        elif resume_dir:
            ckpt.load_optimizer(self.optimizer, resume_dir)
        if not self.fsdp:  # FSDP2 modules are used as they are (accelerate would wrap them in DDP)
            self.model, self.optimizer = acc.prepare(self.model, self.optimizer)

    def _policy(self) -> torch.nn.Module:
        """The policy without its DDP wrapper (the engines, evaluation and no-grad log-probs use it). Under FSDP it is
        the sharded model itself: a forward outside :meth:`_gathered` is a collective, and the engines that copy
        weights gather them parameter by parameter."""
        return self.model if self.fsdp else self.accelerator.unwrap_model(self.model)

    def _gathered(self, needed: bool = True):
        """Under FSDP (and when ``needed``), a block in which every process holds the whole policy, so forwards need
        no collective and their number may differ per process (sampling, evaluation); a collective to enter."""
        if not (self.fsdp and needed):
            return nullcontext()
        from harness.sharding import full_weights

        return full_weights(self.model)

    def _setup_engine(self, engine) -> None:
        """The rollout engine (the one given, else ``generation.engine``; ``auto`` resolves to hf or vllm)."""
        cfg, g = self.cfg, self.cfg.generation
        self._owns_engine = engine is None
        self.engine = (
            engine
            if engine is not None
            else create_engine(
                g.engine,
                model=self._policy(),
                tokenizer=self.tokenizer,
                **engine_options(cfg),
            )
        )
        self.engine_name = getattr(self.engine, "name", g.engine)
        # Per-token log-probs with the samples: always when the engine returns them at no real cost (gap metrics),
        # and whenever TIS or engine behaviour log-probs need them.
        self.want_engine_logprobs = bool(
            getattr(self.engine, "cheap_logprobs", False) or g.tis_cap is not None or g.behaviour_logprobs == "engine"
        )

    def _restore(self, resume_dir: Path) -> None:
        """This process's state from the checkpoint: RNGs, the algorithm's state, the sampler's position."""
        algo_state, rank_meta = ckpt.load_rank_state(resume_dir, self.accelerator.process_index)
        self.algorithm.load_state_dict(*algo_state)
        self.sampler.load_state_dict(rank_meta["sampler"])

    def _setup_tracking(
        self, resume_dir: Path | None, tracker_tags: dict[str, str] | None, parent_run_id: str | None
    ) -> None:
        """The MLflow run (the checkpoint's when resuming), the output folder, the resolved config as params and file."""
        cfg, acc, g = self.cfg, self.accelerator, self.cfg.generation
        self.tracker = Tracker(
            enabled=cfg.tracking.enabled and self.is_main,
            tracking_uri=cfg.tracking.tracking_uri,
            experiment=cfg.tracking.experiment_name,
            run_name=self.run_name,
            run_id=self.state.mlflow_run_id,
            tags=tracker_tags,
            parent_run_id=parent_run_id,
        )
        resolved = {**cfg.to_dict(), "algorithm": algorithm_config_dict(cfg.algorithm)}
        self.resolved = mask_secrets(resolved)  # params and trainer_state.json never hold a password (harness.secrets)
        if not self.is_main:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, self.output_dir / "config.yaml")
        if resume_dir:
            self._trim_after_resume(resume_dir)
        if self.tracker.new_run:
            auto = {"auto_reason": self.engine.auto_reason} if getattr(self.engine, "auto_reason", None) else {}
            self.tracker.log_params(self.resolved)
            self.tracker.log_params({"engine": {"resolved": self.engine_name, **auto}})
            self.tracker.set_tags(
                {
                    "algorithm": cfg.algorithm["name"],
                    "model": cfg.model.name,
                    "seed": cfg.train.seed,
                    "train_set": cfg.data.train,
                    "reward": cfg.reward.kind,  # a control run (random, format_only) is told apart from the verifier's
                    "engine": self.engine_name,
                    "engine.requested": g.engine,
                    "num_processes": acc.num_processes,
                    "torch": torch.__version__,
                }
            )
            self.tracker.log_artifact(self.output_dir / "config.yaml")

    # ------------------------------------------------------------------------------------------
    # Progress and budget (harness.budget holds the rules)
    @property
    def step(self) -> int:
        return self.state.step

    @property
    def policy_version(self) -> int:
        return self.state.policy_version

    @property
    def totals(self) -> dict[str, float]:
        return self.state.totals

    @property
    def eval_history(self) -> list[dict[str, Any]]:
        return self.state.eval_history

    @property
    def total_steps(self) -> int:
        return self.budget.total_steps

    def spent(self) -> float:
        """How much of the budget is used, in the budget's unit."""
        return self.budget.spent(self.state.step, self.state.totals)

    def budget_fraction(self) -> float:
        return self.budget.fraction(self.state.step, self.state.totals)

    def budget_done(self) -> bool:
        return self.budget.done(self.state.step, self.state.totals)

    def encode(self, problem: str) -> tuple[list[int], bool]:
        return encode_prompt(
            self.tokenizer,
            problem,
            self.cfg.data.max_prompt_length,
            self.spec.chat_template_kwargs,
            system_prompt=self.system_prompt,
            suffix=self.prompt_suffix,
        )

    def eval_settings(self) -> EvalSettings:
        return settings_from_config(self.cfg, model=self._policy(), spec=self.spec)

    def evaluate(self, tag: str) -> dict[str, Any]:
        """Evaluate the current policy on the configured benchmarks (main process), log it, keep it."""
        settings = self.eval_settings()
        res = evaluate(
            self.engine,
            self.tokenizer,
            self.cfg.eval.benchmarks,
            settings,
            self.scorer,
            lambda p: encode_prompt(
                self.tokenizer,
                p,
                settings.max_prompt_length,
                self.spec.chat_template_kwargs,
                system_prompt=self.system_prompt,
                suffix=self.prompt_suffix,
            ),
            progress=self.progress,
            cache=self._start_eval_cache() if tag == "before" and self.policy_version == 0 else None,
        )
        fraction = self.budget_fraction()
        summary = {
            "tag": tag,
            "step": self.step,
            "budget_fraction": fraction,
            "spent": self.spent(),
            "macro_accuracy": res["macro_accuracy"],
            "benchmarks": res["benchmarks"],
            "totals": dict(self.totals),
        }
        self.eval_history.append(summary)
        self.tracker.log_metrics({**flat_metrics(res), "eval/budget_fraction": fraction}, step=self.step)
        for cb in self.eval_callbacks:
            cb(self, tag, res)
        self.tracker.log_text(
            "\n".join(json.dumps(s) for s in res["samples"]) + "\n", f"eval/{tag}-step{self.step}.jsonl"
        )
        return res

    def _evaluate_on_main(self, tag: str) -> None:
        """:meth:`evaluate` on the main process; every process calls this (under FSDP the in-process engines sample
        from the weights gathered for it)."""
        with self._gathered(getattr(self.engine, "uses_training_model", False)):
            if self.is_main:
                self.evaluate(tag)

    def _start_eval_cache(self):
        """Completions of the untrained model, shared by every run that starts from the same weights with the same engine:
        the members of a matrix all evaluate the same starting model with the same prompts, settings and seed, so only the
        first one generates (the cache key also holds the prompt ids and sampling settings; ``harness eval`` reuses the same way)."""
        try:
            key = model_key(f"{self.cfg.model.name}|{self.engine_name}|{self.cfg.model.dtype}", resolve_path(self.spec))
        except Exception:  # a hub id that is not local: no file fingerprint, no sharing
            return None
        return CompletionCache(cache_root() / "eval-completions", key)

    # ------------------------------------------------------------------------------------------
    def rollout(self, indices: list[int]) -> tuple[list[RolloutGroup], dict[str, float]]:
        """Generate and score G completions for each prompt ``indices`` names; returns the groups and their metrics."""
        sampled = self._sample(indices)
        self._last_texts = sampled.texts
        return sampled.groups, self._rollout_metrics([sampled])

    def _sample(self, indices: list[int], round_index: int = 0) -> "_Sampled":
        """One rollout round of a step: generate, decode, score; the reward follows ``reward.kind``."""
        g, t, rw = self.cfg.generation, self.cfg.train, self.cfg.reward
        rows = [self.train_rows[i] for i in indices]
        encoded = [self.encode(r["problem"]) for r in rows]
        prompts = [e[0] for e in encoded]
        t0 = time.perf_counter()
        outs = self.engine.generate(
            prompts,
            SamplingParams(
                n=g.num_generations,
                temperature=g.temperature,
                top_k=g.top_k,
                top_p=g.top_p,
                max_new_tokens=g.max_completion_length,
                return_logprobs=self.want_engine_logprobs,
            ),
        )
        t_gen = time.perf_counter() - t0
        t0 = time.perf_counter()
        texts = [self.tokenizer.decode(c.token_ids, skip_special_tokens=True) for o in outs for c in o]
        golds = [r["answer"] for r in rows for _ in range(g.num_generations)]
        scored = self.scorer.score_batch(texts, golds)
        acc = np.array([s.reward for s in scored], dtype=np.float64)
        fmt = np.array([1.0 if has_boxed_answer(x) else 0.0 for x in texts])
        rewards = training_rewards(
            rw.kind,
            acc,
            fmt,
            format_weight=t.format_reward_weight,
            random_p=rw.random_p,
            key=(t.seed, self.accelerator.process_index, self.step, round_index),
        )
        t_score = time.perf_counter() - t0
        G = g.num_generations
        # The policy version of a group is the one the engine reports for its samples (the oldest, should they differ).
        versions = [min(int(c.policy_version) for c in o) for o in outs]
        groups = [
            RolloutGroup(
                prompt_id=r["id"],
                prompt_ids=p,
                completion_ids=[c.token_ids for c in o],
                rewards=rewards[i * G : (i + 1) * G],
                policy_version=versions[i],
                engine_logprobs=[c.logprobs for c in o] if any(c.logprobs is not None for c in o) else None,
            )
            for i, (r, p, o) in enumerate(zip(rows, prompts, outs))
        ]
        return _Sampled(
            groups=groups,
            texts=texts,
            rewards=rewards,
            accuracy=acc,
            format=fmt,
            lengths=np.array([len(c.token_ids) for o in outs for c in o]),
            truncated=np.array([c.finish_reason == "length" for o in outs for c in o]),
            prompt_truncated=[e[1] for e in encoded],
            prompt_tokens=sum(len(p) for p in prompts),
            versions=versions,
            t_generate=t_gen,
            t_score=t_score,
        )

    def _rollout_metrics(self, rounds: list["_Sampled"]) -> dict[str, float]:
        """Metrics of everything generated in a step (every round, kept or not): rewards, lengths, tokens, time."""
        rewards, acc, fmt, lengths, truncated = (
            np.concatenate([getattr(r, name) for r in rounds])
            for name in ("rewards", "accuracy", "format", "lengths", "truncated")
        )
        return {
            "reward/mean": float(rewards.mean()),
            "reward/std": float(rewards.std()),
            "reward/accuracy": float(acc.mean()),
            "reward/format": float(fmt.mean()),
            "completion/mean_length": float(lengths.mean()),
            "completion/max_length": float(lengths.max()),
            "completion/min_length": float(lengths.min()),
            "completion/truncated_frac": float(truncated.mean()),
            "prompt/truncated_frac": float(np.mean([x for r in rounds for x in r.prompt_truncated])),
            "tokens/generated": float(lengths.sum()),
            "tokens/prompt": float(sum(r.prompt_tokens for r in rounds)),
            "time/generate_s": sum(r.t_generate for r in rounds),
            "time/score_s": sum(r.t_score for r in rounds),
            "engine/policy_lag_max": float(
                self.policy_version - min(v for r in rounds for v in r.versions)
            ),  # 0: every sample came from the current weights
        }

    def _chosen(self, offered: list[int]) -> list[int]:
        """The offered prompts the algorithm chooses to generate (``choose_prompts``), in its order."""
        ids = [self.train_rows[i]["id"] for i in offered]
        chosen = check_choice(self.algorithm.choose_prompts(ids, self.step), len(offered), self.algorithm.name)
        return [offered[i] for i in chosen]

    def _revisits(self, per_step: int) -> list[int]:
        """Earlier prompts of this process the algorithm generates again this step (``revisit_prompts``), as rows."""
        asked = self.algorithm.revisit_prompts(self.step, per_step)
        if not asked:
            return []
        if self._owned_rows is None:
            self._owned_rows = {str(self.train_rows[int(i)]["id"]): int(i) for i in self.sampler.shard}
        return check_revisits(asked, self._owned_rows, per_step, self.algorithm.name)

    def collect_groups(self) -> tuple[list[RolloutGroup], list[RolloutGroup], dict[str, float]]:
        """The step's rollouts: the sampler's prompts (those the algorithm's ``choose_prompts`` keeps, in its order), then
        more while the algorithm asks (``select_groups``).

        Returns (every group generated, the groups to train on, metrics). The metrics cover everything generated, kept
        or dropped (``tokens/generated``, hence FLOPs and budgets, count discarded samples too), plus how many groups
        were generated, kept and dropped and the extra rounds. An algorithm that keeps every group of one round (GRPO,
        RePO) gets exactly one rollout of ``train.prompts_per_step`` prompts."""
        per_step = self.cfg.train.prompts_per_step
        revisits = self._revisits(per_step)
        first = self._chosen(self.sampler.next_indices(per_step - len(revisits))) + revisits
        rounds = [self._sample(first)]
        generated = list(rounds[0].groups)
        while True:
            sel = check_selection(
                self.algorithm.select_groups(generated, rounds=len(rounds) - 1, prompts_per_step=per_step),
                len(generated),
                self.algorithm.name,
            )
            if not sel.more_prompts:
                break
            more = self._chosen(self.sampler.next_indices(sel.more_prompts))
            rounds.append(self._sample(more, round_index=len(rounds)))
            generated.extend(rounds[-1].groups)
        if sel.warning and self.is_main:
            print(f"warning: {self.run_name}: step {self.step + 1}: {sel.warning}", file=sys.stderr, flush=True)
        self._last_texts = [x for r in rounds for x in r.texts]
        metrics = self._rollout_metrics(rounds)
        metrics.update(
            {
                "groups/generated": float(len(generated)),
                "groups/kept": float(len(sel.keep)),
                "groups/dropped": float(len(generated) - len(sel.keep)),
                "rollout/extra_rounds": float(len(rounds) - 1),
                **sel.metrics,
            }
        )
        return generated, [generated[i] for i in sel.keep], metrics

    def _forward_logprobs(
        self, model, prompts: list[list[int]], completions: list[np.ndarray]
    ) -> tuple[torch.Tensor, Collated]:
        """[B, C] log-probs of the completions (0 at padding) and the collated batch. ``model`` may be the DDP-wrapped
        policy (gradient sync intact) or an unwrapped model; chunked over tokens unless ``train.logprob_chunk_size=0``
        (or the architecture is not supported: :mod:`harness.logprobs`), so no [B, C, V] logits are held."""
        col = collate(prompts, completions, self.tokenizer.pad_token_id)
        dev = self.accelerator.device
        chunk = self.cfg.train.logprob_chunk_size
        checkpointed = self.cfg.model.gradient_checkpointing and model.training  # no KV cache inside a checkpoint
        if (
            self.cfg.train.share_prompts
            and chunk > 0
            and not checkpointed
            and wrapped_chunked_unsupported_reason(model) is None
        ):
            ids, mask, prompt_of = distinct_prompts(prompts, self.tokenizer.pad_token_id)
            logps = shared_prompt_logprobs(
                model,
                ids.to(dev),
                mask.to(dev),
                prompt_of.to(dev),
                col.completion_ids.to(dev),
                col.completion_mask.to(dev),
                self.cfg.generation.temperature,
                chunk,
            )
            return logps, col
        logps = completion_logprobs(
            model,
            col.input_ids.to(dev),
            col.attention_mask.to(dev),
            col.position_ids.to(dev),
            col.completion_ids.to(dev),
            col.completion_mask.to(dev),
            self.cfg.generation.temperature,
            self.cfg.train.logprob_chunk_size,
        )
        return logps, col

    def train_on(
        self, batch: TrainBatch, engine_lp: list[np.ndarray | None] | None = None
    ) -> tuple[dict[str, float], list[np.ndarray]]:
        """num_iterations optimizer steps on ``batch``; returns metrics and the behaviour log-probs per row.

        Rows that cannot carry gradient (zero advantage, no KL) are not run at all; rows the algorithm
        still needs log-probs for get a forward pass without autograd - unless
        ``generation.behaviour_logprobs=engine`` and the engine returned log-probs for them (``engine_lp``,
        per row, None where absent), which are then used instead. The returned behaviour log-probs are
        the trainer's pre-step ones, or with ``engine`` the engine's wherever it returned them.
        """
        g = self.cfg.generation
        engine_lp = engine_lp if engine_lp is not None else [None] * len(batch)
        use_engine = g.behaviour_logprobs == "engine"
        R = len(batch)
        grad_mask = np.asarray(self.algorithm.rows_with_gradient(batch), dtype=bool)
        if not grad_mask.any():
            # Keep one (zero-gradient) row: every process must run backward for DDP, and the optimizer
            # must see zero gradients (not None) so its step matches an unskipped run exactly.
            grad_mask[0] = True
        grad_rows = np.nonzero(grad_mask)[0]
        lp_rows = np.nonzero(np.asarray(self.algorithm.rows_needing_logprobs(batch), dtype=bool) & ~grad_mask)[0]
        if use_engine:  # the engine already gave these rows' behaviour log-probs: no extra pass
            lp_rows = np.asarray([r for r in lp_rows if engine_lp[r] is None], dtype=np.int64)
        pre_step: list[np.ndarray | None] = [None] * R
        t0 = time.perf_counter()
        lp_tokens = self._behaviour_logprobs(batch, lp_rows, pre_step)
        t_lp = time.perf_counter() - t0
        sums, timing, tokens = self._train_iterations(batch, self._plan(batch, grad_rows), pre_step, engine_lp)
        out = sums.values(
            per_iteration=("loss/",), iterations=self.algorithm.num_iterations
        )  # losses are already normalised per iteration
        out.update(
            {
                "train/grad_norm": timing["grad_norm"],
                "train/lr": self.optimizer.param_groups[0]["lr"],
                "time/train_s": timing["train"],
                "time/ref_s": timing["ref"],
                "time/logprob_s": t_lp,
                "tokens/trained": float(tokens["trained"]),
                "tokens/logprob": float(lp_tokens),
                "tokens/ref": float(tokens["ref"]),
                "samples/trained_frac": len(grad_rows) / max(R, 1),
            }
        )
        # Engine-trainer gap on the trained rows: the engine's behaviour log-probs vs the trainer's pre-step ones.
        gap_rows = [r for r in grad_rows if engine_lp[r] is not None and pre_step[r] is not None]
        out.update(logprob_gap_metrics([pre_step[r] for r in gap_rows], [engine_lp[r] for r in gap_rows]))
        if g.tis_cap is not None:
            n = sums.denominator("tis/weight_mean")  # tokens that had engine log-probs; without any, every weight was 1
            raw_max = out.pop("tis/raw_ratio/max", 1.0)
            out.update(
                {
                    "tis/weight_mean": out.get("tis/weight_mean", 1.0) if n else 1.0,
                    "tis/truncated_frac": out.get("tis/truncated_frac", 0.0) if n else 0.0,
                    "tis/raw_ratio_max": raw_max if n else 1.0,
                    "tis/tokens": n,
                }
            )
        behaviour = [engine_lp[r] if use_engine and engine_lp[r] is not None else pre_step[r] for r in range(R)]
        return out, [p if p is not None else np.zeros(0, np.float32) for p in behaviour]

    def _plan(self, batch: TrainBatch, rows: np.ndarray) -> list[np.ndarray]:
        """Micro-batches of ``rows``: at most train.micro_batch_size rows and train.max_tokens_per_microbatch padded tokens
        each. The loss is a fixed weighted sum over rows (row_weights / token_sum), so the grouping changes only rounding."""
        t = self.cfg.train
        return plan_microbatches(
            rows,
            [len(p) for p in batch.prompt_ids],
            [len(c) for c in batch.completion_ids],
            t.micro_batch_size,
            t.max_tokens_per_microbatch,
        )

    def _behaviour_logprobs(self, batch: TrainBatch, rows: np.ndarray, out: list[np.ndarray | None]) -> int:
        """Pre-step log-probs of ``rows`` (rows without gradient whose log-probs the algorithm keeps) into ``out``, without
        autograd; returns the tokens processed."""
        tokens = 0
        chunks = self._plan(batch, rows)
        n_real = len(chunks)
        if self.fsdp:  # a forward of the sharded model is a collective: every process runs as many (repeats of row 0)
            chunks += [np.zeros(1, np.int64)] * (self._max_over_processes(n_real) - n_real)
        if not chunks:
            return tokens
        with torch.no_grad():
            model = self._policy()
            for ci, idx in enumerate(chunks):
                logps, col = self._forward_logprobs(
                    model, [batch.prompt_ids[i] for i in idx], [batch.completion_ids[i] for i in idx]
                )
                if ci >= n_real:
                    continue
                tokens += int(col.attention_mask.sum())
                for j, row in enumerate(idx):
                    out[row] = logps[j, : len(batch.completion_ids[row])].float().cpu().numpy()
        return tokens

    def _train_iterations(
        self,
        batch: TrainBatch,
        chunks: list[np.ndarray],
        pre_step: list[np.ndarray | None],
        engine_lp: list[np.ndarray | None],
    ) -> tuple[MetricSums, dict[str, float], dict[str, int]]:
        """The algorithm's loss over every micro-batch, ``num_iterations`` times, each followed by an optimizer step.

        The first iteration's forward gives the pre-step log-probs of the trained rows (into ``pre_step``); reference
        log-probs and TIS weights are computed once per micro-batch and kept for the later iterations."""
        sums = MetricSums()
        ref_cache: dict[int, tuple[torch.Tensor, int]] = {}
        tis_cache: dict[int, torch.Tensor | None] = {}
        timing = {"train": 0.0, "ref": 0.0, "grad_norm": float("nan")}
        tokens = {"trained": 0, "ref": 0}
        n_real = len(chunks)
        if self.fsdp:  # every forward/backward is a collective: all processes run as many micro-batches
            chunks = chunks + [chunks[-1]] * (self._max_over_processes(len(chunks)) - len(chunks))
        with self._train_mode():
            for it in range(self.algorithm.num_iterations):
                for ci, idx in enumerate(chunks):
                    dummy = ci >= n_real  # a repeat of the last micro-batch with zero loss (FSDP padding)
                    sub = batch.select(idx)
                    if self.ref_model is not None and ci not in ref_cache:
                        t0 = time.perf_counter()
                        with torch.no_grad():
                            ref_lp, ref_col = self._forward_logprobs(self.ref_model, sub.prompt_ids, sub.completion_ids)
                        ref_cache[ci] = (ref_lp, int(ref_col.attention_mask.sum()))
                        tokens["ref"] += ref_cache[ci][1]
                        timing["ref"] += time.perf_counter() - t0
                    t0 = time.perf_counter()
                    sync = nullcontext() if ci == len(chunks) - 1 else self.accelerator.no_sync(self.model)
                    with sync:
                        ref = ref_cache[ci][0] if ci in ref_cache else None
                        inputs, trained = self._loss_inputs(
                            sub, idx, first_iteration=it == 0, pre_step=pre_step, ref=ref
                        )
                        if self.cfg.generation.tis_cap is not None:
                            if ci not in tis_cache:  # weights from the pre-step log-probs: fixed for all iterations
                                rows = [engine_lp[row] for row in idx]
                                tis_cache[ci], tis_metrics = self._tis_weights(inputs.old_logprobs, rows, inputs.mask)
                                sums.add(tis_metrics)
                            inputs.is_weights = tis_cache[ci]
                        loss, metrics = self.algorithm.loss(inputs)
                        self.accelerator.backward(loss * 0.0 if dummy else loss)
                    if dummy:
                        continue
                    tokens["trained"] += trained
                    sums.add(metrics)
                    timing["train"] += time.perf_counter() - t0
                t0 = time.perf_counter()
                timing["grad_norm"] = self._optimizer_step()
                timing["train"] += time.perf_counter() - t0
        return sums, timing, tokens

    @contextmanager
    def _train_mode(self):
        """The policy in training mode for the gradient passes (gradient checkpointing only recomputes there; dropout
        is 0 everywhere, disable_dropout), back in eval mode for sampling, evaluation and no-grad log-probs."""
        self.model.train()
        try:
            yield
        finally:
            self.model.eval()

    def _loss_inputs(
        self,
        sub: TrainBatch,
        idx: np.ndarray,
        *,
        first_iteration: bool,
        pre_step: list[np.ndarray | None],
        ref: torch.Tensor | None,
    ) -> tuple[LossInputs, int]:
        """The policy's forward on a micro-batch, assembled with everything else the loss needs; returns the inputs and
        the tokens trained. Old log-probs: stored behaviour log-probs where a row has them, else the pre-step ones."""
        dev = self.accelerator.device
        logps, col = self._forward_logprobs(self.model, sub.prompt_ids, sub.completion_ids)
        if first_iteration:
            for j, row in enumerate(idx):
                pre_step[row] = logps[j, : len(sub.completion_ids[j])].detach().float().cpu().numpy()
        old = pad_rows(
            [sub.old_logprobs[j] if sub.old_logprobs[j] is not None else pre_step[row] for j, row in enumerate(idx)],
            col.completion_ids.shape[1],
        ).to(dev)
        inputs = LossInputs(
            logprobs=logps,
            old_logprobs=old,
            ref_logprobs=ref,
            mask=col.completion_mask.to(dev),
            advantages=torch.as_tensor(sub.advantages, dtype=torch.float32, device=dev),
            row_weights=torch.as_tensor(sub.row_weights, dtype=torch.float32, device=dev),
            token_sum=torch.as_tensor(sub.token_sum, device=dev),
            source=torch.as_tensor(sub.source, device=dev),
            is_weights=None,  # truncated-IS weights, set by the caller when generation.tis_cap is on
            kl_weights=None
            if sub.kl_weights is None
            else torch.as_tensor(sub.kl_weights, dtype=torch.float32, device=dev),
        )
        return inputs, int(col.attention_mask.sum())

    def _optimizer_step(self) -> float:
        """Clip gradients, set the LR for the budget fraction spent, step, and count a new policy version; returns the
        gradient norm (NaN without clipping)."""
        t = self.cfg.train
        grad_norm = float("nan")
        if t.max_grad_norm > 0 and self.fsdp:
            from harness.sharding import full_tensor

            grad_norm = float(full_tensor(torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.max_grad_norm)))
        elif t.max_grad_norm > 0:
            grad_norm = float(self.accelerator.clip_grad_norm_(self.model.parameters(), t.max_grad_norm))
        lr = t.learning_rate * lr_factor(self.budget_fraction(), t.warmup_ratio, t.lr_scheduler)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.policy_version += 1
        return grad_norm

    def _tis_weights(
        self, old: torch.Tensor, engine_rows: list[np.ndarray | None], mask: torch.Tensor
    ) -> tuple[torch.Tensor | None, dict[str, tuple[float, float]]]:
        """Truncated-IS weights [B, T] for a micro-batch: min(exp(old - engine), cap) on rows with engine log-probs, 1 elsewhere,
        and their statistics as (numerator, denominator) metrics that pool over micro-batches by token count.

        ``old`` holds the trainer's pre-step log-probs for rows sampled this step (and stored behaviour log-probs
        for the others, which have no engine log-probs and keep weight 1).
        """
        has = torch.as_tensor([e is not None for e in engine_rows], dtype=torch.bool, device=old.device)
        if not bool(has.any()):
            return None, {}
        eng = pad_rows([e if e is not None else np.zeros(0, np.float32) for e in engine_rows], old.shape[1]).to(
            old.device
        )
        tmask = mask * has.unsqueeze(1)
        w, st = truncated_is_weights(old, eng, tmask, self.cfg.generation.tis_cap)
        w = torch.where(has.unsqueeze(1), w, torch.ones_like(w))
        n = float(tmask.sum())
        return w, {
            "tis/weight_mean": (st["tis/weight_mean"] * n, n),
            "tis/truncated_frac": (st["tis/truncated_frac"] * n, n),
            "tis/raw_ratio/max": (st["tis/raw_ratio_max"], float("nan")),
        }  # pooled as a max (renamed back in train_on)

    def train_step(self) -> StepRecord:
        rss_reset = reset_peak_rss()  # memory/step_peak_rss_gb: this step's own peak, not the process's whole history
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        t_step = time.perf_counter()
        with self._gathered(getattr(self.engine, "uses_training_model", False)):
            generated, groups, metrics = self.collect_groups()
        self._check_flat_rewards(generated, metrics)
        t0 = time.perf_counter()
        batch = self.algorithm.build_batch(groups, self.step)
        metrics["time/build_batch_s"] = time.perf_counter() - t0
        metrics.update(batch.metrics)
        train_metrics, behaviour = self.train_on(batch, row_engine_logprobs(batch, groups))
        metrics.update(train_metrics)
        t0 = time.perf_counter()
        metrics.update(self.algorithm.after_step(groups, batch, behaviour, self.step))
        metrics["time/after_step_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        self.engine.sync_weights(self._policy(), self.policy_version)
        metrics["time/weight_sync_s"] = (
            time.perf_counter() - t0
        )  # no FLOPs counted: a copy (+ the probe check's short forward)
        metrics.update(getattr(self.engine, "last_sync_metrics", None) or {})
        self.state.step += 1
        metrics["time/step_s"] = time.perf_counter() - t_step
        peak = peak_rss_bytes()
        if peak is not None:
            metrics["memory/step_peak_rss_gb/max" if rss_reset else "memory/peak_rss_gb/max"] = peak / 1e9
        if torch.cuda.is_available():  # torch's tensors on this process's GPU (not a vLLM engine's own pool)
            metrics["memory/step_peak_gpu_gb/max"] = torch.cuda.max_memory_allocated() / 1e9
        metrics.update(step_flops(self.num_params, self.cfg.generation.num_generations, metrics))
        metrics = self._reduce(metrics)
        self._add_totals(metrics)
        metrics["train/epoch"] = self.sampler.epoch + self.sampler.position / max(len(self.sampler.shard), 1)
        metrics["budget/fraction"] = self.budget_fraction()
        record = StepRecord(
            self.step,
            [g.prompt_id for g in groups],
            [[c.tolist() for c in g.completion_ids] for g in groups],
            [g.rewards.tolist() for g in groups],
            metrics,
        )
        self.tracker.log_metrics(metrics, step=self.step)
        if (
            self.is_main
            and self.cfg.train.log_completions_every
            and self.step % self.cfg.train.log_completions_every == 0
        ):
            self._log_completions(generated)
        for cb in self.callbacks:
            cb(record)
        return record

    def _add_totals(self, metrics: dict[str, float]) -> None:
        """Running totals of the step's counts (what budgets are measured by), logged with the step as ``<name>_total``."""
        totals = self.state.totals
        for k in TOTALED:
            if k in metrics:
                totals[k] = totals.get(k, 0.0) + metrics[k]
        metrics.update({total_name(k): v for k, v in totals.items()})

    def _check_flat_rewards(self, groups: list[RolloutGroup], metrics: dict[str, float]) -> None:
        """Count steps in a row whose sampled groups all had equal rewards (GRPO-style advantages then give no gradient)
        and warn once when ``train.warn_flat_rewards_steps`` is reached, with what usually causes it."""
        flat = [float(np.ptp(g.rewards)) == 0.0 for g in groups]
        metrics["groups/flat_reward_frac"] = float(np.mean(flat)) if flat else 0.0
        self._flat_steps = self._flat_steps + 1 if flat and all(flat) else 0
        n = self.cfg.train.warn_flat_rewards_steps
        if n and self._flat_steps == n and self.is_main:
            texts = getattr(self, "_last_texts", [])
            print(
                f"warning: {self.run_name}: every group's rewards were equal for {n} steps in a row (reward/mean {metrics['reward/mean']:.3f}, "
                f"completions truncated {metrics['completion/truncated_frac']:.0%}): no policy gradient. Likely causes: "
                + (
                    "the model never produces an answer the scorer can read (look at completions.jsonl; ask for \\boxed{} with "
                    "data.system_prompt / data.prompt_suffix, or set data.answer_fallback for models that do not box), completions cut "
                    "off before the answer (raise generation.max_completion_length), or a task too hard for the model"
                    if metrics["reward/mean"] <= 0
                    else "a task the model already solves every time (use harder prompts)"
                )
                + (f". Last completion: {texts[-1][:160]!r}" if texts else ""),
                file=sys.stderr,
                flush=True,
            )

    def _max_over_processes(self, n: int) -> int:
        t = torch.tensor([n], device=self.accelerator.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return int(t.item())

    def _reduce(self, metrics: dict[str, float]) -> dict[str, float]:
        if self.accelerator.num_processes == 1:
            return metrics
        return reduce_metrics(metrics, self.accelerator.device, summed=self.algorithm.summed_metrics)

    def _log_completions(self, groups: list[RolloutGroup]) -> None:
        G = self.cfg.generation.num_generations
        lines = []
        for gi, g in enumerate(groups):
            for j in range(len(g.completion_ids)):
                lines.append(
                    json.dumps(
                        {
                            "step": self.step,
                            "prompt_id": g.prompt_id,
                            "completion": self._last_texts[gi * G + j],
                            "reward": float(g.rewards[j]),
                        }
                    )
                )
        with self._completions_log.open("a") as fh:
            fh.write("\n".join(lines) + "\n")

    # ------------------------------------------------------------------------------------------
    def save_checkpoint(self) -> Path | None:
        acc = self.accelerator
        acc.wait_for_everyone()
        staging = self.output_dir / f".tmp-{ckpt.CKPT_PREFIX}{self.step}"
        weights = opt_state = None
        if self.fsdp:  # gathered to the main process's CPU memory, tensor by tensor (collectives)
            from harness.sharding import full_model_state, gathered_optimizer_state

            weights = full_model_state(self.model)
            opt_state = gathered_optimizer_state(self.model, self.optimizer)
        if self.is_main:
            staging = ckpt.staging_dir(self.output_dir, self.step)
            self._policy().save_pretrained(staging / "model", state_dict=weights, safe_serialization=True)
            self.tokenizer.save_pretrained(staging / "model")
            ckpt.save_optimizer(
                opt_state
                if self.fsdp
                else (self.optimizer.optimizer if hasattr(self.optimizer, "optimizer") else self.optimizer),
                staging,
            )
            self.state.mlflow_run_id = self.tracker.run_id
            self.state.config, self.state.num_processes, self.state.budget = (
                self.resolved,
                acc.num_processes,
                [self.budget.unit, self.budget.value],
            )
            self.state.write(staging)
        acc.wait_for_everyone()
        ckpt.save_rank_state(
            staging, acc.process_index, self.algorithm.state_dict(), {"sampler": self.sampler.state_dict()}
        )
        acc.wait_for_everyone()
        final = None
        if self.is_main:
            final = ckpt.finalize(self.output_dir, staging, self.step, self.cfg.train.keep_checkpoints)
        acc.wait_for_everyone()
        return final

    def fit(self) -> dict[str, Any]:
        """Train until the budget is spent, with the configured evaluations and checkpoints; returns a summary."""
        cfg = self.cfg
        summary: dict[str, Any] = {
            "run_id": self.tracker.run_id,
            "run_name": self.run_name,
            "output_dir": str(self.output_dir),
        }
        status = "FAILED"
        try:
            if self.step == 0 and cfg.eval.before_training and cfg.eval.benchmarks:
                self._evaluate_on_main("before")
            self._train_loop()
            if cfg.eval.after_training and cfg.eval.benchmarks:
                self._evaluate_on_main("after")
            self.save_checkpoint()
            status = "FINISHED"
        finally:
            summary.update(self._summary(status))
            try:
                if self.is_main:
                    atomic_write_json(self.output_dir / "summary.json", summary)
                    self.tracker.log_artifact(self.output_dir / "summary.json")
                    if self._completions_log.exists():
                        self.tracker.log_artifact(self._completions_log)
            finally:  # whatever failed above, the run is not left RUNNING and the engine not left open
                try:
                    self.tracker.finish(status)
                finally:
                    self.close()
        return summary

    def _train_loop(self) -> None:
        """Steps until the budget is spent, each followed by the evaluations and checkpoint that fall due."""
        bar = self._progress_bar()
        by_steps = self.budget.unit == "steps"
        while not self.budget_done():
            rec = self.train_step()
            bar.update(1 if by_steps else 100 * self.budget_fraction() - bar.n)
            bar.set_postfix(
                reward=f"{rec.metrics['reward/mean']:.3f}",
                eff=f"{rec.metrics.get('effective/step', 0):.2f}",
                budget=f"{self.budget_fraction():.0%}",
                step=self.step,
            )
            if not self.budget_done():
                self._evaluate_and_save_if_due()
        bar.close()

    def _progress_bar(self):
        """Step budgets count steps; other units show the percentage of the budget spent (steps unknown in advance)."""
        from tqdm.auto import tqdm

        by_steps = self.budget.unit == "steps"
        fmt = (
            "{l_bar}{bar}| {n:.0f}/{total:.0f}% of "
            + f"{self.budget.unit} budget [{{elapsed}}<{{remaining}}{{postfix}}]"
        )
        return tqdm(
            total=self.total_steps if by_steps else 100,
            initial=self.step if by_steps else int(100 * self.budget_fraction()),
            desc=f"train {self.run_name}",
            unit="step" if by_steps else "%",
            disable=not (self.progress and self.is_main),
            dynamic_ncols=True,
            bar_format=None if by_steps else fmt,
        )

    def _evaluate_and_save_if_due(self) -> None:
        """Mid-run evaluations (at budget fractions, else every ``eval.every_steps``) and checkpoints (``train.save_every``)."""
        cfg = self.cfg
        fraction = self.budget_fraction()
        due = [f for f in cfg.eval.at_budget_fractions if f not in self.state.fractions_done and fraction >= f]
        evaluates = bool(cfg.eval.benchmarks)
        if due:
            self.state.fractions_done.extend(due)
            if evaluates:
                self._evaluate_on_main(f"budget{due[-1]:.2f}")
        elif cfg.eval.every_steps and self.step % cfg.eval.every_steps == 0 and evaluates:
            self._evaluate_on_main("during")
        if cfg.train.save_every and self.step % cfg.train.save_every == 0:
            self.save_checkpoint()

    def _summary(self, status: str) -> dict[str, Any]:
        return {
            "steps": self.step,
            "totals": dict(self.totals),
            "evals": self.eval_history,
            "budget": {"unit": self.budget.unit, "value": self.budget.value, "spent": self.spent()},
            "num_params": self.num_params,
            "engine": self.engine_name,
            "status": status,
        }

    def close(self) -> None:
        """Shut down the rollout engine if this trainer started it (a vLLM engine holds memory, a server a process)."""
        if self._owns_engine and self.engine is not None:
            self.engine.close()
            self.engine = None
