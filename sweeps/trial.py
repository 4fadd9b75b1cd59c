"""One sweep trial: sample, build the config, train as an MLflow child run, report evaluations for pruning."""

from __future__ import annotations

import gc
import os
import re
import socket
import time
import traceback
from pathlib import Path
from typing import Any

from harness.config import ConfigError
from sweeps.space import SearchSpace, compose, flat_config, parse_space

# Applied under the space's base: the "before" evaluation is the same starting model for every trial.
SWEEP_DEFAULTS: dict[str, Any] = {"eval": {"before_training": False}}
NOT_PRUNABLE_TAGS = ("before", "after")


class TrialContext:
    """Everything a worker needs to run trials of one study (rebuilt from the study's stored spec)."""

    def __init__(self, spec: dict[str, Any], study_name: str, output_root: str | Path, worker_index: int = 0, progress: bool = False):
        self.spec = spec
        self.study_name = study_name
        self.space: SearchSpace = parse_space(spec["space"], source=f"study {study_name}")
        self.pre: list[Any] = list(spec["pre_layers"])
        self.sets: list[dict[str, Any]] = list(spec.get("sets", []))  # --model and --set, as config layers over the space's base
        self.output_root = Path(output_root)
        self.worker_index = worker_index
        self.progress = progress
        self.tracking_uri: str | None = spec.get("tracking_uri")
        self.experiment: str = spec.get("experiment", "harness")
        self.tracking_enabled: bool = spec.get("tracking_enabled", True)
        self.parent_run_id: str | None = spec.get("parent_run_id")
        probe = compose(self.pre, self.space, self.sets, None, self.forced("probe", self.output_root / "probe"))
        self.context = flat_config(probe)

    def forced(self, run_name: str, output_dir: Path) -> dict[str, Any]:
        return {"tracking": {"tracking_uri": self.tracking_uri, "experiment_name": self.experiment, "run_name": run_name, "enabled": self.tracking_enabled},
                "train": {"output_dir": str(output_dir)}}

    def tags(self, number: int) -> dict[str, str]:
        return {"harness.role": "trial", "harness.sweep": self.study_name, "optuna.study": self.study_name, "optuna.trial_number": str(number)}


def _metric_value(name: str, evals: list[dict[str, Any]], last_step: dict[str, float] | None) -> tuple[float, int | None]:
    from benchmarks.evaluation import flat_metrics

    if name.startswith("eval/"):
        if not evals:
            raise RuntimeError(f"objective metric {name}: the trial never evaluated (enable eval.after_training or eval.every_steps)")
        final = next((e for e in reversed(evals) if e.get("tag") == "after"), evals[-1])
        flat = flat_metrics(final)
        if name not in flat:
            raise RuntimeError(f"objective metric {name} not among the evaluation metrics: {', '.join(sorted(flat))}")
        return float(flat[name]), final.get("step")
    if not last_step:
        raise RuntimeError(f"objective metric {name}: no training step ran")
    if name not in last_step:
        raise RuntimeError(f"objective metric {name} not among the step metrics: {', '.join(sorted(last_step))}")
    return float(last_step[name]), None


BUDGET_TAG = re.compile(r"^budget([0-9]*\.?[0-9]+)$")
FRACTION_SCALE = 1000  # intermediate "step" = permille of the compute budget when evaluating at budget fractions


def intermediate_step(trainer: Any, tag: str, by_fraction: bool) -> int | None:
    """The step an evaluation is reported at: the optimizer step, or (with eval.at_budget_fractions) the nominal
    budget fraction in permille, so trials whose steps cost different compute are compared at equal spend."""
    if not by_fraction:
        return int(trainer.step)
    m = BUDGET_TAG.match(tag)
    if m:
        return int(round(float(m.group(1)) * FRACTION_SCALE))
    if tag == "after":
        return FRACTION_SCALE
    return None  # step-based evaluations would mix two step axes


def _hook_evaluations(trainer: Any, callback) -> None:
    """Call ``callback(trainer, tag, results)`` after every evaluation (the trainer's eval_callbacks when it has them)."""
    hooks = getattr(trainer, "eval_callbacks", None)
    if isinstance(hooks, list):
        hooks.append(callback)
        return
    original = trainer.evaluate

    def evaluate(tag: str, *a: Any, **kw: Any):
        res = original(tag, *a, **kw)
        callback(trainer, tag, res)
        return res

    trainer.evaluate = evaluate


def _client(ctx: TrialContext):
    from mlflow.tracking import MlflowClient

    from harness.tracking import resolve_tracking_uri

    return MlflowClient(resolve_tracking_uri(ctx.tracking_uri))


def _failed_config_run(ctx: TrialContext, number: int, sampled: dict[str, Any], reason: str) -> str | None:
    """A short FAILED child run for a trial whose sampled config was rejected (so every trial shows up in MLflow)."""
    if not ctx.tracking_enabled:
        return None
    from harness.tracking import Tracker

    tr = Tracker(enabled=True, tracking_uri=ctx.tracking_uri, experiment=ctx.experiment, run_name=f"{ctx.study_name}-trial-{number}",
                 tags={**ctx.tags(number), "harness.fail_reason": reason[:5000], "optuna.state": "FAIL"}, parent_run_id=ctx.parent_run_id)
    tr.log_params({"trial": sampled})
    tr.finish("FAILED")
    return tr.run_id


def run_trial(trial: Any, ctx: TrialContext) -> float:
    """The Optuna objective. Raises optuna.TrialPruned when pruned; any other error fails only this trial."""
    import optuna

    from harness.trainer import Trainer

    n = trial.number
    t0 = time.perf_counter()
    trial.set_user_attr("worker_pid", os.getpid())
    trial.set_user_attr("worker_host", socket.gethostname())
    trial.set_user_attr("worker_index", ctx.worker_index)
    sampled = ctx.space.sample(trial, ctx.context)
    run_name = f"{ctx.study_name}-trial-{n}"
    out_dir = ctx.output_root / ctx.study_name / f"trial-{n}"
    trial.set_user_attr("output_dir", str(out_dir))
    try:
        cfg = compose(ctx.pre, ctx.space, ctx.sets, sampled, ctx.forced(run_name, out_dir))
    except ConfigError as e:
        reason = f"config error: {e}"
        trial.set_user_attr("fail_reason", reason)
        run_id = _failed_config_run(ctx, n, sampled, reason)
        if run_id:
            trial.set_user_attr("mlflow_run_id", run_id)
        raise

    metric = ctx.space.metric
    try:
        trainer = Trainer(cfg, progress=ctx.progress, tracker_tags=ctx.tags(n), parent_run_id=ctx.parent_run_id)
    except Exception as e:
        trial.set_user_attr("fail_reason", f"trainer setup failed: {type(e).__name__}: {e}"[:2000])
        trial.set_user_attr("traceback", traceback.format_exc()[-4000:])
        raise
    run_id = trainer.tracker.run_id if trainer.tracker.enabled else None
    if run_id:
        trial.set_user_attr("mlflow_run_id", run_id)
        trainer.tracker.log_params({"trial": sampled})
    last_step: dict[str, float] = {}
    reported: set[int] = set()
    by_fraction = bool(getattr(cfg.eval, "at_budget_fractions", None))

    def report(value: float, step: int, prunable: bool) -> None:
        if step in reported:
            return
        reported.add(step)
        trial.report(float(value), step)
        if prunable and trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step}: {metric}={value:.4g}")

    def on_eval(_trainer: Any, tag: str, results: dict[str, Any]) -> None:
        if not metric.startswith("eval/"):
            return
        from benchmarks.evaluation import flat_metrics

        flat = flat_metrics(results)
        step = intermediate_step(_trainer, tag, by_fraction)
        if metric in flat and step is not None:
            report(flat[metric], step, prunable=tag not in NOT_PRUNABLE_TAGS)

    def on_step(record: Any) -> None:
        last_step.clear()
        last_step.update(record.metrics)
        if not metric.startswith("eval/") and metric in record.metrics:
            report(record.metrics[metric], record.step, prunable=record.step < trainer.total_steps)

    _hook_evaluations(trainer, on_eval)
    trainer.callbacks.append(on_step)
    try:
        summary = trainer.fit()
        value, step = _metric_value(metric, summary.get("evals", []), last_step)
        trial.set_user_attr("steps", summary.get("steps"))
        trial.set_user_attr("wall_s", round(time.perf_counter() - t0, 2))
        if step is not None:
            trial.set_user_attr("objective_step", step)
        if run_id:
            client = _client(ctx)
            client.log_metric(run_id, "sweep/objective", value, step=summary.get("steps") or 0)
            client.set_tag(run_id, "optuna.state", "COMPLETE")
        return value
    except optuna.TrialPruned as e:
        trial.set_user_attr("pruned_at_step", max(reported) if reported else trainer.step)
        trial.set_user_attr("pruned_at_train_step", trainer.step)
        trial.set_user_attr("wall_s", round(time.perf_counter() - t0, 2))
        if run_id:
            client = _client(ctx)
            client.set_tag(run_id, "optuna.state", "PRUNED")
            client.set_tag(run_id, "harness.pruned", str(e))
            client.set_terminated(run_id, status="KILLED")  # fit() closed it as FAILED
        raise
    except KeyboardInterrupt as e:
        reason = f"interrupted ({e or 'SIGINT'})"
        trial.set_user_attr("fail_reason", reason)
        if run_id:
            client = _client(ctx)
            client.set_tag(run_id, "optuna.state", "FAIL")
            client.set_tag(run_id, "harness.fail_reason", reason)
            client.set_terminated(run_id, status="KILLED")
        raise
    except Exception as e:
        reason = f"{type(e).__name__}: {e}"
        trial.set_user_attr("fail_reason", reason[:2000])
        trial.set_user_attr("traceback", traceback.format_exc()[-4000:])
        if run_id:
            client = _client(ctx)
            client.set_tag(run_id, "optuna.state", "FAIL")
            client.set_tag(run_id, "harness.fail_reason", reason[:5000])
            client.set_terminated(run_id, status="FAILED")
        raise
    finally:
        del trainer
        gc.collect()
