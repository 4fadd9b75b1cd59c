"""MLflow tracking: params (resolved config), per-step metrics, artifacts; resumable by run id.

Default store: a sqlite file ``mlflow.db`` in the working directory; ``MLFLOW_TRACKING_URI`` or
``tracking.tracking_uri`` points elsewhere (a server, another file). Only the main process logs.
Secrets (e.g. ``MLFLOW_TRACKING_TOKEN``) are read by MLflow from the environment and never logged.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def resolve_tracking_uri(uri: str | None) -> str:
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


class Tracker:
    """Thin wrapper over one MLflow run; a disabled tracker (non-main process, or off) does nothing."""

    def __init__(self, *, enabled: bool, tracking_uri: str | None, experiment: str, run_name: str, run_id: str | None = None, tags: dict[str, str] | None = None, parent_run_id: str | None = None):
        self.enabled = enabled
        self.run_id: str | None = run_id
        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        if not enabled:
            return
        import mlflow
        from mlflow.tracking import MlflowClient

        mlflow.set_tracking_uri(self.tracking_uri)
        self.client = MlflowClient(self.tracking_uri)
        exp = self.client.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(experiment)
        if run_id is None:
            all_tags = dict(tags or {})
            if parent_run_id:
                all_tags["mlflow.parentRunId"] = parent_run_id
            run = self.client.create_run(exp_id, run_name=run_name, tags=all_tags)
            self.run_id = run.info.run_id
        else:
            self.client.update_run(run_id, status="RUNNING")
        self.experiment_id = exp_id

    def log_params(self, params: dict[str, Any]) -> None:
        if not self.enabled:
            return
        from mlflow.entities import Param

        flat = flatten(params)
        existing = self.client.get_run(self.run_id).data.params
        todo = [Param(k, str(v)[:6000]) for k, v in flat.items() if k not in existing]
        for i in range(0, len(todo), 100):
            self.client.log_batch(self.run_id, params=todo[i:i + 100])

    def set_tags(self, tags: dict[str, Any]) -> None:
        if self.enabled:
            for k, v in tags.items():
                self.client.set_tag(self.run_id, k, str(v))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if not self.enabled:
            return
        import time

        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, step) for k, v in metrics.items() if v is not None and math.isfinite(float(v))]
        for i in range(0, len(items), 500):
            self.client.log_batch(self.run_id, metrics=items[i:i + 500])

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
            self.client.log_artifact(self.run_id, str(p), str(Path(name).parent) if Path(name).parent != Path(".") else None)

    def log_dict(self, data: Any, name: str) -> None:
        self.log_text(json.dumps(data, indent=2, sort_keys=True, default=str), name)

    def finish(self, status: str = "FINISHED") -> None:
        if self.enabled and self.run_id:
            self.client.set_terminated(self.run_id, status=status)
