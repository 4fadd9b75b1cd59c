"""`harness sweep`: Optuna hyperparameter search over a search-space file, trials as MLflow child runs.

Wiring (harness/cli.py): ``add_sweep_parser(sub)`` in ``build_parser`` and ``cmd_sweep`` in its table of
commands. Standalone: ``python -m sweeps.cli SPACE.yaml [options]`` (the same as ``harness sweep``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from harness.cli_common import (
    add_config_flags,
    add_data_dir_flag,
    add_launcher_flags,
    add_plugin_flag,
    add_report_flags,
    launcher_from_args,
    run_command,
)
from harness.config import ConfigError, load_yaml, parse_override
from harness.preflight import preflight, sweep_configs
from harness.secrets import has_secret, mask_secrets, mask_uri
from harness.tracking import Tracker, resolve_tracking_uri
from reports.cli import report_at_end
from sweeps.space import SearchSpace, SpaceError, check_space, compose, flat_config, load_space
from sweeps.study import (
    SPEC_ATTR,
    counted_trials,
    fail_trials_of_dead_worker,
    normalize_storage_url,
    open_storage,
    redact_url,
    settle_running_trials,
    sqlite_file,
    stale_trial_callback,
    write_summaries,
)
from sweeps.study import get_spec as stored_spec
from sweeps.trial import SWEEP_DEFAULTS
from sweeps.worker import run_worker

SWEEP_EPILOG = """examples:
  harness sweep repo_tiny --trials 20 --workers 2
  harness sweep my_space.yaml --model tiny --set train.max_steps=30 --trials 50 --workers 4
  harness sweep my_space.yaml --study-name lr-vs-buffer --storage postgresql://user@db/optuna --workers 8
  harness sweep --study-name lr-vs-buffer --storage postgresql://user@db/optuna --workers 8   \
# join from another machine
  harness sweep my_space.yaml --dry-run            # validate the space, print the midpoint trial's config
  harness sweep --study-name repo_tiny --report-only   # rewrite best trial / importances / plots
  harness sweep my_space.yaml --storage postgresql://user@db/optuna --tracking-uri http://mlflow-host:5000 \
--workers 8 --launcher slurm --slurm-gpus 1 --slurm-time-min 240   # 8 workers as Slurm jobs

The search space (YAML): `params` maps dotted config keys to {type: categorical, choices: [...]},
{type: int, low, high[, step][, log]} or {type: float, low, high[, step | log]} (optionally `when:
{algorithm.name: repo}`); `base` holds config sections applied under every trial; `objective:
{metric: eval/macro_accuracy, direction: maximize}` (an eval/... metric of the final evaluation, or
any step metric such as reward/mean at the last step); optional `sampler: {type: tpe|random, seed}`
and `pruner: {type: median|percentile|hyperband|successive_halving|threshold|none, ...}`.
Intermediate evaluations (eval.every_steps in base) are reported to the pruner.

Config layers of a trial, later wins: the model's preset <- --config <- sweep defaults
(eval.before_training=false) <- the space's base <- --model / --set <- sampled params.
--trials is the study's total (finished + running trials, failures included), shared by every
worker on every machine; run again with a larger --trials to extend a study.
"""


def _add_arguments(p: argparse.ArgumentParser) -> None:
    _add_study_arguments(p)
    _add_trial_arguments(p)
    p.add_argument(
        "--report-only",
        action="store_true",
        help="Run no trials: write the summaries of an existing study and log them to its MLflow parent run.",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="Validate the space and print the midpoint trial's resolved config; create nothing.",
    )
    add_data_dir_flag(
        p,
        data_dir_help="Prepared benchmark/training files (from `harness data prepare`); "
        "default $HARNESS_DATA_DIR or the cache. Workers inherit it.",
    )
    add_plugin_flag(p)
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="Hide per-trial progress bars (only with --workers 0; workers never show them).",
    )
    add_launcher_flags(p, job="worker")
    add_report_flags(
        p,
        report_dir_help="Where the sweep report (history, importances, best trial) is written at the end "
        "(default: reports/sweep-<study>/).",
        no_report_help="Do not write the report at the end (run `harness report --sweep-only` later).",
    )


def _add_study_arguments(p: argparse.ArgumentParser) -> None:
    """The study: its space, name and storage, and how many trials run where."""
    p.add_argument(
        "space",
        nargs="?",
        help="Search-space YAML file, or the name of one in sweeps/spaces (e.g. repo_tiny). "
        "Omit to join an existing study.",
    )
    p.add_argument(
        "--study-name",
        help="Optuna study name (default: the space file's stem). An existing study of that name is continued.",
    )
    p.add_argument(
        "--storage",
        help="Optuna storage URL: sqlite:///file.db (default: $HARNESS_SWEEP_STORAGE or sqlite:///optuna.db) or any "
        "SQLAlchemy URL (postgresql://..., mysql+pymysql://...) shared by several machines.",
    )
    p.add_argument(
        "--trials",
        type=int,
        help="Total trials of the study across all workers (default: 20 for a new study, else the stored total).",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="Worker processes on this machine (default: 1; 0 = run trials in this process); with --launcher slurm, "
        "worker jobs (e.g. --workers 8 --launcher slurm).",
    )
    p.add_argument("--timeout", type=float, help="Seconds after which no new trial starts (running ones finish).")


def _add_trial_arguments(p: argparse.ArgumentParser) -> None:
    """Every trial's config, outputs and worker supervision."""
    p.add_argument(
        "--model",
        help="Model for every trial (default: the space base's model.name, else tiny); its preset is the lowest layer.",
    )
    add_config_flags(
        p,
        config_help="YAML config file (or preset name) applied over the model's preset.",
        set_help="Override one config field for every trial (repeatable; sampled params still win).",
        tracking_uri_help="MLflow tracking URI (default: the config's, $MLFLOW_TRACKING_URI or sqlite:///mlflow.db).",
        experiment_help="MLflow experiment (default: the config's tracking.experiment_name).",
    )
    p.add_argument(
        "--output-dir",
        default="runs",
        help="Trial outputs go to OUTPUT_DIR/<study>/trial-<n>, worker logs and summaries next to them "
        "(default: runs).",
    )
    p.add_argument(
        "--heartbeat-interval",
        type=int,
        default=10,
        help="Seconds between a running trial's heartbeats (default: 10).",
    )
    p.add_argument(
        "--grace-period",
        type=int,
        default=60,
        help="A running trial without a heartbeat for this long is failed by the next worker that looks (default: 60).",
    )
    p.add_argument(
        "--max-restarts",
        type=int,
        help="Replace workers that die (killed, out of memory) up to this many times (default: --workers).",
    )


def add_sweep_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "sweep",
        help="Hyperparameter search (Optuna): pruning, parallel workers, trials as MLflow child runs.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=SWEEP_EPILOG,
        description="Search hyperparameters with Optuna; each trial trains and evaluates one config.",
    )
    _add_arguments(p)
    return p


# --------------------------------------------------------------------------------------------


def _absolute_sqlite(uri: str) -> str:
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri[len('sqlite:///') :]).resolve()}"
    return uri


def prepare_spec(space: SearchSpace, args: argparse.Namespace) -> tuple[dict[str, Any], Any, list[str]]:
    """Validate the space on top of the CLI's layers; returns (the spec stored with the study, midpoint config,
    warnings)."""
    from harness.models import get_spec  # imports torch

    model = args.model or (space.base.get("model") or {}).get("name") or "tiny"
    pre: list[Any] = [get_spec(str(model)).preset, load_yaml(args.config) if args.config else None, SWEEP_DEFAULTS]
    sets: list[dict[str, Any]] = [{"model": {"name": args.model}}] if args.model else []
    sets += [parse_override(o) for o in args.overrides]
    for s in sets:
        if "tracking" in s:
            raise SpaceError(
                "--set tracking.*: use --tracking-uri / --experiment (trials must log where the sweep's parent run is)"
            )
    try:
        probe = compose(pre, space, sets, None, None)
    except Exception as e:
        raise SpaceError(
            f"the sweep's base config (model preset + --config + space base + --set) is invalid: {e}"
        ) from None
    tracking_uri = _absolute_sqlite(resolve_tracking_uri(args.tracking_uri or probe.tracking.tracking_uri))
    _export_tracking_secret(tracking_uri)
    experiment = args.experiment or probe.tracking.experiment_name
    forced = {"tracking": {"tracking_uri": tracking_uri, "experiment_name": experiment}}
    mid_cfg, warnings = check_space(space, pre, sets, forced)
    if space.is_eval_metric:
        _check_evaluations(space, mid_cfg.eval, warnings)
    # the spec is stored with the study: no password in it (workers take it from the environment)
    pre = mask_secrets(pre)
    blob = json.dumps({"space": space.to_dict(), "pre": pre, "sets": sets}, sort_keys=True, default=str)
    spec = {
        "version": 1,
        "space": space.to_dict(),
        "space_file": str(space.source),
        "pre_layers": pre,
        "sets": sets,
        "fingerprint": hashlib.sha256(blob.encode()).hexdigest()[:16],
        "tracking_uri": mask_uri(tracking_uri),
        "experiment": experiment,
        "tracking_enabled": bool(probe.tracking.enabled),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "midpoint": {k: v for k, v in flat_config(mid_cfg).items() if k in {p.key for p in space.params}},
    }
    return spec, mid_cfg, warnings


def _check_evaluations(space: SearchSpace, e: Any, warnings: list[str]) -> None:
    """An eval/... objective needs trials that evaluate; pruning needs evaluations before the last one."""
    if not e.benchmarks:
        raise SpaceError(f"objective.metric {space.metric}: eval.benchmarks is empty, so no trial is ever evaluated")
    if not e.after_training and not e.every_steps:
        raise SpaceError(
            f"objective.metric {space.metric}: trials never evaluate "
            "(eval.after_training is false and eval.every_steps is 0)"
        )
    intermediate = e.every_steps > 0 or bool(e.at_budget_fractions)
    if space.pruner["type"] != "none" and not intermediate:
        warnings.append(
            f"no intermediate evaluations (eval.every_steps = 0, no eval.at_budget_fractions): "
            f"the {space.pruner['type']} pruner can never stop a trial early; "
            "set e.g. base: {eval: {at_budget_fractions: [0.25, 0.5, 0.75]}}"
        )


def _export_tracking_secret(uri: str | None) -> None:
    """A tracking URI with a password is stored masked (study spec, configs, params); this process, its in-process
    workers and the worker processes it starts complete it from $MLFLOW_TRACKING_URI
    (harness.tracking.resolve_tracking_uri). Workers started elsewhere (`python -m sweeps.worker`) need
    MLFLOW_TRACKING_URI set to the full URI."""
    if uri and has_secret(uri):
        os.environ["MLFLOW_TRACKING_URI"] = uri


def _parent_tracker(spec: dict[str, Any], study_name: str, storage_url: str, run_id: str | None) -> Tracker:
    tags = {
        "harness.role": "sweep",
        "harness.sweep": study_name,
        "optuna.study": study_name,
        "optuna.storage": redact_url(storage_url),
    }
    return Tracker(
        enabled=spec.get("tracking_enabled", True),
        tracking_uri=spec["tracking_uri"],
        experiment=spec["experiment"],
        run_name=f"sweep-{study_name}",
        run_id=run_id,
        tags=tags,
    )


def _validated_space(args: argparse.Namespace, storage_url: str) -> tuple[Any, dict[str, Any] | None, Any]:
    """Everything is validated before the storage (an sqlite optuna.db) is created; returns (the space, the spec
    to store, the midpoint config), all None when joining a study without a space file."""
    if args.space:
        space = load_space(args.space)
        new_spec, mid_cfg, warnings = prepare_spec(space, args)
        preflight(sweep_configs(space, mid_cfg))  # models, training sets and benchmarks resolve
        for w in warnings:
            print(f"warning: {w}", file=sys.stderr)
        return space, new_spec, mid_cfg
    db = sqlite_file(storage_url)
    if args.study_name and db is not None and not db.is_file():  # joining: never create an empty storage
        raise SpaceError(
            f"no study '{args.study_name}' in {redact_url(storage_url)} (no such file); create it with "
            f"`harness sweep SPACE.yaml --study-name {args.study_name}`"
        )
    return None, None, None


def _create_or_load(args: argparse.Namespace, storage: Any, storage_url: str, space: Any) -> Any:
    import optuna

    if args.space:
        name = args.study_name or Path(str(space.source)).stem
        return optuna.create_study(storage=storage, study_name=name, direction=space.direction, load_if_exists=True)
    if not args.study_name:
        raise SpaceError("give a search-space file, or --study-name to join (or report on) an existing study")
    name = args.study_name
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        raise SpaceError(
            f"no study '{name}' in {redact_url(storage_url)}; "
            f"create it with `harness sweep SPACE.yaml --study-name {name}`"
        ) from None


def _study_spec(
    study: Any, new_spec: dict[str, Any] | None, args: argparse.Namespace, storage_url: str
) -> tuple[dict[str, Any], bool]:
    """The stored spec (a new study takes ``new_spec``) with --trials applied; returns (spec, whether it is new)."""
    name = study.study_name
    spec = stored_spec(study)
    if spec is None and new_spec is None:
        raise SpaceError(
            f"study '{name}' in {redact_url(storage_url)} was not created by `harness sweep` (no search space stored)"
        )
    if spec is not None and new_spec is not None and spec.get("fingerprint") != new_spec["fingerprint"]:
        raise SpaceError(
            f"study '{name}' already exists in {redact_url(storage_url)} with a different search space or base config "
            f"(stored from {spec.get('space_file')}); pick another --study-name, "
            "or omit the space file to continue the stored one"
        )
    created = spec is None
    if created:
        spec = new_spec
        spec["trials"] = args.trials if args.trials is not None else 20
    elif args.trials is not None:
        spec["trials"] = args.trials
    return spec, created


def _log_new_sweep(parent: Tracker, spec: dict[str, Any], mid_cfg: Any) -> None:
    space = spec["space"]
    params = {
        "metric": space["objective"]["metric"],
        "direction": space["objective"]["direction"],
        "sampler": space["sampler"]["type"],
        "pruner": space["pruner"]["type"],
        "params": ",".join(space["params"]),
        "space_file": spec["space_file"],
    }
    parent.log_params({"sweep": params})
    parent.log_text(yaml.safe_dump(space, sort_keys=False), "sweep/space.yaml")
    parent.log_text(yaml.safe_dump(mask_secrets(mid_cfg.to_dict()), sort_keys=False), "sweep/midpoint_config.yaml")


def _open_study(args: argparse.Namespace, storage_url: str) -> tuple[Any, dict[str, Any], Tracker]:
    """Create or join the study; returns (study, spec, parent tracker)."""
    import optuna

    space, new_spec, mid_cfg = _validated_space(args, storage_url)
    study = _create_or_load(args, open_storage(storage_url, heartbeat_interval=None), storage_url, space)
    name = study.study_name
    spec, created = _study_spec(study, new_spec, args, storage_url)
    parent = _parent_tracker(spec, name, storage_url, spec.get("parent_run_id"))
    if created:
        spec["parent_run_id"] = parent.run_id
        _log_new_sweep(parent, spec, mid_cfg)
    parent.set_tags({"harness.sweep.trials": spec["trials"]})
    study.set_user_attr(SPEC_ATTR, spec)
    # Reopen with heartbeats configured, so this process can fail stale trials too.
    hb_storage = open_storage(
        storage_url,
        heartbeat_interval=args.heartbeat_interval,
        grace_period=args.grace_period,
        stale_callback=stale_trial_callback(spec.get("tracking_uri")),
    )
    study = optuna.load_study(study_name=name, storage=hb_storage)
    return study, spec, parent


def _short(params: dict[str, Any]) -> str:
    out = []
    for k, v in params.items():
        k = k.split(".", 1)[-1]
        out.append(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}")
    return " ".join(out)


def _trial_line(t: Any) -> str:
    val = f"{t.value:.4f}" if t.value is not None else "-"
    wall = t.user_attrs.get("wall_s")
    pruned = f"pruned at step {t.user_attrs['pruned_at_step']}" if "pruned_at_step" in t.user_attrs else ""
    extra = t.user_attrs.get("fail_reason") or pruned
    return (
        f"trial {t.number:3d} {t.state.name:8s} {val:>8s}  {_short(t.params)}"
        + (f"  ({wall:.0f}s)" if wall else "")
        + (f"  [{extra[:160]}]" if extra else "")
    )


class _Progress:
    def __init__(self, study: Any):
        self.study = study
        self.seen: set[int] = set()

    def __call__(self) -> None:
        from optuna.trial import TrialState

        states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
        for t in self.study.get_trials(deepcopy=False, states=states):
            if t.number not in self.seen:
                self.seen.add(t.number)
                print(_trial_line(t), flush=True)


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


class _WorkerPool:
    """This machine's worker processes of one study (``python -m sweeps.worker``), each with its log file."""

    def __init__(
        self, study: Any, spec: dict[str, Any], storage_url: str, args: argparse.Namespace, deadline: float | None
    ):
        self.study, self.spec, self.args, self.deadline = study, spec, args, deadline
        self.log_dir = Path(args.output_dir) / study.study_name / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.env = dict(os.environ, HARNESS_SWEEP_STORAGE=storage_url, PYTHONUNBUFFERED="1")
        if "OMP_NUM_THREADS" not in os.environ:  # N workers x all cores each would oversubscribe the CPU
            self.env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // max(args.workers, 1)))
        self.max_restarts = args.workers if args.max_restarts is None else args.max_restarts
        self.procs: dict[int, tuple[subprocess.Popen, Any, Path]] = {}
        self.next_index = 0
        self.restarts = 0

    def spawn(self) -> None:
        i = self.next_index
        self.next_index += 1
        log_path = self.log_dir / f"worker-{i}.log"
        fh = log_path.open("a")
        a = self.args
        cmd = [
            sys.executable,
            "-m",
            "sweeps.worker",
            "--study",
            self.study.study_name,
            "--output-dir",
            str(a.output_dir),
        ]
        cmd += ["--worker-index", str(i), "--heartbeat-interval", str(a.heartbeat_interval)]
        cmd += ["--grace-period", str(a.grace_period)]
        if self.deadline is not None:
            cmd += ["--deadline", str(self.deadline)]
        # Own session: a terminal Ctrl-C reaches only this process, which then stops the workers once, cleanly.
        p = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        self.procs[i] = (p, fh, log_path)
        print(f"[sweep] worker {i} started (pid {p.pid}, log {log_path})", flush=True)

    def reap(self) -> None:
        """Forget the workers that exited; a dead one's running trials are failed and, while the study has trials
        left to run, restarts are left and the deadline has not passed, another worker takes its place."""
        for i, (p, fh, log_path) in list(self.procs.items()):
            rc = p.poll()
            if rc is None:
                continue
            fh.close()
            del self.procs[i]
            if rc == 0:
                print(f"[sweep] worker {i} finished", flush=True)
                continue
            reason = f"worker {i} (pid {p.pid}) died: " + (f"killed by signal {-rc}" if rc < 0 else f"exit code {rc}")
            failed = fail_trials_of_dead_worker(self.study, p.pid, reason, self.spec.get("tracking_uri"))
            print(
                f"[sweep] {reason}; its running trial(s) {failed or 'none'} marked FAIL. "
                f"Last log lines:\n{_tail(log_path)}",
                flush=True,
            )
            budget_left = len(counted_trials(self.study)) < int(self.spec["trials"])
            in_time = self.deadline is None or time.time() < self.deadline
            if budget_left and self.restarts < self.max_restarts and in_time:
                self.restarts += 1
                self.spawn()

    def stop(self) -> None:
        """Stop every worker (SIGTERM, then SIGKILL after 30 s) and fail the trials they were running."""
        for p, _, _ in self.procs.values():
            p.send_signal(signal.SIGTERM)  # the worker turns it into KeyboardInterrupt: trial FAIL, MLflow run closed
        end = time.monotonic() + 30
        for i, (p, fh, _) in self.procs.items():
            try:
                p.wait(timeout=max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            fh.close()
            reason = f"worker {i} (pid {p.pid}) stopped: sweep interrupted"
            fail_trials_of_dead_worker(self.study, p.pid, reason, self.spec.get("tracking_uri"))


def run_pool(
    study: Any, spec: dict[str, Any], storage_url: str, args: argparse.Namespace, deadline: float | None
) -> bool:
    """Run --workers worker processes on this machine, replacing dead ones; returns False if interrupted."""
    pool = _WorkerPool(study, spec, storage_url, args, deadline)
    for _ in range(args.workers):
        pool.spawn()
    progress = _Progress(study)
    previous = signal.signal(signal.SIGTERM, _interrupt)  # `kill PID` stops the sweep like Ctrl-C does
    try:
        while pool.procs:
            time.sleep(1.0)
            pool.reap()
            progress()
    except KeyboardInterrupt:
        print("[sweep] interrupted: stopping workers (their running trials are marked FAIL)", flush=True)
        pool.stop()
        return False
    finally:
        signal.signal(signal.SIGTERM, previous)
    progress()
    return True


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def finalize(
    study: Any, spec: dict[str, Any], parent: Tracker, args: argparse.Namespace, status: str | None = None
) -> dict[str, Path]:
    """Write the summaries next to the trials and log them (and the best trial) to the parent run."""
    from optuna.trial import TrialState

    out = Path(args.output_dir) / study.study_name / "summary"
    written = write_summaries(study, out)
    for p in written.values():
        parent.log_artifact(p, "sweep")
    trials = study.get_trials(deepcopy=False)
    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)
    counts = {s: sum(t.state == s for t in trials) for s in states}
    metrics = {
        "sweep/trials_complete": counts[TrialState.COMPLETE],
        "sweep/trials_pruned": counts[TrialState.PRUNED],
        "sweep/trials_failed": counts[TrialState.FAIL],
    }
    if counts[TrialState.COMPLETE]:
        best = study.best_trial
        metrics["sweep/best_value"] = best.value
        parent.set_tags(
            {
                "best.trial_number": best.number,
                "best.mlflow_run_id": best.user_attrs.get("mlflow_run_id", ""),
                **{f"best.{k}": v for k, v in best.params.items()},
            }
        )
    parent.log_metrics(metrics, step=len(trials))
    if status is None:
        status = "FINISHED" if not counts[TrialState.RUNNING] else None  # trials still running elsewhere: leave it open
    if status:
        parent.finish(status)
    return written


def print_report(study: Any, written: dict[str, Path], parent: Tracker) -> None:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)
    counts = ", ".join(f"{sum(t.state == s for t in trials)} {s.name.lower()}" for s in states)
    print(f"\nstudy {study.study_name}: {len(trials)} trials ({counts})")
    for t in sorted(trials, key=lambda t: t.number):
        print("  " + _trial_line(t))
    if any(t.state == TrialState.COMPLETE for t in trials):
        b = study.best_trial
        print(
            f"best: trial {b.number} value {b.value:.4f}  {_short(b.params)}  "
            f"(MLflow run {b.user_attrs.get('mlflow_run_id', '-')})"
        )
    if written:
        parent_run = f"  (MLflow parent run {parent.run_id})" if parent.enabled else ""
        print(f"summaries: {next(iter(written.values())).parent}{parent_run}")


def _dry_run(args: argparse.Namespace, storage_url: str) -> int:
    """``harness sweep SPACE --dry-run``: validate the space and print the midpoint trial's config; create nothing."""
    if not args.space:
        print("error: --dry-run needs a search-space file", file=sys.stderr)
        return 2
    space = load_space(args.space)
    _, mid_cfg, warnings = prepare_spec(space, args)
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    try:  # a dry run loads no data; a model this machine cannot load is only noted
        preflight(sweep_configs(space, mid_cfg), data=False)
    except ConfigError as e:
        print(f"note: a real sweep on this machine would stop: {e}", file=sys.stderr)
    print(f"# study: {args.study_name or Path(str(space.source)).stem}  storage: {redact_url(storage_url)}")
    print(f"# objective: {space.direction} {space.metric}; sampler {space.sampler}; pruner {space.pruner}")
    print("# params: " + ", ".join(f"{p.key} ({p.type})" for p in space.params))
    print("# the midpoint trial's resolved config:")
    print(yaml.safe_dump(mask_secrets(mid_cfg.to_dict()), sort_keys=False))
    return 0


def _run_trials(
    study: Any, spec: dict[str, Any], storage_url: str, args: argparse.Namespace, launcher: Any = None
) -> bool:
    """Run trials here (--workers 0), in a pool of worker processes or in Slurm jobs; returns False if interrupted."""
    deadline = time.time() + args.timeout if args.timeout else None
    if launcher is not None and launcher.name == "slurm":
        from sweeps.slurm_workers import run_slurm_pool

        return run_slurm_pool(study, spec, storage_url, args, deadline, launcher.cfg, _Progress(study))
    if args.workers == 0:
        try:
            run_worker(
                storage_url,
                study.study_name,
                output_root=args.output_dir,
                heartbeat_interval=args.heartbeat_interval,
                grace_period=args.grace_period,
                deadline=deadline,
                progress=not args.no_progress,
            )
        except KeyboardInterrupt:
            return False
        return True
    return run_pool(study, spec, storage_url, args, deadline)


def _check_slurm_sweep(args: argparse.Namespace, storage_url: str, launcher: Any) -> None:
    """Before the storage is created: an RDB storage and a tracking server every node reaches, a cluster answering."""
    from harness.launchers.slurm import check_tracking_uri
    from sweeps.slurm_workers import check_storage

    if args.workers < 1:
        raise ConfigError("--workers: --launcher slurm needs at least one worker job")
    check_storage(storage_url)
    if args.space:
        probe = prepare_spec(load_space(args.space), args)[0]
        uri = resolve_tracking_uri(probe["tracking_uri"]) if probe.get("tracking_enabled", True) else None
    else:
        uri = resolve_tracking_uri(args.tracking_uri)
    if uri:
        for w in check_tracking_uri(uri):
            print(f"warning: {w}", file=sys.stderr)
    launcher.check([])


def cmd_sweep(args: argparse.Namespace) -> int:
    if args.workers < 0:
        print("error: --workers must be >= 0", file=sys.stderr)
        return 2
    if args.trials is not None and args.trials < 0:
        print("error: --trials must be >= 0", file=sys.stderr)
        return 2
    storage_url = normalize_storage_url(args.storage)
    _export_tracking_secret(args.tracking_uri)
    launcher = launcher_from_args(args)  # bad --slurm-* values: before anything is created
    if args.dry_run:
        return _dry_run(args, storage_url)
    if launcher.name == "slurm" and not args.report_only:
        _check_slurm_sweep(args, storage_url, launcher)
    study, spec, parent = _open_study(args, storage_url)
    objective = spec["space"]["objective"]
    print(
        f"[sweep] study {study.study_name} in {redact_url(storage_url)}: target {spec['trials']} trials, "
        f"{args.workers} worker(s) here; objective {objective['direction']} {objective['metric']}",
        flush=True,
    )
    completed = True
    if not args.report_only:
        completed = _run_trials(study, spec, storage_url, args, launcher)
        if completed:
            settle_running_trials(study, args.grace_period)
    written = finalize(study, spec, parent, args, status=None if completed else "KILLED")
    print_report(study, written, parent)
    if parent.enabled and not args.no_report:
        report_at_end(
            spec["tracking_uri"],
            spec["experiment"],
            args.report_dir or str(Path("reports") / f"sweep-{study.study_name}"),
            sweep_run_id=parent.run_id,
            sweep_only=True,
            retry_hint=f"harness report --experiment {spec['experiment']} --sweep {parent.run_id} --sweep-only",
        )
    from optuna.trial import TrialState

    if not completed:
        return 130
    complete = any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False))
    return 0 if complete or args.report_only else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m sweeps.cli",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=SWEEP_EPILOG,
        description="Search hyperparameters with Optuna (same as `harness sweep`).",
    )
    _add_arguments(p)
    return run_command(cmd_sweep, p.parse_args(argv))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
