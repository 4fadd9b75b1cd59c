"""Optuna storage, the sweep's shared spec, failing trials of dead workers, and end-of-sweep summaries.

The study's user attributes hold everything a worker needs (the search space, the config layers,
the MLflow parent run), so a worker on any machine only needs the storage URL and the study name.
"""

from __future__ import annotations

import json
import os
import socket
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.secrets import mask_uri
from harness.tracking import resolve_tracking_uri

DEFAULT_STORAGE = "sqlite:///optuna.db"
SPEC_ATTR = "harness.sweep_spec"


def normalize_storage_url(url: str | None) -> str:
    """Default to a local sqlite file; make relative sqlite paths absolute (workers may chdir). Creates nothing:
    :func:`open_storage` makes the file's folder, once the sweep has been validated."""
    url = url or os.environ.get("HARNESS_SWEEP_STORAGE") or DEFAULT_STORAGE
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////") and url != "sqlite:///:memory:":
        url = f"sqlite:///{Path(url[len('sqlite:///') :]).resolve()}"
    return url


def sqlite_file(url: str) -> Path | None:
    """The file of an ``sqlite:///`` storage URL (None for other databases and in-memory sqlite)."""
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        return Path(url[len("sqlite:///") :])
    return None


def redact_url(url: str) -> str:
    """The storage URL without its password (safe to print and log): the project's one masking helper."""
    return mask_uri(url)


def open_storage(
    url: str,
    *,
    heartbeat_interval: int | None = 10,
    grace_period: int | None = 60,
    stale_callback: Callable[[Any, Any], None] | None = None,
):
    """An RDBStorage; with a ``heartbeat_interval`` (None: no heartbeats) a trial whose process died is failed by
    whoever looks next, and ``stale_callback(study, trial)`` is called for it."""
    import optuna

    engine_kwargs: dict[str, Any] = {}
    if sqlite_file(url) is not None:
        sqlite_file(url).parent.mkdir(parents=True, exist_ok=True)
    if url.startswith("sqlite"):
        # Several processes write one file: wait for the lock instead of "database is locked".
        engine_kwargs["connect_args"] = {"timeout": 120}
    else:
        engine_kwargs["pool_pre_ping"] = True
    hb: dict[str, Any] = {}
    if heartbeat_interval:
        hb = {
            "heartbeat_interval": int(heartbeat_interval),
            "grace_period": int(grace_period or 2 * heartbeat_interval),
            "heartbeat_stale_trial_callback": stale_callback,
        }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **hb)


def get_spec(study) -> dict[str, Any] | None:
    raw = study.user_attrs.get(SPEC_ATTR)
    return json.loads(raw) if isinstance(raw, str) else raw


def counted_trials(study) -> list:
    """Trials that use up the budget: finished ones and running ones (a dead worker's will become FAIL)."""
    from optuna.trial import TrialState

    return study.get_trials(
        deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)
    )


def fail_stale(study) -> None:
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def mark_mlflow_killed(tracking_uri: str | None, run_id: str | None, reason: str) -> None:
    """Close the MLflow child run of a trial whose worker died (it would otherwise stay RUNNING)."""
    if not run_id:
        return
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(resolve_tracking_uri(tracking_uri))
        client.set_tag(run_id, "harness.fail_reason", reason[:5000])
        client.set_tag(run_id, "optuna.state", "FAIL")
        client.set_terminated(run_id, status="KILLED")
    except Exception as e:  # the study matters more than the MLflow bookkeeping
        print(f"warning: could not mark MLflow run {run_id} as killed: {e}", flush=True)


def stale_trial_callback(tracking_uri: str | None) -> Callable[[Any, Any], None]:
    def _cb(study, trial) -> None:
        reason = (
            f"heartbeat stale: worker pid {trial.user_attrs.get('worker_pid')} "
            f"on {trial.user_attrs.get('worker_host')} stopped reporting (killed or lost); failed by another worker"
        )
        print(f"[sweep] trial {trial.number} failed: {reason}", flush=True)
        mark_mlflow_killed(tracking_uri, trial.user_attrs.get("mlflow_run_id"), reason)

    return _cb


def fail_trials_of_dead_worker(
    study, pid: int, reason: str, tracking_uri: str | None, host: str | None = None
) -> list[int]:
    """Fail the RUNNING trials that worker ``pid`` on this host was running (the parent saw it die)."""
    import optuna
    from optuna.trial import TrialState

    host = host or socket.gethostname()
    storage = study._storage
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.user_attrs.get("worker_pid") != pid or t.user_attrs.get("worker_host") != host:
            continue
        try:
            storage.set_trial_user_attr(t._trial_id, "fail_reason", reason)
            if storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                failed.append(t.number)
                mark_mlflow_killed(tracking_uri, t.user_attrs.get("mlflow_run_id"), reason)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # its heartbeat went stale and another worker failed it first
    return failed


def settle_running_trials(study, grace_period: int | None, host: str | None = None, poll: float = 1.0) -> None:
    """After this machine's workers exit: wait (at most one grace period) for its leftover RUNNING trials to be failed.

    Trials running on other machines (another ``worker_host``) are left alone.
    """
    from optuna.trial import TrialState

    host = host or socket.gethostname()
    deadline = time.monotonic() + (grace_period or 0) + 5
    while True:
        fail_stale(study)
        mine = [
            t
            for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if t.user_attrs.get("worker_host") in (None, host)
        ]
        if not mine or time.monotonic() > deadline:
            return
        time.sleep(poll)


# --------------------------------------------------------------------------------------------
# Summaries


def trial_record(t) -> dict[str, Any]:
    return {
        "number": t.number,
        "state": t.state.name,
        "value": t.value,
        "params": t.params,
        "user_attrs": t.user_attrs,
        "intermediate_values": {str(k): v for k, v in sorted(t.intermediate_values.items())},
        "datetime_start": t.datetime_start.isoformat() if t.datetime_start else None,
        "datetime_complete": t.datetime_complete.isoformat() if t.datetime_complete else None,
        "duration_s": (t.datetime_complete - t.datetime_start).total_seconds()
        if t.datetime_complete and t.datetime_start
        else None,
    }


def write_summaries(study, out_dir: str | Path) -> dict[str, Path]:
    """best_trial.json, trials.csv, importances.json and PNG plots in ``out_dir``; returns what was written.

    Each piece is optional: importances need >= 2 complete trials with differing values; a piece
    that cannot be produced is explained in ``summary_notes.txt`` instead of failing the sweep.
    """
    from optuna.trial import TrialState

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    notes: list[str] = []
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    counts = {s.name: sum(t.state == s for t in trials) for s in TrialState}
    summary: dict[str, Any] = {
        "study": study.study_name,
        "direction": study.direction.name,
        "n_trials": len(trials),
        "states": counts,
    }
    spec = get_spec(study) or {}
    if spec:
        summary["objective"] = spec.get("space", {}).get("objective")
    if complete:
        best = study.best_trial
        summary["best_trial"] = trial_record(best)
    else:
        notes.append("best_trial: no complete trial")
    p = out / "best_trial.json"
    p.write_text(json.dumps(summary, indent=2, sort_keys=True, default=str))
    written["best_trial"] = p

    try:
        df = study.trials_dataframe(
            attrs=(
                "number",
                "value",
                "state",
                "params",
                "user_attrs",
                "datetime_start",
                "datetime_complete",
                "duration",
            )
        )
        p = out / "trials.csv"
        df.to_csv(p, index=False)
        written["trials"] = p
    except Exception as e:
        notes.append(f"trials.csv: {e!r}")

    importances = _importances(study, complete, notes)
    if importances:
        p = out / "importances.json"
        p.write_text(json.dumps(importances, indent=2, sort_keys=True))
        written["importances"] = p

    written.update(_plots(study, out, complete, importances, notes))
    if notes:
        p = out / "summary_notes.txt"
        p.write_text("\n".join(notes) + "\n")
        written["notes"] = p
    return written


def _importances(study, complete: list, notes: list[str]) -> dict[str, Any] | None:
    """Hyperparameter importances (fANOVA when scikit-learn is installed, else PED-ANOVA), or None with the reason
    in ``notes``."""
    import optuna

    if len(complete) < 2 or len({t.value for t in complete}) < 2:
        notes.append(
            f"importances: need >= 2 complete trials with different objective values (have {len(complete)} complete, "
            f"{len({t.value for t in complete})} distinct value(s))"
        )
        return None
    evaluators = []
    try:
        import sklearn  # noqa: F401  (fANOVA fits random forests)

        evaluators.append(("fanova", optuna.importance.FanovaImportanceEvaluator(seed=0)))
    except ImportError:
        notes.append("importances: scikit-learn not installed, fANOVA skipped")
    evaluators.append(("ped_anova", optuna.importance.PedAnovaImportanceEvaluator()))
    for name, ev in evaluators:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                imp = optuna.importance.get_param_importances(study, evaluator=ev)
            return {"evaluator": name, "importances": {k: float(v) for k, v in imp.items()}}
        except Exception as e:
            notes.append(f"importances ({name}): {e!r}")
    return None


def _plots(study, out: Path, complete: list, importances: dict | None, notes: list[str]) -> dict[str, Path]:
    written: dict[str, Path] = {}
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
        from optuna.visualization import matplotlib as ovm
    except Exception as e:
        notes.append(f"plots: matplotlib unavailable ({e!r})")
        return written
    plots: list[tuple[str, Callable[[], Any]]] = []
    if complete:
        plots.append(("optimization_history", lambda: ovm.plot_optimization_history(study)))
        plots.append(("slice", lambda: ovm.plot_slice(study)))
    if any(t.intermediate_values for t in study.get_trials(deepcopy=False)):
        plots.append(("intermediate_values", lambda: ovm.plot_intermediate_values(study)))
    if importances:

        def _imp():
            fig, ax = plt.subplots(figsize=(6, 0.5 + 0.4 * len(importances["importances"])))
            items = sorted(importances["importances"].items(), key=lambda kv: kv[1])
            ax.barh([k for k, _ in items], [v for _, v in items])
            ax.set_xlabel(f"importance ({importances['evaluator']})")
            ax.set_title("Hyperparameter importances")
            return ax

        plots.append(("param_importances", _imp))
    for name, make in plots:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = make()
            fig = _figure_of(ax)
            p = out / f"{name}.png"
            fig.savefig(p, dpi=100, bbox_inches="tight")
            plt.close(fig)
            written[name] = p
        except Exception as e:
            notes.append(f"{name}.png: {e!r}")
            plt.close("all")
    return written


def _figure_of(ax: Any):
    import numpy as np

    if isinstance(ax, np.ndarray):
        ax = ax.flat[0]
    return ax.figure
