"""MLflow tracking: params (resolved config), per-step metrics, artifacts; resumable by run id.

Default store: a sqlite file ``mlflow.db`` in the working directory; ``MLFLOW_TRACKING_URI`` or
``tracking.tracking_uri`` points elsewhere (a server, another file). Only the main process logs.
Secrets (e.g. ``MLFLOW_TRACKING_TOKEN``) are read by MLflow from the environment and never logged; a password
inside the URI itself is masked (``harness.secrets``) in every param, tag and message, and a masked URI read
back from a saved config is completed from ``$MLFLOW_TRACKING_URI`` before connecting.

Resume: the run id is kept in the checkpoint. Metric points logged after that checkpoint (by the process that
was interrupted) are deleted from the run when it resumes (:meth:`Tracker.truncate_history`), so the history
reads as one run; a store without a delete path (an ``mlflow server`` over HTTP) keeps them, with a warning.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from harness.secrets import mask_secrets, mask_uri, unmask_uri

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def resolve_tracking_uri(uri: str | None) -> str:
    """The URI to connect to: ``uri``, else ``$MLFLOW_TRACKING_URI``, else the local sqlite file.

    A masked URI (a password replaced by ``***``, as saved configs hold it) is completed from ``$MLFLOW_TRACKING_URI``;
    without a match it is a :class:`~harness.secrets.SecretMissingError`.
    """
    env = os.environ.get("MLFLOW_TRACKING_URI")
    return unmask_uri(uri or env or DEFAULT_TRACKING_URI, [env])


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr, flush=True)


def mark_run_failed(tracking_uri: str | None, run_id: str | None) -> None:
    """Set a run that is not running any more (its set-up failed) to FAILED; never raises."""
    if not run_id:
        return
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(resolve_tracking_uri(tracking_uri))
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_terminated(run_id, status="FAILED")
    except Exception:  # noqa: BLE001 - best effort on the way out of an error
        pass


class Tracker:
    """Thin wrapper over one MLflow run; a disabled tracker (non-main process, or off) does nothing.

    ``run_id``: continue that run (resume). When the store no longer has it (``mlflow.db`` lost or the run deleted),
    a new run is created and ``new_run`` is True; ``missing_run_id`` keeps the id that was asked for.
    """

    def __init__(
        self,
        *,
        enabled: bool,
        tracking_uri: str | None,
        experiment: str,
        run_name: str,
        run_id: str | None = None,
        tags: dict[str, str] | None = None,
        parent_run_id: str | None = None,
    ):
        self.enabled = enabled
        self.run_id: str | None = run_id
        self.new_run = run_id is None
        self.missing_run_id: str | None = None
        # resolved only where it is used: a disabled tracker (other processes) needs no password from the environment
        self.tracking_uri = resolve_tracking_uri(tracking_uri) if enabled else (tracking_uri or "")
        self.display_uri = mask_uri(self.tracking_uri)
        if not enabled:
            return
        import mlflow
        from mlflow.tracking import MlflowClient

        mlflow.set_tracking_uri(self.tracking_uri)
        self.client = MlflowClient(self.tracking_uri)
        exp = self.client.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(experiment)
        if run_id is not None and not self._run_exists(run_id):
            self.missing_run_id, self.new_run = run_id, True
        if self.new_run:
            all_tags = {k: mask_uri(str(v)) for k, v in (tags or {}).items()}
            if parent_run_id:
                all_tags["mlflow.parentRunId"] = parent_run_id
            if self.missing_run_id:
                all_tags["harness.continues_run"] = self.missing_run_id
            run = self.client.create_run(exp_id, run_name=run_name, tags=all_tags)
            self.run_id = run.info.run_id
        else:
            self.client.update_run(run_id, status="RUNNING")
        self.experiment_id = exp_id

    def _run_exists(self, run_id: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_run(run_id).info.lifecycle_stage != "deleted"
        except MlflowException:
            return False

    def log_params(self, params: dict[str, Any]) -> None:
        if not self.enabled:
            return
        from mlflow.entities import Param

        flat = flatten(mask_secrets(params))
        existing = self.client.get_run(self.run_id).data.params
        todo = [Param(k, str(v)[:6000]) for k, v in flat.items() if k not in existing]
        for i in range(0, len(todo), 100):
            self.client.log_batch(self.run_id, params=todo[i : i + 100])

    def set_tags(self, tags: dict[str, Any]) -> None:
        if self.enabled:
            for k, v in tags.items():
                self.client.set_tag(self.run_id, k, mask_uri(str(v)))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if not self.enabled:
            return
        import time

        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, step) for k, v in metrics.items() if v is not None and math.isfinite(float(v))]
        for i in range(0, len(items), 500):
            self.client.log_batch(self.run_id, metrics=items[i : i + 500])

    def truncate_history(self, after_step: int, probe_key: str = "budget/fraction") -> int | None:
        """Delete this run's metric points with ``step > after_step``: what an interrupted process logged after the
        checkpoint a resumed run continues from (those steps are trained again). Returns the number of points
        deleted, or None where the store has no way to delete them (then a warning says the steps repeat).

        MLflow has no public API to delete metric points; for its SQL stores (sqlite, PostgreSQL, MySQL) the rows
        are deleted through the store's own session and the run's latest values recomputed.
        """
        if not self.enabled or self.new_run:
            return 0
        try:
            from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlMetric
            from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

            store = self.client._tracking_client.store
        except Exception:  # noqa: BLE001 - internal API moved: treat as a store without a delete path
            store = None
        if store is None or not isinstance(store, SqlAlchemyStore):
            try:
                beyond = [m.step for m in self.client.get_metric_history(self.run_id, probe_key) if m.step > after_step]
            except Exception:  # noqa: BLE001
                beyond = []
            if beyond:
                _warn(
                    f"MLflow at {self.display_uri} offers no way to delete metric points: run {self.run_id} keeps the points of steps "
                    f"{after_step + 1}-{max(beyond)} logged before the interruption, and those steps are logged again from the checkpoint "
                    f"(step {after_step}); harness reports keep the last value per step"
                )
                self.set_tags({"harness.duplicated_steps": f"{after_step + 1}-{max(beyond)}"})
            return None
        try:
            writing = store.ManagedSessionMaker(
                read_only=False
            )  # a write session (MLflow >= 3.x routes read-only ones to replicas)
        except TypeError:
            writing = store.ManagedSessionMaker()
        with writing as session:
            sel = (SqlMetric.run_uuid == self.run_id) & (SqlMetric.step > after_step)
            keys = [k for (k,) in session.query(SqlMetric.key).filter(sel).distinct()]
            n = session.query(SqlMetric).filter(sel).delete(synchronize_session=False)
            for key in keys:
                last = (
                    session.query(SqlMetric)
                    .filter(SqlMetric.run_uuid == self.run_id, SqlMetric.key == key)
                    .order_by(SqlMetric.step.desc(), SqlMetric.timestamp.desc(), SqlMetric.value.desc())
                    .first()
                )
                row = (
                    session.query(SqlLatestMetric)
                    .filter(SqlLatestMetric.run_uuid == self.run_id, SqlLatestMetric.key == key)
                    .one_or_none()
                )
                if last is None:
                    if row is not None:
                        session.delete(row)
                elif row is None:
                    session.add(
                        SqlLatestMetric(
                            run_uuid=self.run_id,
                            key=key,
                            value=last.value,
                            timestamp=last.timestamp,
                            step=last.step,
                            is_nan=last.is_nan,
                        )
                    )
                else:
                    row.value, row.timestamp, row.step, row.is_nan = last.value, last.timestamp, last.step, last.is_nan
        return int(n)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.enabled:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, name: str) -> None:
        """Log ``text`` as an artifact file ``name`` (written to a temp dir first)."""
        if not self.enabled:
            return
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / name
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text)
            self.client.log_artifact(
                self.run_id, str(p), str(Path(name).parent) if Path(name).parent != Path(".") else None
            )

    def log_dict(self, data: Any, name: str) -> None:
        self.log_text(json.dumps(data, indent=2, sort_keys=True, default=str), name)

    def finish(self, status: str = "FINISHED") -> None:
        if self.enabled and self.run_id:
            self.client.set_terminated(self.run_id, status=status)
