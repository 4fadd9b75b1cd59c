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

from harness.config import ConfigError, HarnessConfig
from harness.tracking import Tracker, resolve_tracking_uri
from sweeps.space import SearchSpace, compose, flat_config, parse_space

# Applied under the space's base: the "before" evaluation is the same starting model for every trial.
SWEEP_DEFAULTS: dict[str, Any] = {"eval": {"before_training": False}}
NOT_PRUNABLE_TAGS = ("before", "after")


class TrialContext:
    """Everything a worker needs to run trials of one study (rebuilt from the study's stored spec)."""

    def __init__(
        self,
        spec: dict[str, Any],
        study_name: str,
        output_root: str | Path,
        worker_index: int = 0,
        progress: bool = False,
    ):
        self.spec = spec
        self.study_name = study_name
        self.space: SearchSpace = parse_space(spec["space"], source=f"study {study_name}")
        self.pre: list[Any] = list(spec["pre_layers"])
        # --model and --set, as config layers over the space's base
        self.sets: list[dict[str, Any]] = list(spec.get("sets", []))
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
        return {
            "tracking": {
                "tracking_uri": self.tracking_uri,
                "experiment_name": self.experiment,
                "run_name": run_name,
                "enabled": self.tracking_enabled,
            },
            "train": {"output_dir": str(output_dir)},
        }

    def tags(self, number: int) -> dict[str, str]:
        return {
            "harness.role": "trial",
            "harness.sweep": self.study_name,
            "optuna.study": self.study_name,
            "optuna.trial_number": str(number),
        }


def _metric_value(
    name: str, evals: list[dict[str, Any]], last_step: dict[str, float] | None
) -> tuple[float, int | None]:
    from benchmarks.evaluation import flat_metrics

    if name.startswith("eval/"):
        if not evals:
            raise RuntimeError(
                f"objective metric {name}: the trial never evaluated (enable eval.after_training or eval.every_steps)"
            )
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


def _client(ctx: TrialContext):
    from mlflow.tracking import MlflowClient

    return MlflowClient(resolve_tracking_uri(ctx.tracking_uri))


def _failed_config_run(ctx: TrialContext, number: int, sampled: dict[str, Any], reason: str) -> str | None:
    """A short FAILED child run for a trial whose sampled config was rejected (so every trial shows up in MLflow)."""
    if not ctx.tracking_enabled:
        return None
    tr = Tracker(
        enabled=True,
        tracking_uri=ctx.tracking_uri,
        experiment=ctx.experiment,
        run_name=f"{ctx.study_name}-trial-{number}",
        tags={**ctx.tags(number), "harness.fail_reason": reason[:5000], "optuna.state": "FAIL"},
        parent_run_id=ctx.parent_run_id,
    )
    tr.log_params({"trial": sampled})
    tr.finish("FAILED")
    return tr.run_id


def _record_worker(trial: Any, ctx: TrialContext) -> None:
    trial.set_user_attr("worker_pid", os.getpid())
    trial.set_user_attr("worker_host", socket.gethostname())
    trial.set_user_attr("worker_index", ctx.worker_index)


def _trial_config(trial: Any, ctx: TrialContext, sampled: dict[str, Any]) -> HarnessConfig:
    """The trial's config; a rejected one fails the trial (reason recorded, a FAILED MLflow run logged)."""
    n = trial.number
    run_name = f"{ctx.study_name}-trial-{n}"
    out_dir = ctx.output_root / ctx.study_name / f"trial-{n}"
    trial.set_user_attr("output_dir", str(out_dir))
    try:
        return compose(ctx.pre, ctx.space, ctx.sets, sampled, ctx.forced(run_name, out_dir))
    except ConfigError as e:
        reason = f"config error: {e}"
        trial.set_user_attr("fail_reason", reason)
        run_id = _failed_config_run(ctx, n, sampled, reason)
        if run_id:
            trial.set_user_attr("mlflow_run_id", run_id)
        raise


def _start_trainer(
    trial: Any, ctx: TrialContext, cfg: HarnessConfig, sampled: dict[str, Any]
) -> tuple[Any, str | None]:
    """The trial's trainer (an MLflow child run of the sweep) and its run id (None without tracking)."""
    from harness.trainer import Trainer  # imports torch

    try:
        trainer = Trainer(
            cfg, progress=ctx.progress, tracker_tags=ctx.tags(trial.number), parent_run_id=ctx.parent_run_id
        )
    except Exception as e:
        trial.set_user_attr("fail_reason", f"trainer setup failed: {type(e).__name__}: {e}"[:2000])
        trial.set_user_attr("traceback", traceback.format_exc()[-4000:])
        raise
    run_id = trainer.tracker.run_id if trainer.tracker.enabled else None
    if run_id:
        trial.set_user_attr("mlflow_run_id", run_id)
        trainer.tracker.log_params({"trial": sampled})
    return trainer, run_id


class _Reporter:
    """Reports the objective metric to Optuna as training goes (evaluations, or step metrics for a step
    objective) and raises optuna.TrialPruned when the pruner says so; keeps the last step's metrics."""

    def __init__(self, trial: Any, metric: str, by_fraction: bool, total_steps: int):
        self.trial, self.metric, self.by_fraction, self.total_steps = trial, metric, by_fraction, total_steps
        self.last_step: dict[str, float] = {}
        self.reported: set[int] = set()

    def report(self, value: float, step: int, prunable: bool) -> None:
        import optuna

        if step in self.reported:
            return
        self.reported.add(step)
        self.trial.report(float(value), step)
        if prunable and self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step}: {self.metric}={value:.4g}")

    def on_eval(self, trainer: Any, tag: str, results: dict[str, Any]) -> None:
        if not self.metric.startswith("eval/"):
            return
        from benchmarks.evaluation import flat_metrics

        flat = flat_metrics(results)
        step = intermediate_step(trainer, tag, self.by_fraction)
        if self.metric in flat and step is not None:
            self.report(flat[self.metric], step, prunable=tag not in NOT_PRUNABLE_TAGS)

    def on_step(self, record: Any) -> None:
        self.last_step.clear()
        self.last_step.update(record.metrics)
        if not self.metric.startswith("eval/") and self.metric in record.metrics:
            self.report(record.metrics[self.metric], record.step, prunable=record.step < self.total_steps)


def _end_mlflow_run(ctx: TrialContext, run_id: str | None, tags: dict[str, str], status: str) -> None:
    """Tag the trial's MLflow run with how it ended and close it (``fit()`` closed it as FAILED)."""
    if run_id:
        client = _client(ctx)
        for key, value in tags.items():
            client.set_tag(run_id, key, value)
        client.set_terminated(run_id, status=status)


def run_trial(trial: Any, ctx: TrialContext) -> float:
    """The Optuna objective. Raises optuna.TrialPruned when pruned; any other error fails only this trial."""
    import optuna

    t0 = time.perf_counter()
    _record_worker(trial, ctx)
    sampled = ctx.space.sample(trial, ctx.context)
    cfg = _trial_config(trial, ctx, sampled)
    metric = ctx.space.metric
    trainer, run_id = _start_trainer(trial, ctx, cfg, sampled)
    reporter = _Reporter(trial, metric, by_fraction=bool(cfg.eval.at_budget_fractions), total_steps=trainer.total_steps)
    trainer.eval_callbacks.append(reporter.on_eval)
    trainer.callbacks.append(reporter.on_step)
    try:
        summary = trainer.fit()
        value, step = _metric_value(metric, summary.get("evals", []), reporter.last_step)
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
        trial.set_user_attr("pruned_at_step", max(reporter.reported) if reporter.reported else trainer.step)
        trial.set_user_attr("pruned_at_train_step", trainer.step)
        trial.set_user_attr("wall_s", round(time.perf_counter() - t0, 2))
        _end_mlflow_run(ctx, run_id, {"optuna.state": "PRUNED", "harness.pruned": str(e)}, "KILLED")
        raise
    except KeyboardInterrupt as e:
        reason = f"interrupted ({e or 'SIGINT'})"
        trial.set_user_attr("fail_reason", reason)
        _end_mlflow_run(ctx, run_id, {"optuna.state": "FAIL", "harness.fail_reason": reason}, "KILLED")
        raise
    except Exception as e:
        reason = f"{type(e).__name__}: {e}"
        trial.set_user_attr("fail_reason", reason[:2000])
        trial.set_user_attr("traceback", traceback.format_exc()[-4000:])
        _end_mlflow_run(ctx, run_id, {"optuna.state": "FAIL", "harness.fail_reason": reason[:5000]}, "FAILED")
        raise
    finally:
        del trainer
        gc.collect()
