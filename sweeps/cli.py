"""`harness sweep`: Optuna hyperparameter search over a search-space file, trials as MLflow child runs.

Wiring (harness/cli.py): ``from sweeps.cli import add_sweep_parser, cmd_sweep``; call
``add_sweep_parser(sub)`` in ``build_parser`` and dispatch ``"sweep": cmd_sweep`` in ``main``.
Standalone: ``python -m sweeps.cli SPACE.yaml [options]``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

SWEEP_EPILOG = """examples:
  harness sweep repo_tiny --trials 20 --workers 2
  harness sweep my_space.yaml --model tiny --set train.max_steps=30 --trials 50 --workers 4
  harness sweep my_space.yaml --study-name lr-vs-buffer --storage postgresql://user@db/optuna --workers 8
  harness sweep --study-name lr-vs-buffer --storage postgresql://user@db/optuna --workers 8   # join from another machine
  harness sweep my_space.yaml --dry-run            # validate the space, print the midpoint trial's config
  harness sweep --study-name repo_tiny --report-only   # rewrite best trial / importances / plots

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
    p.add_argument("space", nargs="?", help="Search-space YAML file, or the name of one in sweeps/spaces (e.g. repo_tiny). Omit to join an existing study.")
    p.add_argument("--study-name", help="Optuna study name (default: the space file's stem). An existing study of that name is continued.")
    p.add_argument("--storage", help="Optuna storage URL: sqlite:///file.db (default: $HARNESS_SWEEP_STORAGE or sqlite:///optuna.db) or any "
                                     "SQLAlchemy URL (postgresql://..., mysql+pymysql://...) shared by several machines.")
    p.add_argument("--trials", type=int, help="Total trials of the study across all workers (default: 20 for a new study, else the stored total).")
    p.add_argument("--workers", type=int, default=1, help="Worker processes on this machine (default: 1; 0 = run trials in this process).")
    p.add_argument("--timeout", type=float, help="Seconds after which no new trial starts (running ones finish).")
    p.add_argument("--model", help="Model for every trial (default: the space base's model.name, else tiny); its preset is the lowest layer.")
    p.add_argument("--config", help="YAML config file (or preset name) applied over the model's preset.")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="Override one config field for every trial (repeatable; sampled params still win).")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: the config's, $MLFLOW_TRACKING_URI or sqlite:///mlflow.db).")
    p.add_argument("--experiment", help="MLflow experiment (default: the config's tracking.experiment_name).")
    p.add_argument("--output-dir", default="runs", help="Trial outputs go to OUTPUT_DIR/<study>/trial-<n>, worker logs and summaries next to them (default: runs).")
    p.add_argument("--heartbeat-interval", type=int, default=10, help="Seconds between a running trial's heartbeats (default: 10).")
    p.add_argument("--grace-period", type=int, default=60, help="A running trial without a heartbeat for this long is failed by the next worker that looks (default: 60).")
    p.add_argument("--max-restarts", type=int, help="Replace workers that die (killed, out of memory) up to this many times (default: --workers).")
    p.add_argument("--report-only", action="store_true", help="Run no trials: write the summaries of an existing study and log them to its MLflow parent run.")
    p.add_argument("--dry-run", action="store_true", help="Validate the space and print the midpoint trial's resolved config; create nothing.")
    p.add_argument("--data-dir", help="Prepared benchmark/training files (from `harness data prepare`); default $HARNESS_DATA_DIR or the cache. Workers inherit it.")
    p.add_argument("--no-progress", action="store_true", help="Hide per-trial progress bars (only with --workers 0; workers never show them).")
    p.add_argument("--report-dir", metavar="DIR", help="Where the sweep report (history, importances, best trial) is written at the end (default: reports/sweep-<study>/).")
    p.add_argument("--no-report", action="store_true", help="Do not write the report at the end (run `harness report --sweep-only` later).")


def add_sweep_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("sweep", help="Hyperparameter search (Optuna): pruning, parallel workers, trials as MLflow child runs.",
                              formatter_class=argparse.RawDescriptionHelpFormatter, epilog=SWEEP_EPILOG,
                              description="Search hyperparameters with Optuna; each trial trains and evaluates one config.")
    _add_arguments(p)
    return p


# --------------------------------------------------------------------------------------------


def _absolute_sqlite(uri: str) -> str:
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri[len('sqlite:///'):]).resolve()}"
    return uri


def prepare_spec(space: Any, args: argparse.Namespace) -> tuple[dict[str, Any], Any, list[str]]:
    """Validate the space on top of the CLI's layers; returns (the spec stored with the study, midpoint config, warnings)."""
    from harness.config import load_yaml, parse_override
    from harness.models import get_spec
    from harness.tracking import resolve_tracking_uri
    from sweeps.space import SpaceError, compose
    from sweeps.trial import SWEEP_DEFAULTS

    model = args.model or (space.base.get("model") or {}).get("name") or "tiny"
    pre: list[Any] = [get_spec(str(model)).preset, load_yaml(args.config) if args.config else None, SWEEP_DEFAULTS]
    sets: list[dict[str, Any]] = ([{"model": {"name": args.model}}] if args.model else []) + [parse_override(o) for o in args.overrides]
    for s in sets:
        if "tracking" in s:
            raise SpaceError("--set tracking.*: use --tracking-uri / --experiment (trials must log where the sweep's parent run is)")
    try:
        probe = compose(pre, space, sets, None, None)
    except Exception as e:
        raise SpaceError(f"the sweep's base config (model preset + --config + space base + --set) is invalid: {e}") from None
    tracking_uri = _absolute_sqlite(resolve_tracking_uri(args.tracking_uri or probe.tracking.tracking_uri))
    _export_tracking_secret(tracking_uri)
    experiment = args.experiment or probe.tracking.experiment_name
    forced = {"tracking": {"tracking_uri": tracking_uri, "experiment_name": experiment}}
    from sweeps.space import check_space

    mid_cfg, warnings = check_space(space, pre, sets, forced)
    e = mid_cfg.eval
    if space.is_eval_metric:
        if not e.benchmarks:
            raise SpaceError(f"objective.metric {space.metric}: eval.benchmarks is empty, so no trial is ever evaluated")
        if not e.after_training and not e.every_steps:
            raise SpaceError(f"objective.metric {space.metric}: trials never evaluate (eval.after_training is false and eval.every_steps is 0)")
        intermediate = e.every_steps > 0 or bool(getattr(e, "at_budget_fractions", None))
        if space.pruner["type"] != "none" and not intermediate:
            warnings.append(f"no intermediate evaluations (eval.every_steps = 0, no eval.at_budget_fractions): the {space.pruner['type']} pruner can "
                            "never stop a trial early; set e.g. base: {eval: {at_budget_fractions: [0.25, 0.5, 0.75]}}")
    from sweeps.space import flat_config
    import hashlib

    from harness.secrets import mask_secrets, mask_uri

    pre = mask_secrets(pre)  # the spec is stored with the study: no password in it (workers take it from the environment)
    fingerprint = hashlib.sha256(json.dumps({"space": space.to_dict(), "pre": pre, "sets": sets}, sort_keys=True, default=str).encode()).hexdigest()[:16]
    spec = {"version": 1, "space": space.to_dict(), "space_file": str(space.source), "pre_layers": pre, "sets": sets, "fingerprint": fingerprint,
            "tracking_uri": mask_uri(tracking_uri), "experiment": experiment, "tracking_enabled": bool(probe.tracking.enabled),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "midpoint": {k: v for k, v in flat_config(mid_cfg).items() if k in {p.key for p in space.params}}}
    return spec, mid_cfg, warnings


def _export_tracking_secret(uri: str | None) -> None:
    """A tracking URI with a password is stored masked (study spec, configs, params); this process, its in-process
    workers and the worker processes it starts complete it from $MLFLOW_TRACKING_URI (harness.tracking.resolve_tracking_uri).
    Workers started elsewhere (`python -m sweeps.worker`) need MLFLOW_TRACKING_URI set to the full URI."""
    from harness.secrets import has_secret

    if uri and has_secret(uri):
        os.environ["MLFLOW_TRACKING_URI"] = uri


def _parent_tracker(spec: dict[str, Any], study_name: str, storage_url: str, run_id: str | None):
    from harness.tracking import Tracker
    from sweeps.study import redact_url

    return Tracker(enabled=spec.get("tracking_enabled", True), tracking_uri=spec["tracking_uri"], experiment=spec["experiment"], run_name=f"sweep-{study_name}",
                   run_id=run_id, tags={"harness.role": "sweep", "harness.sweep": study_name, "optuna.study": study_name, "optuna.storage": redact_url(storage_url)})


def _open_study(args: argparse.Namespace, storage_url: str) -> tuple[Any, dict[str, Any], Any]:
    """Create or join the study; returns (study, spec, parent tracker)."""
    import optuna
    import yaml

    from harness.secrets import mask_secrets
    from harness.preflight import preflight, sweep_configs
    from sweeps.space import SpaceError, load_space
    from sweeps.study import SPEC_ATTR, get_spec, open_storage, redact_url, sqlite_file, stale_trial_callback

    new_spec = None
    if args.space:  # everything is validated before the storage (an sqlite optuna.db) is created
        space = load_space(args.space)
        new_spec, mid_cfg, warnings = prepare_spec(space, args)
        preflight(sweep_configs(space, mid_cfg))  # models, training sets and benchmarks resolve
        for w in warnings:
            print(f"warning: {w}", file=sys.stderr)
    elif args.study_name and sqlite_file(storage_url) is not None and not sqlite_file(storage_url).is_file():  # joining: never create an empty storage
        raise SpaceError(f"no study '{args.study_name}' in {redact_url(storage_url)} (no such file); create it with "
                         f"`harness sweep SPACE.yaml --study-name {args.study_name}`")
    storage = open_storage(storage_url, heartbeat_interval=None)
    if args.space:
        name = args.study_name or Path(str(space.source)).stem
        study = optuna.create_study(storage=storage, study_name=name, direction=space.direction, load_if_exists=True)
    else:
        if not args.study_name:
            raise SpaceError("give a search-space file, or --study-name to join (or report on) an existing study")
        name = args.study_name
        try:
            study = optuna.load_study(study_name=name, storage=storage)
        except KeyError:
            raise SpaceError(f"no study '{name}' in {redact_url(storage_url)}; create it with `harness sweep SPACE.yaml --study-name {name}`") from None
    spec = get_spec(study)
    if spec is None and new_spec is None:
        raise SpaceError(f"study '{name}' in {redact_url(storage_url)} was not created by `harness sweep` (no search space stored)")
    if spec is not None and new_spec is not None and spec.get("fingerprint") != new_spec["fingerprint"]:
        raise SpaceError(f"study '{name}' already exists in {redact_url(storage_url)} with a different search space or base config "
                         f"(stored from {spec.get('space_file')}); pick another --study-name, or omit the space file to continue the stored one")
    created = spec is None
    if created:
        spec = new_spec
        spec["trials"] = args.trials if args.trials is not None else 20
    elif args.trials is not None:
        spec["trials"] = args.trials
    parent = _parent_tracker(spec, name, storage_url, spec.get("parent_run_id"))
    if created:
        spec["parent_run_id"] = parent.run_id
        parent.log_params({"sweep": {"metric": spec["space"]["objective"]["metric"], "direction": spec["space"]["objective"]["direction"],
                                     "sampler": spec["space"]["sampler"]["type"], "pruner": spec["space"]["pruner"]["type"],
                                     "params": ",".join(spec["space"]["params"]), "space_file": spec["space_file"]}})
        parent.log_text(yaml.safe_dump(spec["space"], sort_keys=False), "sweep/space.yaml")
        parent.log_text(yaml.safe_dump(mask_secrets(mid_cfg.to_dict()), sort_keys=False), "sweep/midpoint_config.yaml")
    parent.set_tags({"harness.sweep.trials": spec["trials"]})
    study.set_user_attr(SPEC_ATTR, spec)
    # Reopen with heartbeats configured, so this process can fail stale trials too.
    hb_storage = open_storage(storage_url, heartbeat_interval=args.heartbeat_interval, grace_period=args.grace_period,
                              stale_callback=stale_trial_callback(spec.get("tracking_uri")))
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
    extra = t.user_attrs.get("fail_reason") or (f"pruned at step {t.user_attrs['pruned_at_step']}" if "pruned_at_step" in t.user_attrs else "")
    return f"trial {t.number:3d} {t.state.name:8s} {val:>8s}  {_short(t.params)}" + (f"  ({wall:.0f}s)" if wall else "") + (f"  [{extra[:160]}]" if extra else "")


class _Progress:
    def __init__(self, study: Any):
        self.study = study
        self.seen: set[int] = set()

    def __call__(self) -> None:
        from optuna.trial import TrialState

        for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)):
            if t.number not in self.seen:
                self.seen.add(t.number)
                print(_trial_line(t), flush=True)


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def run_pool(study: Any, spec: dict[str, Any], storage_url: str, args: argparse.Namespace, deadline: float | None) -> bool:
    """Run --workers worker processes on this machine, replacing dead ones; returns False if interrupted."""
    from sweeps.study import counted_trials, fail_trials_of_dead_worker

    name = study.study_name
    log_dir = Path(args.output_dir) / name / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, HARNESS_SWEEP_STORAGE=storage_url, PYTHONUNBUFFERED="1")
    if "OMP_NUM_THREADS" not in os.environ:  # N workers x all cores each would oversubscribe the CPU
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // max(args.workers, 1)))
    max_restarts = args.workers if args.max_restarts is None else args.max_restarts
    procs: dict[int, tuple[subprocess.Popen, Any, Path]] = {}
    next_index = 0
    restarts = 0

    def spawn() -> None:
        nonlocal next_index
        i = next_index
        next_index += 1
        log_path = log_dir / f"worker-{i}.log"
        fh = log_path.open("a")
        cmd = [sys.executable, "-m", "sweeps.worker", "--study", name, "--output-dir", str(args.output_dir), "--worker-index", str(i),
               "--heartbeat-interval", str(args.heartbeat_interval), "--grace-period", str(args.grace_period)]
        if deadline is not None:
            cmd += ["--deadline", str(deadline)]
        # Own session: a terminal Ctrl-C reaches only this process, which then stops the workers once, cleanly.
        p = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        procs[i] = (p, fh, log_path)
        print(f"[sweep] worker {i} started (pid {p.pid}, log {log_path})", flush=True)

    for _ in range(args.workers):
        spawn()
    progress = _Progress(study)
    previous = signal.signal(signal.SIGTERM, _interrupt)  # `kill PID` stops the sweep like Ctrl-C does
    try:
        while procs:
            time.sleep(1.0)
            for i, (p, fh, log_path) in list(procs.items()):
                rc = p.poll()
                if rc is None:
                    continue
                fh.close()
                del procs[i]
                if rc == 0:
                    print(f"[sweep] worker {i} finished", flush=True)
                    continue
                reason = f"worker {i} (pid {p.pid}) died: " + (f"killed by signal {-rc}" if rc < 0 else f"exit code {rc}")
                failed = fail_trials_of_dead_worker(study, p.pid, reason, spec.get("tracking_uri"))
                print(f"[sweep] {reason}; its running trial(s) {failed or 'none'} marked FAIL. Last log lines:\n{_tail(log_path)}", flush=True)
                budget_left = len(counted_trials(study)) < int(spec["trials"])
                if budget_left and restarts < max_restarts and (deadline is None or time.time() < deadline):
                    restarts += 1
                    spawn()
            progress()
    except KeyboardInterrupt:
        print("[sweep] interrupted: stopping workers (their running trials are marked FAIL)", flush=True)
        for p, _, _ in procs.values():
            p.send_signal(signal.SIGTERM)  # the worker turns it into KeyboardInterrupt: trial FAIL, MLflow run closed
        end = time.monotonic() + 30
        for i, (p, fh, _) in procs.items():
            try:
                p.wait(timeout=max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            fh.close()
            fail_trials_of_dead_worker(study, p.pid, f"worker {i} (pid {p.pid}) stopped: sweep interrupted", spec.get("tracking_uri"))
        return False
    finally:
        signal.signal(signal.SIGTERM, previous)
    progress()
    return True


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def finalize(study: Any, spec: dict[str, Any], parent: Any, args: argparse.Namespace, status: str | None = None) -> dict[str, Path]:
    """Write the summaries next to the trials and log them (and the best trial) to the parent run."""
    from optuna.trial import TrialState

    from sweeps.study import write_summaries

    out = Path(args.output_dir) / study.study_name / "summary"
    written = write_summaries(study, out)
    for p in written.values():
        parent.log_artifact(p, "sweep")
    trials = study.get_trials(deepcopy=False)
    counts = {s: sum(t.state == s for t in trials) for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)}
    metrics = {"sweep/trials_complete": counts[TrialState.COMPLETE], "sweep/trials_pruned": counts[TrialState.PRUNED], "sweep/trials_failed": counts[TrialState.FAIL]}
    if counts[TrialState.COMPLETE]:
        best = study.best_trial
        metrics["sweep/best_value"] = best.value
        parent.set_tags({"best.trial_number": best.number, "best.mlflow_run_id": best.user_attrs.get("mlflow_run_id", ""),
                         **{f"best.{k}": v for k, v in best.params.items()}})
    parent.log_metrics(metrics, step=len(trials))
    if status is None:
        status = "FINISHED" if not counts[TrialState.RUNNING] else None  # trials still running elsewhere: leave the parent open
    if status:
        parent.finish(status)
    return written


def print_report(study: Any, written: dict[str, Path], parent: Any) -> None:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    print(f"\nstudy {study.study_name}: {len(trials)} trials (" + ", ".join(f"{sum(t.state == s for t in trials)} {s.name.lower()}" for s in
                                                                   (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)) + ")")
    for t in sorted(trials, key=lambda t: t.number):
        print("  " + _trial_line(t))
    if any(t.state == TrialState.COMPLETE for t in trials):
        b = study.best_trial
        print(f"best: trial {b.number} value {b.value:.4f}  {_short(b.params)}  (MLflow run {b.user_attrs.get('mlflow_run_id', '-')})")
    if written:
        print(f"summaries: {next(iter(written.values())).parent}" + (f"  (MLflow parent run {parent.run_id})" if parent.enabled else ""))


def cmd_sweep(args: argparse.Namespace) -> int:
    import yaml

    from sweeps.study import normalize_storage_url, redact_url, settle_running_trials
    from sweeps.worker import run_worker

    if args.workers < 0:
        print("error: --workers must be >= 0", file=sys.stderr)
        return 2
    if args.trials is not None and args.trials < 0:
        print("error: --trials must be >= 0", file=sys.stderr)
        return 2
    storage_url = normalize_storage_url(args.storage)
    _export_tracking_secret(args.tracking_uri)
    if args.dry_run:
        from sweeps.space import load_space

        if not args.space:
            print("error: --dry-run needs a search-space file", file=sys.stderr)
            return 2
        space = load_space(args.space)
        spec, mid_cfg, warnings = prepare_spec(space, args)
        for w in warnings:
            print(f"warning: {w}", file=sys.stderr)
        from harness.config import ConfigError
        from harness.preflight import preflight, sweep_configs

        try:  # a dry run loads no data; a model this machine cannot load is only noted
            preflight(sweep_configs(space, mid_cfg), data=False)
        except ConfigError as e:
            print(f"note: a real sweep on this machine would stop: {e}", file=sys.stderr)
        print(f"# study: {args.study_name or Path(str(space.source)).stem}  storage: {redact_url(storage_url)}")
        print(f"# objective: {space.direction} {space.metric}; sampler {space.sampler}; pruner {space.pruner}")
        print("# params: " + ", ".join(f"{p.key} ({p.type})" for p in space.params))
        print("# the midpoint trial's resolved config:")
        from harness.secrets import mask_secrets

        print(yaml.safe_dump(mask_secrets(mid_cfg.to_dict()), sort_keys=False))
        return 0
    study, spec, parent = _open_study(args, storage_url)
    print(f"[sweep] study {study.study_name} in {redact_url(storage_url)}: target {spec['trials']} trials, {args.workers} worker(s) here; "
          f"objective {spec['space']['objective']['direction']} {spec['space']['objective']['metric']}", flush=True)
    completed = True
    if not args.report_only:
        deadline = time.time() + args.timeout if args.timeout else None
        if args.workers == 0:
            try:
                run_worker(storage_url, study.study_name, output_root=args.output_dir, heartbeat_interval=args.heartbeat_interval,
                           grace_period=args.grace_period, deadline=deadline, progress=not args.no_progress)
            except KeyboardInterrupt:
                completed = False
        else:
            completed = run_pool(study, spec, storage_url, args, deadline)
        if completed:
            settle_running_trials(study, args.grace_period)
    written = finalize(study, spec, parent, args, status=None if completed else "KILLED")
    print_report(study, written, parent)
    if parent.enabled and not args.no_report:
        from reports.cli import report_at_end

        report_at_end(spec["tracking_uri"], spec["experiment"], args.report_dir or str(Path("reports") / f"sweep-{study.study_name}"),
                      sweep_run_id=parent.run_id, sweep_only=True,
                      retry_hint=f"harness report --experiment {spec['experiment']} --sweep {parent.run_id} --sweep-only")
    from optuna.trial import TrialState

    if not completed:
        return 130
    return 0 if any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)) or args.report_only else 1


def main(argv: list[str] | None = None) -> int:
    from harness.config import ConfigError

    p = argparse.ArgumentParser(prog="python -m sweeps.cli", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=SWEEP_EPILOG,
                                description="Search hyperparameters with Optuna (same as `harness sweep`).")
    _add_arguments(p)
    args = p.parse_args(argv)
    if args.data_dir:
        os.environ["HARNESS_DATA_DIR"] = args.data_dir  # `harness` main does the same for every command
    from benchmarks.datasets import DatasetError

    try:
        return cmd_sweep(args)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    except DatasetError as e:
        print(f"data error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
