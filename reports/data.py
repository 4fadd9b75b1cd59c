"""Read an experiment's runs (and a sweep) from MLflow into pandas.

Nothing here raises on incomplete data: a run that failed, lacks a metric family or an artifact is
kept (or dropped from aggregates) and recorded in ``ExperimentData.issues``, which the report prints.
"""

from __future__ import annotations

import io
import json
import os
import re
import tempfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.secrets import mask_uri

# Metric families the report reads (full histories); everything else is ignored.
HISTORY_PREFIXES = (
    "reward/",
    "groups/",
    "rollout/",
    "zv/",
    "effective/",
    "time/",
    "tokens/",
    "flops/",
    "replay/",
    "budget/",
    "eval/",
)
EVAL_FILE = re.compile(r"^(?:.*/)?(?P<tag>[^/]+)-step(?P<step>\d+)\.jsonl$")
# Tags that describe the software/hardware a run used (shown under provenance).
ENV_TAG = re.compile(
    r"(hardware|device|gpu|cuda|cpu|platform|python|torch|transformers|accelerate|vllm|mlflow\.source\.git|version"
    r"|engine|num_processes|host)",
    re.IGNORECASE,
)
DETERMINISM = re.compile(r"(seed|determin|cudnn|cublas|benchmark_mode)", re.IGNORECASE)
# A run trained on another reward than the verifier's (``reward.kind``: random, format_only) is a control: its
# algorithm label gets this suffix, so it never merges with the verifier-reward runs of that algorithm.
VERIFIER_REWARD = "verifier"
CONTROL_MARK = " [reward="


@dataclass
class Issue:
    """Something missing or suspicious, shown in the report (``section``: where it matters)."""

    section: str
    message: str
    run_id: str | None = None
    severity: str = "warning"  # "warning" (data left out) or "note"


@dataclass
class SweepData:
    run_id: str
    name: str
    status: str
    tags: dict[str, str]
    trials: pd.DataFrame | None = None  # Optuna's trials dataframe (trials.csv)
    best: dict[str, Any] | None = None  # best_trial.json
    importances: dict[str, float] | None = None  # importances.json
    trial_runs: pd.DataFrame | None = None  # the child runs (run_id, status, trial number)
    direction: str = "maximize"


@dataclass
class ExperimentData:
    tracking_uri: str
    experiment: str
    experiment_id: str | None
    selection: str
    parent: dict[str, Any] | None = None
    runs: pd.DataFrame = field(default_factory=pd.DataFrame)  # one row per member run
    params: pd.DataFrame = field(default_factory=pd.DataFrame)  # run_id x param
    tags: pd.DataFrame = field(default_factory=pd.DataFrame)  # run_id x tag
    metrics: pd.DataFrame = field(default_factory=pd.DataFrame)  # long: run_id, key, step, value, timestamp
    samples: pd.DataFrame = field(
        default_factory=pd.DataFrame
    )  # long: run_id, tag, step, benchmark, id, sample, reward
    summaries: dict[str, dict] = field(default_factory=dict)
    final_steps: dict[str, int] = field(default_factory=dict)  # run_id -> step of the last evaluation
    planned: list[str] = field(default_factory=list)  # the parent's matrix.json members ("algo|model|seed")
    sweep: SweepData | None = None
    issues: list[Issue] = field(default_factory=list)
    _index: dict | None = field(default=None, repr=False)

    def issue(self, section: str, message: str, run_id: str | None = None, severity: str = "warning") -> None:
        self.issues.append(Issue(section, message, run_id, severity))

    @property
    def finished(self) -> pd.DataFrame:
        """Member runs used in aggregates (``include`` is False for failed/killed/running runs)."""
        if self.runs.empty:
            return self.runs
        return self.runs[self.runs["include"]]

    def history(self, run_id: str, key: str) -> pd.Series:
        """step -> value for one metric of one run (last value logged at each step)."""
        if self._index is None:
            m = self.metrics
            self._index = (
                {}
                if m.empty
                else {k: g for k, g in m.sort_values(["step", "timestamp"]).groupby(["run_id", "key"], sort=False)}
            )
        sel = self._index.get((run_id, key))
        if sel is None or sel.empty:
            return pd.Series(dtype=float)
        return sel.groupby("step")["value"].last()

    def keys(self, run_id: str) -> set[str]:
        """Metric names a run logged (any step)."""
        if self._index is None:
            self.history(run_id, "")
        return {k for r, k in self._index if r == run_id}


# ------------------------------------------------------------------------------------------------


def _client(tracking_uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri)


def _search_all(client, exp_ids: list[str], filter_string: str = "") -> list:
    out, token = [], None
    while True:
        page = client.search_runs(
            exp_ids,
            filter_string=filter_string,
            max_results=1000,
            page_token=token,
            order_by=["attributes.start_time DESC"],
        )
        out.extend(page)
        token = page.token
        if not token:
            return out


def _download_text(client, run_id: str, path: str) -> str | None:
    try:
        with tempfile.TemporaryDirectory() as d:
            local = client.download_artifacts(run_id, path, d)
            return Path(local).read_text()
    except Exception:  # noqa: BLE001 - missing artifact or unreachable store: reported by the caller
        return None


def _list_artifacts(client, run_id: str, path: str | None = None) -> list[str]:
    try:
        return [f.path for f in client.list_artifacts(run_id, path) if not f.is_dir]
    except Exception:  # noqa: BLE001
        return []


def _role(run) -> str:
    return run.data.tags.get("harness.role", "")


def _is_training_run(run) -> bool:
    return _role(run) in ("member", "") and "algorithm" in run.data.tags


def reward_kind(params: dict[str, str], tags: dict[str, str]) -> tuple[str, float | None]:
    """A run's training reward: ``reward.kind`` (param; else the ``reward`` tag; else the verifier's, as runs logged
    before the reward section had) and ``reward.random_p`` for ``random`` (None when absent or not a number)."""
    kind = str(params.get("reward.kind") or tags.get("reward") or VERIFIER_REWARD).strip() or VERIFIER_REWARD
    try:
        p = float(params["reward.random_p"]) if kind == "random" and "reward.random_p" in params else None
    except (TypeError, ValueError):
        p = None
    return kind, p


def reward_label(kind: str, random_p: float | None) -> str:
    """The reward as the report shows it: ``verifier``, ``random p=0.5``, ``format_only``."""
    return f"{kind} p={random_p:g}" if kind == "random" and random_p is not None else kind


def control_label(algorithm: str, kind: str, random_p: float | None = None) -> str:
    """The algorithm label of a run: the algorithm itself with the verifier's reward, else the algorithm and the
    reward, e.g. ``grpo [reward=random p=0.5]`` (a control, kept apart from the real ``grpo`` runs)."""
    if kind == VERIFIER_REWARD:
        return algorithm
    return f"{algorithm}{CONTROL_MARK}{reward_label(kind, random_p)}]"


def is_control(label: str) -> bool:
    """Whether an algorithm label is a reward-control run's (:func:`control_label`)."""
    return CONTROL_MARK in str(label)


def base_algorithm(label: str) -> str:
    """The algorithm of a label without its reward-control suffix: ``grpo [reward=random p=0.5]`` -> ``grpo``."""
    return str(label).split(CONTROL_MARK, 1)[0]


def _as_int(v: Any) -> int | None:
    try:
        return int(float(v))
    except (TypeError, ValueError):
        return None


def load_experiment(
    tracking_uri: str,
    experiment: str,
    *,
    parent_run_id: str | None = None,
    all_runs: bool = False,
    sweep_run_id: str | None = "auto",
    include_unfinished: bool = False,
    load_samples: bool = True,
    max_workers: int = 4,
    fast_sql: bool = True,
    members: bool = True,
) -> ExperimentData:
    """Load the member runs of one experiment matrix (and a sweep) from ``tracking_uri``.

    Selection: ``parent_run_id`` -> that parent's children; else ``all_runs`` -> every training run of
    the experiment; else the most recent parent with ``harness.role=experiment`` (falling back to
    every training run when there is none). ``sweep_run_id``: a sweep parent's id, ``"auto"`` (the most
    recent sweep parent of the experiment, if any) or ``None`` (no sweep section). ``fast_sql``: read
    every metric point in one query when the store is MLflow's SQL store (else one call per metric).
    ``members=False``: no member runs at all (a sweep-only report).
    """
    with _quiet_downloads():
        return _load(
            tracking_uri,
            experiment,
            parent_run_id,
            all_runs,
            sweep_run_id,
            include_unfinished,
            load_samples,
            max_workers,
            fast_sql,
            members,
        )


@contextmanager
def _quiet_downloads():
    """No tqdm bars from MLflow's artifact downloads while loading (restored afterwards)."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    old = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def _load(
    tracking_uri,
    experiment,
    parent_run_id,
    all_runs,
    sweep_run_id,
    include_unfinished,
    load_samples,
    max_workers,
    fast_sql,
    want_members,
) -> ExperimentData:
    client = _client(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None and parent_run_id:
        try:
            exp = client.get_experiment(client.get_run(parent_run_id).info.experiment_id)
        except Exception:  # noqa: BLE001
            exp = None
    data = ExperimentData(tracking_uri, experiment, exp.experiment_id if exp else None, selection="")
    if exp is None:
        data.selection = "nothing (experiment not found)"
        data.issue("general", f"MLflow experiment '{experiment}' was not found at {mask_uri(tracking_uri)}.")
        return data

    everything = _search_all(client, [exp.experiment_id])
    parent, members = _select_members(data, client, everything, parent_run_id, all_runs, want_members)
    if parent is not None:
        data.parent = {
            "run_id": parent.info.run_id,
            "run_name": parent.info.run_name,
            "status": parent.info.status,
            "tags": dict(parent.data.tags),
            "params": dict(parent.data.params),
            "start_time": parent.info.start_time,
        }
    if want_members:
        _fill_runs(data, client, members, include_unfinished, load_samples, max_workers, fast_sql)
        if parent is not None:
            _check_planned(data, client, parent.info.run_id)
    sweep = _find_sweep(data, client, everything, sweep_run_id) if sweep_run_id else None
    if sweep is not None:
        data.sweep = _load_sweep(client, sweep, _children(everything, sweep.info.run_id), data)
    return data


def _children(runs: list, parent_id: str) -> list:
    """The runs whose MLflow parent is ``parent_id``."""
    return [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent_id]


def _select_members(
    data: ExperimentData, client, everything: list, parent_run_id: str | None, all_runs: bool, want_members: bool
) -> tuple[Any, list]:
    """The experiment parent run (or None) and the member runs the report covers; sets ``data.selection``."""
    parents = [r for r in everything if _role(r) == "experiment"]
    parent = None
    if not want_members:
        members = []
        data.selection = "none (sweep report)"
    elif parent_run_id:
        parent = next((r for r in everything if r.info.run_id == parent_run_id), None)
        if parent is None:
            try:
                parent = client.get_run(parent_run_id)
            except Exception:  # noqa: BLE001
                parent = None
        if parent is None:
            data.issue("general", f"Parent run {parent_run_id} was not found.")
        members = [r for r in _children(everything, parent_run_id) if _role(r) in ("member", "")]
        data.selection = f"children of parent run `{parent_run_id}`"
    elif all_runs or not parents:
        members = [r for r in everything if _is_training_run(r)]
        data.selection = "every training run of the experiment" + (
            "" if all_runs else " (no experiment parent run found)"
        )
    else:
        parent = parents[0]  # newest first
        members = [r for r in _children(everything, parent.info.run_id) if _role(r) in ("member", "")]
        data.selection = f"children of the most recent experiment parent run `{parent.info.run_id}`"
        if len(parents) > 1:
            data.issue(
                "general",
                f"The experiment has {len(parents)} experiment parent runs; this report covers the most recent one "
                "(`harness report --parent RUN_ID` or `--all-runs` for others).",
                severity="note",
            )
    return parent, members


def _find_sweep(data: ExperimentData, client, everything: list, sweep_run_id: str):
    """The sweep parent run: ``sweep_run_id``'s, or with ``"auto"`` the newest sweep of the experiment (or None)."""
    if sweep_run_id == "auto":
        sweeps = [r for r in everything if _role(r) == "sweep"]
        return sweeps[0] if sweeps else None
    sweep = next((r for r in everything if r.info.run_id == sweep_run_id), None)
    if sweep is None:
        try:
            sweep = client.get_run(sweep_run_id)
        except Exception:  # noqa: BLE001
            data.issue("sweep", f"Sweep run {sweep_run_id} was not found.")
    return sweep


def _fill_runs(
    data: ExperimentData,
    client,
    members: list,
    include_unfinished: bool,
    load_samples: bool,
    max_workers: int,
    fast_sql: bool,
) -> None:
    if not members:
        data.issue("general", "No member runs were found for this selection.")
        return
    rows = []
    for r in members:
        t = r.data.tags
        seed = _as_int(t.get("seed", r.data.params.get("train.seed")))
        algo = t.get("algorithm") or r.data.params.get("algorithm.name", "?")
        kind, p = reward_kind(r.data.params, t)
        rows.append(
            {
                "run_id": r.info.run_id,
                "run_name": r.info.run_name or r.info.run_id[:8],
                "status": r.info.status,
                "algorithm": control_label(algo, kind, p),
                "base_algorithm": algo,
                "reward": reward_label(kind, p),
                "control": kind != VERIFIER_REWARD,
                "model": t.get("model") or r.data.params.get("model.name", "?"),
                "seed": seed,
                "engine": t.get("engine", ""),
                "torch": t.get("torch", ""),
                "num_processes": t.get("num_processes", ""),
                "budget_unit": t.get("harness.budget_unit", ""),
                "budget_value": t.get("harness.budget_value", ""),
                "start_time": pd.to_datetime(r.info.start_time, unit="ms", utc=True) if r.info.start_time else pd.NaT,
                "end_time": pd.to_datetime(r.info.end_time, unit="ms", utc=True) if r.info.end_time else pd.NaT,
            }
        )
    runs = pd.DataFrame(rows)
    runs["include"] = runs["status"].eq("FINISHED") | bool(include_unfinished)
    # duplicates of one (algorithm, model, seed): keep the newest
    runs = runs.sort_values("start_time", ascending=False)
    dup = runs.duplicated(["algorithm", "model", "seed"], keep="first") & runs["include"]
    for _, r in runs[dup].iterrows():
        data.issue(
            "general",
            f"Run `{r.run_id}` ({r.algorithm}, {r.model}, seed {r.seed}) duplicates a newer run and is left out.",
            r.run_id,
        )
    runs.loc[dup, "include"] = False
    finished_keys = {(r.algorithm, r.model, r.seed): r.run_id for r in runs[runs["status"].eq("FINISHED")].itertuples()}
    for _, r in runs[~runs["status"].eq("FINISHED")].iterrows():
        newer = finished_keys.get((r.algorithm, r.model, r.seed))
        if newer and not include_unfinished:
            data.issue(
                "general",
                f"Run `{r.run_id}` ({r.algorithm}, {r.model}, seed {r.seed}) ended with status **{r.status}**; it is "
                f"superseded by the finished run `{newer}`.",
                r.run_id,
                severity="note",
            )
            continue
        what = (
            "left out of every aggregate"
            if not include_unfinished
            else "included although unfinished (--include-unfinished)"
        )
        data.issue(
            "general",
            f"Run `{r.run_id}` ({r.algorithm}, {r.model}, seed {r.seed}) ended with status **{r.status}**: {what}.",
            r.run_id,
        )
    runs["_order"] = [_algo_sort_key(a)[0] for a in runs["algorithm"]]  # grpo, the others, reward controls
    data.runs = runs.sort_values(["model", "_order", "algorithm", "seed"]).drop(columns="_order").reset_index(drop=True)
    data.params = pd.DataFrame({r.info.run_id: r.data.params for r in members}).T
    data.tags = pd.DataFrame({r.info.run_id: r.data.tags for r in members}).T

    flat = _bulk_sql_metrics(client, [r.info.run_id for r in members]) if fast_sql else None
    if flat is None:
        flat = _metric_histories(client, members, max_workers)
    data.metrics = pd.DataFrame(flat, columns=["run_id", "key", "step", "value", "timestamp"])
    ev = data.metrics[data.metrics["key"].str.match(r"^eval/(macro_accuracy|[^/]+/accuracy)$")]
    data.final_steps = {k: int(v) for k, v in ev.groupby("run_id")["step"].max().items()}
    _fill_artifacts(data, client, runs, load_samples, max_workers)


def _bulk_sql_metrics(client, run_ids: list[str]) -> list[tuple] | None:
    """Every metric point of ``run_ids`` in one query when the store is MLflow's SQL store (None otherwise or on
    error)."""
    try:
        from mlflow.store.tracking.dbmodels.models import SqlMetric
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        store = client._tracking_client.store
        if not isinstance(store, SqlAlchemyStore):
            return None
        out = []
        with store.ManagedSessionMaker() as session:
            for i in range(0, len(run_ids), 200):
                q = session.query(
                    SqlMetric.run_uuid,
                    SqlMetric.key,
                    SqlMetric.step,
                    SqlMetric.value,
                    SqlMetric.timestamp,
                    SqlMetric.is_nan,
                ).filter(SqlMetric.run_uuid.in_(run_ids[i : i + 200]))
                out.extend(
                    (r, k, int(st), float("nan") if nan else float(v), int(ts))
                    for r, k, st, v, ts, nan in q
                    if k.startswith(HISTORY_PREFIXES)
                )
        return out
    except Exception:  # noqa: BLE001 - internal API changed: use the public client
        return None


def _metric_histories(client, members: list, max_workers: int) -> list[tuple]:
    jobs = [(r.info.run_id, k) for r in members for k in r.data.metrics if k.startswith(HISTORY_PREFIXES)]

    def fetch(job):
        rid, key = job
        try:
            return [(rid, key, m.step, m.value, m.timestamp) for m in client.get_metric_history(rid, key)]
        except Exception:  # noqa: BLE001
            return []

    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        chunks = list(pool.map(fetch, jobs))
    return [row for c in chunks for row in c]


def _fill_artifacts(data: ExperimentData, client, runs: pd.DataFrame, load_samples: bool, max_workers: int) -> None:
    def artifacts(rid):
        summary = _download_text(client, rid, "summary.json")
        evals = _list_artifacts(client, rid, "eval")
        return rid, summary, evals

    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        arts = list(pool.map(artifacts, list(runs["run_id"])))
    sample_jobs = []
    for rid, summary, evals in arts:
        if summary is not None:
            try:
                data.summaries[rid] = json.loads(summary)
            except json.JSONDecodeError:
                data.issue("provenance", f"Run `{rid}`: summary.json is not valid JSON.", rid)
        else:
            data.issue("provenance", f"Run `{rid}` has no summary.json artifact.", rid, severity="note")
        final = final_eval_step(data, rid)
        if not load_samples or final is None:
            continue
        cands = []
        for p in evals:
            m = EVAL_FILE.match(p)
            if m and int(m["step"]) == final:
                cands.append((m["tag"] == "after", p, m["tag"]))
        if cands:
            _, path, tag = max(cands)
            sample_jobs.append((rid, path, tag, final))
        elif bool(runs.set_index("run_id").at[rid, "include"]):
            data.issue(
                "accuracy",
                f"Run `{rid}` has no per-sample eval artifact for its final evaluation (step {final}): its CIs use the "
                "logged accuracy only (seed-level resampling).",
                rid,
                severity="note",
            )

    def read_samples(job):
        rid, path, _, _ = job
        return job, _download_text(client, rid, path)

    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        loaded = list(pool.map(read_samples, sample_jobs))
    frames = []
    for (rid, path, tag, step), text in loaded:
        if text is None:
            data.issue("accuracy", f"Run `{rid}`: could not read artifact {path}.", rid)
            continue
        recs = []
        for line in io.StringIO(text):
            line = line.strip()
            if not line:
                continue
            try:
                o = json.loads(line)
                recs.append((o["benchmark"], str(o["id"]), int(o.get("sample", 0)), float(o["reward"])))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                continue
        if not recs:
            data.issue("accuracy", f"Run `{rid}`: {path} holds no usable per-sample records.", rid)
            continue
        df = pd.DataFrame(recs, columns=["benchmark", "id", "sample", "reward"])
        df.insert(0, "step", step)
        df.insert(0, "tag", tag)
        df.insert(0, "run_id", rid)
        frames.append(df)
    data.samples = (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame(columns=["run_id", "tag", "step", "benchmark", "id", "sample", "reward"])
    )


def _check_planned(data: ExperimentData, client, parent_id: str) -> None:
    """Members the parent planned (``matrix.json``: ``{"members": ["algo|model|seed", ...]}``) but that have no run."""
    text = _download_text(client, parent_id, "matrix.json")
    if not text:
        return
    try:
        planned = json.loads(text).get("members") or []
    except (json.JSONDecodeError, AttributeError):
        data.issue(
            "provenance", f"Parent run `{parent_id}`: matrix.json is not valid JSON.", parent_id, severity="note"
        )
        return
    have = set()
    if not data.runs.empty:
        have = {f"{a}|{r.model}|{r.seed}" for r in data.runs.itertuples() for a in (r.algorithm, r.base_algorithm)}
        have |= set(data.tags.get("harness.member", pd.Series(dtype=str)).dropna())
    data.planned = [str(m) for m in planned]
    for m in data.planned:
        if m not in have:
            data.issue("general", f"Planned member `{m}` has no MLflow run (not started, or crashed before logging).")


def final_eval_step(data: ExperimentData, run_id: str) -> int | None:
    """The step of a run's last evaluation (None: never evaluated)."""
    return data.final_steps.get(run_id)


def _sweep_artifact(client, rid: str, name: str) -> str | None:
    """A sweep summary file: `harness sweep` logs them under ``sweep/``; older or hand-made runs at the root."""
    return _download_text(client, rid, f"sweep/{name}") or _download_text(client, rid, name)


def _load_sweep(client, run, children: list, data: ExperimentData) -> SweepData:
    rid = run.info.run_id
    sw = SweepData(
        rid, run.data.tags.get("harness.sweep") or run.info.run_name or rid[:8], run.info.status, dict(run.data.tags)
    )

    def parsed(name: str, parse, problem: str, required: bool = True):
        """A sweep summary file parsed, or None with the reason recorded in the report's caveats."""
        text = _sweep_artifact(client, rid, name)
        if not text:
            if required:
                data.issue("sweep", f"Sweep `{rid}` has no {name} artifact.", rid)
            return None
        try:
            return parse(text)
        except Exception as e:  # noqa: BLE001 - any malformed file is reported, never raised
            data.issue("sweep", f"Sweep `{rid}`: {name} {problem} ({e}).", rid)
            return None

    def read_trials(text: str) -> pd.DataFrame:
        df = pd.read_csv(io.StringIO(text))
        return df.loc[:, ~df.columns.str.startswith("Unnamed")]

    def read_importances(text: str) -> dict[str, float]:
        imp = json.loads(text)
        if isinstance(imp, dict) and isinstance(imp.get("importances"), dict):
            imp = imp["importances"]  # `harness sweep` writes {"evaluator": ..., "importances": {...}}
        if not isinstance(imp, dict):
            raise TypeError("expected a mapping")
        return {str(k): float(v) for k, v in imp.items() if isinstance(v, (int, float))}

    sw.trials = parsed("trials.csv", read_trials, "could not be parsed")
    sw.best = parsed("best_trial.json", json.loads, "is not valid JSON")
    sw.importances = parsed("importances.json", read_importances, "is not a name -> importance mapping", required=False)
    direction = (
        (sw.best or {}).get("direction") or run.data.tags.get("optuna.direction") or run.data.params.get("direction")
    )
    if isinstance(direction, list):
        direction = direction[0] if direction else None
    if direction:
        sw.direction = "minimize" if "min" in str(direction).lower() else "maximize"
    elif sw.trials is not None and sw.best and "value" in sw.trials and sw.best.get("value") is not None:
        vals = pd.to_numeric(sw.trials["value"], errors="coerce")
        if np.isclose(float(sw.best["value"]), vals.min()) and not np.isclose(float(sw.best["value"]), vals.max()):
            sw.direction = "minimize"
    if children:
        sw.trial_runs = pd.DataFrame(
            [
                {
                    "run_id": c.info.run_id,
                    "run_name": c.info.run_name,
                    "status": c.info.status,
                    "trial": _as_int(c.data.tags.get("optuna.trial_number")),
                }
                for c in children
            ]
        ).sort_values("trial")
    return sw


def _algo_sort_key(name: str) -> tuple:
    """grpo first, then the rest alphabetically, reward controls last (keeps colours and table order stable)."""
    return (0 if name == "grpo" else 2 if is_control(name) else 1, str(name))


def algorithm_order(names) -> list[str]:
    return sorted(set(names), key=_algo_sort_key)
