"""A synthetic MLflow store with the layout `harness run` / `harness sweep` write (for tests and demos).

    python -m reports.synthetic /tmp/synthetic-store      # then:
    harness report --tracking-uri sqlite:////tmp/synthetic-store/mlflow.db --experiment synthetic

Layout (the producer contract the report reads):

* an experiment parent run (tags ``harness.role=experiment``, ``harness.experiment``) and one child per
  (algorithm variant, model, seed) (tags ``mlflow.parentRunId``, ``harness.role=member``, ``algorithm``,
  ``model``, ``seed``, ``engine``, ``torch``, ``num_processes``, ``harness.budget_unit``,
  ``harness.budget_value``; params = the flattened resolved config);
* per-step metrics (``reward/*``, ``groups/zero_std_frac``, ``effective/*``, ``time/*``, ``tokens/*``,
  ``flops/*``, ``replay/*`` for RePO, ``budget/fraction``);
* evaluations at budget fractions 0, 0.25, 0.5, 0.75, 1 logged at their step (``eval/<bench>/accuracy``,
  ``..._ci_low/high``, ``pass_at_<k>``, ``num_prompts``, ``eval/macro_accuracy``, ``eval/budget_fraction``),
  artifacts ``summary.json``, ``config.yaml`` and ``eval/<tag>-step<N>.jsonl`` (per-sample records);
* a sweep parent (``harness.role=sweep``, ``harness.sweep``) with trial children (``harness.role=trial``,
  ``optuna.trial_number``) and artifacts ``sweep/trials.csv``, ``sweep/best_trial.json``,
  ``sweep/importances.json`` (as `harness sweep` logs them).

Every number is drawn from a seeded generator, and logged eval accuracies are computed from the very
per-sample records that are logged, so tests can check the report against the store exactly.
Deliberate defects: one member FAILED part-way (no final evaluation), one member without per-sample
eval artifacts.

``build_family_store`` writes the algorithm family instead (experiment ``family``: grpo, repo:recent_k, dapo,
zv_substitute, prioritized_replay) with the ``reward.kind`` / ``reward.random_p`` params, the per-step prompt-group
counts (``groups/generated``, ``groups/kept``, ``groups/dropped``, ``rollout/extra_rounds``,
``groups/on_policy_nonzero_var``, ``groups/replay_nonzero_var``, ``zv/replaced``; none for prioritized_replay, as a
run from before they were logged) and a random-reward grpo control as a second matrix of the same experiment
(``harness report --experiment family --all-runs`` reports both).
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.metrics import aggregate_benchmark

# Per-step FLOPs per phase (GRPO); RePO trains on G + k rows, so its train/logprob phases cost more.
_FLOPS = {"generate": 6.0e11, "train": 3.0e11, "logprob": 1.0e11, "ref": 0.0}
_TIMES = {
    "generate_s": 1.2,
    "score_s": 0.08,
    "logprob_s": 0.15,
    "ref_s": 0.0,
    "train_s": 0.6,
    "build_batch_s": 0.02,
    "after_step_s": 0.01,
}
_PROFILE = {  # algorithm -> (train-phase multiplier, final accuracy gain, replay hit rate, zero-variance rescue)
    "grpo": (1.0, 0.16, 0.0, 0.0),
    "repo:recent_k": (1.38, 0.22, 0.8, 0.62),
    "repo:highest_k": (1.38, 0.20, 0.75, 0.55),
    "repo:max_variance_k": (1.40, 0.23, 0.78, 0.70),
    "repo:random_k": (1.38, 0.19, 0.76, 0.50),
    "dapo": (1.0, 0.21, 0.0, 0.0),
    "zv_substitute": (1.05, 0.19, 0.0, 0.6),
    "prioritized_replay": (1.25, 0.18, 0.0, 0.0),
}
_GENERATE_MULT = {"dapo": 1.8}  # DAPO generates extra rounds of prompts to replace the groups it drops
_CONTROL_GAIN = 0.03  # the final accuracy gain of a reward-control run (reward.kind=random): much smaller
_GROUPS = 4  # train.prompts_per_step (_config)
FAMILY = ("grpo", "repo:recent_k", "dapo", "zv_substitute", "prioritized_replay")


@dataclass
class SyntheticStore:
    tracking_uri: str
    experiment: str
    experiment_id: str
    parent_run_id: str | None
    members: dict[tuple[str, str, int], str] = field(default_factory=dict)  # (algorithm, model, seed) -> run id
    failed: list[str] = field(default_factory=list)
    without_samples: list[str] = field(default_factory=list)
    sweep_run_id: str | None = None
    trial_run_ids: list[str] = field(default_factory=list)
    control_parent_run_id: str | None = None  # build_family_store: the reward-control matrix's parent run


def _log_metrics(client, run_id: str, rows: list[tuple[str, float, int]]) -> None:
    from mlflow.entities import Metric

    ts = int(time.time() * 1000)
    items = [Metric(k, float(v), ts, int(s)) for k, v, s in rows if v is not None and math.isfinite(float(v))]
    for i in range(0, len(items), 1000):
        client.log_batch(run_id, metrics=items[i : i + 1000])


def _log_text(client, run_id: str, text: str, name: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        parent = str(Path(name).parent)
        client.log_artifact(run_id, str(p), None if parent == "." else parent)


def _params(client, run_id: str, params: dict[str, Any]) -> None:
    from mlflow.entities import Param

    items = [Param(k, str(v)) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i : i + 100])


def _config(
    algo: str,
    model: str,
    seed: int,
    budget: str,
    benchmarks: dict[str, tuple[int, int]],
    run_name: str,
    reward: tuple[str, float] | None = None,
) -> dict[str, Any]:
    """A member's flattened config (its MLflow params); ``reward`` = (reward.kind, reward.random_p), absent from
    runs logged before the reward section (``None``)."""
    name, _, variant = algo.partition(":")
    cfg = {
        "model.name": model,
        "model.dtype": "float32",
        "data.train": "arith",
        "data.train_size": 1024,
        "data.shuffle_seed": 42,
        "generation.engine": "hf",
        "generation.num_generations": 8,
        "generation.max_completion_length": 32,
        "generation.temperature": 1.0,
        "train.seed": seed,
        "train.prompts_per_step": 4,
        "train.learning_rate": 1e-6,
        "train.budget": budget,
        "train.max_steps": -1,
        "train.output_dir": f"runs/{run_name}",
        "eval.benchmarks": str(list(benchmarks)),
        "eval.at_budget_fractions": "[0.25, 0.5, 0.75]",
        "eval.seed": 1234,
        "tracking.experiment_name": "synthetic",
        "tracking.run_name": "None",
        "algorithm.name": algo,
        "algorithm.beta": 0.0,
        "algorithm.epsilon_low": 0.2,
        "algorithm.epsilon_high": 0.2,
    }
    if reward is not None:
        cfg.update({"reward.kind": reward[0], "reward.random_p": reward[1]})
    if name == "repo":
        cfg.update(
            {
                "algorithm.strategy": variant or "highest_k",
                "algorithm.num_replays": 8,
                "algorithm.max_cache_size": 16,
                "algorithm.min_cache_to_replay": 8,
            }
        )
    return cfg


def _eval_samples(
    rng: np.random.Generator, benchmarks: dict[str, tuple[int, int]], difficulty: dict[str, np.ndarray], skill: float
):
    """Per-sample records + per-benchmark metrics computed from them (what benchmarks.evaluation logs)."""
    records, metrics = [], {}
    for b, (n_prompts, n_samples) in benchmarks.items():
        p = 1.0 / (1.0 + np.exp(-(skill - difficulty[b])))
        correct = rng.random((n_prompts, n_samples)) < p[:, None]
        ks = [k for k in (1, 2, 4, 8, 16, 32) if k <= n_samples]
        agg = aggregate_benchmark(correct.astype(float).tolist(), ks=ks, num_resamples=200)
        m = {
            "accuracy": agg["avg@n"]["mean"],
            "accuracy_ci_low": agg["avg@n"]["ci_low"],
            "accuracy_ci_high": agg["avg@n"]["ci_high"],
            "num_prompts": n_prompts,
            "num_samples": n_samples,
            "num_rows": n_prompts,
            "skipped_too_long": 0,
        }
        for k, v in agg["pass@k"].items():
            m[f"pass_at_{k}"] = v["mean"]
        metrics[b] = m
        for i in range(n_prompts):
            for j in range(n_samples):
                ok = bool(correct[i, j])
                records.append(
                    {
                        "benchmark": b,
                        "id": f"{b}-{i}",
                        "sample": j,
                        "problem": f"problem {i}",
                        "gold": str(i),
                        "completion": f"\\boxed{{{i if ok else -1}}}",
                        "extracted": str(i if ok else -1),
                        "reward": 1.0 if ok else 0.0,
                        "correct": ok,
                        "reason": "",
                        "finish_reason": "stop",
                        "completion_tokens": 12,
                        "reused": False,
                    }
                )
    macro = float(np.mean([m["accuracy"] for m in metrics.values()]))
    return records, metrics, macro


def _member(
    client,
    exp_id: str,
    parent_id: str,
    algo: str,
    model: str,
    seed: int,
    *,
    rng: np.random.Generator,
    budget_flops: float,
    benchmarks: dict[str, tuple[int, int]],
    difficulty: dict[str, np.ndarray],
    fail_at: float | None,
    samples: bool,
    experiment: str,
    reward: tuple[str, float] | None = None,
    group_metrics: bool = False,
) -> str:
    """One member run: params, config.yaml, per-step metrics, evaluations, summary.json; returns its run id.
    ``reward``: (reward.kind, reward.random_p) params and tag (a kind other than verifier: a control run, which
    gains little); ``group_metrics``: log the prompt-group counts (``groups/*``, ``rollout/extra_rounds``,
    ``zv/replaced``)."""
    mult, gain, _, _ = _PROFILE.get(algo, _PROFILE["repo:random_k"])
    control = reward is not None and reward[0] != "verifier"
    gain = _CONTROL_GAIN if control else gain
    run_name = f"{algo.replace(':', '-')}{'-' + reward[0] if control else ''}-{model}-s{seed}"
    tags = _member_tags(parent_id, experiment, algo, model, seed, budget_flops)
    if reward is not None:
        tags["reward"] = reward[0]
    run = client.create_run(exp_id, run_name=run_name, tags=tags)
    rid = run.info.run_id
    budget = f"flops:{budget_flops:g}"
    config = _config(algo, model, seed, budget, benchmarks, run_name, reward)
    _params(client, rid, config)
    _log_text(client, rid, "\n".join(f"{k}: {v}" for k, v in config.items()) + "\n", "config.yaml")

    flops_step = {k: v * (mult if k in ("train", "logprob") else 1.0) for k, v in _FLOPS.items()}
    flops_step["generate"] *= _GENERATE_MULT.get(algo, 1.0)
    total_steps = math.ceil(budget_flops / sum(flops_step.values()))
    stop = total_steps if fail_at is None else int(total_steps * fail_at)
    seed_skill = rng.normal(0, 0.08)
    fractions = [0.0, 0.25, 0.5, 0.75, 1.0]
    eval_steps = {round(f * total_steps): f for f in fractions}
    rows: list[tuple[str, float, int]] = []
    totals: dict[str, float] = {}
    evals = []
    cum = {"flops": 0.0}

    def do_eval(step: int, frac: float, tag: str) -> None:
        skill = -0.3 + seed_skill * (frac > 0) + gain * 10 * frac**0.7
        # the starting model and eval seed are shared, so every run's step-0 evaluation is the same draw
        draw = np.random.default_rng(zlib.crc32(model.encode()) + 7) if step == 0 else rng
        recs, metrics, macro = _eval_samples(draw, benchmarks, difficulty, skill)
        for b, m in metrics.items():
            rows.extend((f"eval/{b}/{k}", v, step) for k, v in m.items())
        rows.append(("eval/macro_accuracy", macro, step))
        rows.append(("eval/budget_fraction", frac, step))
        evals.append(
            {"tag": tag, "step": step, "macro_accuracy": macro, "budget_fraction": frac, "benchmarks": metrics}
        )
        if samples:
            _log_text(client, rid, "\n".join(json.dumps(r) for r in recs) + "\n", f"eval/{tag}-step{step}.jsonl")

    do_eval(0, 0.0, "before")
    for step in range(1, stop + 1):
        frac = step / total_steps
        m = _step_metrics(rng, algo, frac, flops_step, budget_flops, totals, cum, group_metrics=group_metrics)
        rows.extend((k, v, step) for k, v in m.items())
        if step in eval_steps and step > 0:
            do_eval(step, eval_steps[step], "after" if step == total_steps else "during")
    _log_metrics(client, rid, rows)
    summary = {"run_id": rid, "run_name": run_name, "steps": stop, "totals": totals, "evals": evals}
    _log_text(client, rid, json.dumps(summary, indent=2), "summary.json")
    client.set_terminated(rid, status="FAILED" if fail_at is not None else "FINISHED")
    return rid


def _member_tags(parent_id: str, experiment: str, algo: str, model: str, seed: int, budget_flops: float) -> dict:
    """A member run's tags, as `harness run` sets them."""
    return {
        "mlflow.parentRunId": parent_id,
        "harness.role": "member",
        "harness.experiment": experiment,
        "algorithm": algo,
        "model": model,
        "seed": str(seed),
        "engine": "hf",
        "torch": "2.13.0+cpu",
        "num_processes": "1",
        "harness.budget_unit": "flops",
        "harness.budget_value": f"{budget_flops:g}",
        "train_set": "arith",
        "hardware": "cpu: synthetic (2 cores)",
        "transformers": "5.17.0",
        "python": "3.11.2",
    }


def _step_metrics(
    rng: np.random.Generator,
    algo: str,
    frac: float,
    flops_step: dict[str, float],
    budget_flops: float,
    totals: dict[str, float],
    cum: dict[str, float],
    *,
    group_metrics: bool = False,
) -> dict[str, float]:
    """One training step's metrics at budget fraction ``frac``; ``totals`` (summary.json's running sums) and
    ``cum`` (cumulative FLOPs) are updated. ``group_metrics``: the step's prompt-group counts too (and
    ``groups/zero_std_frac`` and ``effective/step`` computed from them)."""
    mult, gain, hit, rescue = _PROFILE.get(algo, _PROFILE["repo:random_k"])
    is_repo = algo.startswith("repo")
    per_step = sum(flops_step.values())
    zero = float(np.clip(0.55 - 0.15 * frac + rng.normal(0, 0.06), 0.05, 0.95))
    eff = 1.0 - zero * (1.0 - rescue * (frac > 0.1))
    m: dict[str, float] = {
        "reward/mean": float(np.clip(0.3 + gain * 2 * frac + rng.normal(0, 0.04), 0, 1)),
        "groups/zero_std_frac": zero,
        "effective/step": eff,
    }
    if group_metrics:
        m.update(_group_metrics(rng, algo, zero, frac))
        eff = m["effective/step"]
    m["reward/accuracy"] = m["reward/mean"]
    gen_scale = m.get("groups/generated", _GROUPS) / _GROUPS  # DAPO's extra rounds: their tokens and time
    for k, v in _TIMES.items():
        v = v * (mult if k in ("train_s", "logprob_s") else gen_scale if k == "generate_s" else 1.0)
        v *= 1 + rng.normal(0, 0.05)
        m[f"time/{k}"] = max(v, 0.0)
    m["time/step_s"] = sum(m[f"time/{k}"] for k in _TIMES) + 0.03
    m["tokens/generated"] = (4 * 8 * 20.0 + rng.integers(-20, 20)) * gen_scale
    m["tokens/prompt"] = 4 * 8 * 15.0
    m["tokens/trained"] = m["tokens/generated"] * (1.0 + (0.9 if is_repo and frac > 0.1 else 0.0))
    for k, v in flops_step.items():
        m[f"flops/{k}"] = v
    m["flops/total"] = per_step
    cum["flops"] += per_step
    m["flops/total_cum"] = cum["flops"]
    m["budget/fraction"] = min(cum["flops"] / budget_flops, 1.0)
    for k in ("tokens/generated", "tokens/trained", "tokens/prompt", "time/step_s", "time/generate_s", "time/train_s"):
        totals[k] = totals.get(k, 0.0) + m[k]
        m[f"{k}_total"] = totals[k]
    totals["effective/step"] = totals.get("effective/step", 0.0) + eff
    m["effective/steps_total"] = totals["effective/step"]
    if is_repo:
        m.update(
            {
                "replay/hit_rate": hit * (frac > 0.1),
                "replay/staleness_mean": 3.0 + rng.normal(0, 0.3),
                "replay/rows": 32.0 * (frac > 0.1),
            }
        )
    return m


def _group_metrics(rng: np.random.Generator, algo: str, zero: float, frac: float) -> dict[str, float]:
    """One step's prompt-group counts as the trainer and the algorithms log them: each of ``_GROUPS`` prompts has
    reward variance with probability 1 - ``zero``; DAPO generates rounds of prompts until ``_GROUPS`` have it (at most 3
    extra) and drops the rest; RePO and zv_substitute rescue a share of the groups without it (after the first 10%)."""
    name = algo.split(":", 1)[0]
    _, _, hit, rescue = _PROFILE.get(algo, _PROFILE["repo:random_k"])
    generated, signal, rounds = _GROUPS, int(rng.binomial(_GROUPS, 1 - zero)), 0
    while name == "dapo" and signal < _GROUPS and rounds < 3:
        generated, signal, rounds = generated + _GROUPS, signal + int(rng.binomial(_GROUPS, 1 - zero)), rounds + 1
    on = min(signal, _GROUPS)
    kept = (on or _GROUPS) if name == "dapo" else _GROUPS  # DAPO: the groups with signal (none: the first round's)
    rescued = int(rng.binomial(kept - on, rescue)) if frac > 0.1 and rescue else 0
    replayed = rescued + (int(rng.binomial(on, hit)) if name == "repo" and frac > 0.1 else 0)
    m = {
        "groups/generated": float(generated),
        "groups/kept": float(kept),
        "groups/dropped": float(generated - kept),
        "rollout/extra_rounds": float(rounds),
        "groups/on_policy_nonzero_var": float(on),
        "groups/replay_nonzero_var": float(replayed),
        "groups/zero_std_frac": 1.0 - on / kept,
        "effective/step": (on + rescued) / kept,
    }
    if name == "zv_substitute":
        m["zv/replaced"] = float(rescued)
    return m


def _sweep(client, exp_id: str, rng: np.random.Generator, n_trials: int = 6) -> tuple[str, list[str]]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    parent = client.create_run(
        exp_id,
        run_name="sweep-replay",
        tags={"harness.role": "sweep", "harness.sweep": "replay-k", "algorithm": "repo:recent_k"},
    )
    pid = parent.info.run_id
    study = optuna.create_study(
        direction="maximize", study_name="replay-k", sampler=optuna.samplers.RandomSampler(seed=0)
    )
    trial_ids = []
    for _ in range(n_trials):
        t = study.ask()
        k = t.suggest_int("algorithm.num_replays", 1, 8)
        lr = t.suggest_float("train.learning_rate", 1e-7, 1e-5, log=True)
        value = float(0.3 + 0.02 * k - 0.05 * abs(math.log10(lr) + 6) + rng.normal(0, 0.01))
        run = client.create_run(
            exp_id,
            run_name=f"trial-{t.number}",
            tags={
                "mlflow.parentRunId": pid,
                "harness.role": "trial",
                "optuna.trial_number": str(t.number),
                "algorithm": "repo:recent_k",
                "model": "tiny",
                "seed": "42",
            },
        )
        rid = run.info.run_id
        _params(client, rid, {"algorithm.num_replays": k, "train.learning_rate": lr, "algorithm.name": "repo:recent_k"})
        _log_metrics(client, rid, [("eval/macro_accuracy", value, 10)])
        client.set_terminated(rid)
        t.set_user_attr("run_id", rid)
        study.tell(t, value)
        trial_ids.append(rid)
    best = study.best_trial
    _log_text(client, pid, study.trials_dataframe().to_csv(index=False), "sweep/trials.csv")
    _log_text(
        client,
        pid,
        json.dumps(
            {
                "number": best.number,
                "value": best.value,
                "params": best.params,
                "run_id": best.user_attrs["run_id"],
                "direction": "maximize",
                "metric": "eval/macro_accuracy",
            },
            indent=2,
        ),
        "sweep/best_trial.json",
    )
    _log_text(
        client, pid, json.dumps({"algorithm.num_replays": 0.81, "train.learning_rate": 0.19}), "sweep/importances.json"
    )
    _log_metrics(client, pid, [("best_value", best.value, 0)])
    client.set_terminated(pid)
    return pid, trial_ids


def _experiment_id(client, experiment: str, artifact_root: str | Path) -> str:
    """The id of ``experiment`` (created with its artifacts under ``artifact_root`` when it does not exist)."""
    exp = client.get_experiment_by_name(experiment)
    if exp:
        return exp.experiment_id
    return client.create_experiment(experiment, artifact_location=Path(artifact_root).resolve().as_uri())


def _matrix(
    client,
    store: SyntheticStore,
    algorithms: tuple[str, ...],
    models: tuple[str, ...],
    seeds: tuple[int, ...],
    *,
    rng: np.random.Generator,
    difficulty: dict[str, np.ndarray],
    benchmarks: dict[str, tuple[int, int]],
    budget_flops: float,
    failed: tuple[str, int] | None = None,
    without_samples: tuple[str, int] | None = None,
    reward: tuple[str, float] | None = None,
    legacy: tuple[str, ...] = (),
    group_metrics: bool = False,
    name: str | None = None,
) -> str:
    """One `harness run` matrix: an experiment parent, a member per (algorithm, model, seed) and the parent's
    matrix.json; members go into ``store`` keyed by their report label (``control_label``). Returns the parent's id.
    ``group_metrics``: members log the prompt-group counts, except the ``legacy`` algorithms' (as older runs)."""
    from reports.data import control_label

    experiment = store.experiment
    parent = client.create_run(
        store.experiment_id,
        run_name=name or f"{experiment}-matrix",
        tags={"harness.role": "experiment", "harness.experiment": experiment},
    )
    pid = parent.info.run_id
    for model in models:
        for algo in algorithms:
            for s in seeds:
                fail = 0.6 if failed and (algo, s) == tuple(failed) else None
                nos = bool(without_samples and (algo, s) == tuple(without_samples))
                rid = _member(
                    client,
                    store.experiment_id,
                    pid,
                    algo,
                    model,
                    s,
                    rng=rng,
                    budget_flops=budget_flops,
                    benchmarks=benchmarks,
                    difficulty=difficulty,
                    fail_at=fail,
                    samples=not nos,
                    experiment=experiment,
                    reward=reward,
                    group_metrics=group_metrics and algo not in legacy,
                )
                label = control_label(algo, *reward) if reward else algo
                store.members[(label, model, s)] = rid
                if fail is not None:
                    store.failed.append(rid)
                if nos:
                    store.without_samples.append(rid)
    planned = [f"{a}|{m}|{sd}" for m in models for a in algorithms for sd in seeds]
    _log_text(
        client, pid, json.dumps({"members": planned, "budget": f"flops:{budget_flops:g}"}, indent=2), "matrix.json"
    )
    client.set_terminated(pid)
    return pid


def build_synthetic_store(
    tracking_uri: str,
    artifact_root: str | Path,
    experiment: str = "synthetic",
    *,
    algorithms: tuple[str, ...] = ("grpo", "repo:recent_k", "repo:highest_k"),
    models: tuple[str, ...] = ("tiny",),
    seeds: tuple[int, ...] = (42, 43),
    benchmarks: dict[str, tuple[int, int]] | None = None,
    failed: tuple[str, int] | None = ("repo:highest_k", 43),
    without_samples: tuple[str, int] | None = ("grpo", 43),
    sweep: bool = True,
    budget_flops: float = 3.0e13,
    seed: int = 0,
) -> SyntheticStore:
    """Write the synthetic experiment (and sweep) into ``tracking_uri``; artifacts under ``artifact_root``. Its
    members log no prompt-group counts and no reward params, as runs logged before those existed."""
    from mlflow.tracking import MlflowClient

    benchmarks = benchmarks or {"arith": (40, 4), "gsm8k": (30, 1)}
    rng = np.random.default_rng(seed)
    client = MlflowClient(tracking_uri)
    exp_id = _experiment_id(client, experiment, artifact_root)
    difficulty = {b: rng.normal(0.5, 1.0, n) for b, (n, _) in benchmarks.items()}
    store = SyntheticStore(tracking_uri, experiment, exp_id, None)
    if algorithms:
        store.parent_run_id = _matrix(
            client,
            store,
            algorithms,
            models,
            seeds,
            rng=rng,
            difficulty=difficulty,
            benchmarks=benchmarks,
            budget_flops=budget_flops,
            failed=failed,
            without_samples=without_samples,
        )
    if sweep:
        store.sweep_run_id, store.trial_run_ids = _sweep(client, exp_id, rng)
    return store


def build_family_store(
    tracking_uri: str,
    artifact_root: str | Path,
    experiment: str = "family",
    *,
    algorithms: tuple[str, ...] = FAMILY,
    models: tuple[str, ...] = ("tiny",),
    seeds: tuple[int, ...] = (42, 43),
    controls: tuple[tuple[str, str, float], ...] = (("grpo", "random", 0.5),),
    legacy: tuple[str, ...] = ("prioritized_replay",),
    budget_flops: float = 2.0e13,
    seed: int = 1,
) -> SyntheticStore:
    """The algorithm family as `harness run --algos grpo,repo:recent_k,dapo,...` logs it (reward params
    ``reward.kind=verifier``, prompt-group counts per step, DAPO's generated/kept/dropped groups and extra rounds),
    plus each ``controls`` entry (algorithm, reward.kind, reward.random_p) as a second `harness run` in the same
    experiment, the same seeds (``store.control_parent_run_id``; report both with ``all_runs=True``). The ``legacy``
    algorithms' members log no group counts (as runs logged before them); no failed member, no sweep."""
    from mlflow.tracking import MlflowClient

    benchmarks = {"arith": (40, 4), "gsm8k": (30, 1)}
    rng = np.random.default_rng(seed)
    client = MlflowClient(tracking_uri)
    exp_id = _experiment_id(client, experiment, artifact_root)
    difficulty = {b: rng.normal(0.5, 1.0, n) for b, (n, _) in benchmarks.items()}
    store = SyntheticStore(tracking_uri, experiment, exp_id, None)
    common = {"rng": rng, "difficulty": difficulty, "benchmarks": benchmarks, "budget_flops": budget_flops}
    store.parent_run_id = _matrix(
        client, store, algorithms, models, seeds, reward=("verifier", 0.5), legacy=legacy, group_metrics=True, **common
    )
    for algo, kind, p in controls:
        store.control_parent_run_id = _matrix(
            client,
            store,
            (algo,),
            models,
            seeds,
            reward=(kind, p),
            group_metrics=True,
            name=f"{experiment}-{kind}-control",
            **common,
        )
    return store


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    root = Path(argv[0] if argv else "synthetic-store").resolve()
    root.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    store = build_synthetic_store(uri, root / "artifacts")
    family = build_family_store(uri, root / "artifacts-family")
    print(
        f"tracking uri: {uri}\nexperiment:   {store.experiment}\nparent run:   {store.parent_run_id}\nsweep run:    "
        f"{store.sweep_run_id}\nfamily:       experiment {family.experiment} (with a reward control: "
        "harness report --experiment family --all-runs)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
