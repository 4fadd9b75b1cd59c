"""`harness sweep`: search-space validation, trials as MLflow child runs, pruning, failed configs,
parallel workers on one sqlite storage, and workers killed mid-trial (by the parent and by heartbeat)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from optuna.trial import TrialState

from harness.config import ConfigError
from sweeps.cli import main as sweep_main
from sweeps.space import SpaceError, check_space, load_space, parse_space
from sweeps.study import fail_stale, open_storage, stale_trial_callback, write_summaries
from sweeps.trial import SWEEP_DEFAULTS

REPO = Path(__file__).resolve().parents[1]

PARAMS = {
    "algorithm.strategy": {"type": "categorical", "choices": ["recent_k", "highest_k"]},
    "algorithm.max_cache_size": {"type": "int", "low": 4, "high": 8, "step": 4},
    "algorithm.min_cache_to_replay": {"type": "int", "low": 2, "high": 4},
    "algorithm.num_replays": {"type": "int", "low": 1, "high": 4},
    "train.learning_rate": {"type": "float", "low": "1e-5", "high": 1.0e-3, "log": True},
}


def _space_file(tmp_path: Path, model_dir, *, params=None, pruner=None, name="space", **base_sections) -> Path:
    base = {
        "model": {"name": str(model_dir)},
        "algorithm": {"name": "repo"},
        "data": {"train_size": 64},
        "train": {"max_steps": 2, "prompts_per_step": 2, "log_completions_every": 0, "format_reward_weight": 0.5},
        "generation": {"num_generations": 4, "max_completion_length": 12},
        "eval": {"every_steps": 1, "max_examples": 8},
    }
    for k, v in base_sections.items():
        base.setdefault(k, {}).update(v)
    data = {
        "base": base,
        "objective": {"metric": "eval/macro_accuracy", "direction": "maximize"},
        "sampler": {"type": "random", "seed": 0},
        "pruner": pruner or {"type": "none"},
        "params": params or PARAMS,
    }
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    return p


def _common(tmp_path: Path) -> list[str]:
    return [
        "--config",
        "tiny",
        "--storage",
        f"sqlite:///{tmp_path / 'optuna.db'}",
        "--tracking-uri",
        f"sqlite:///{tmp_path / 'mlflow.db'}",
        "--experiment",
        "sweeptest",
        "--output-dir",
        str(tmp_path / "runs"),
        "--report-dir",
        str(tmp_path / "report"),
    ]


def _runs(tmp_path: Path):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    return mlflow.search_runs(experiment_names=["sweeptest"]), mlflow.tracking.MlflowClient(
        f"sqlite:///{tmp_path / 'mlflow.db'}"
    )


def _validate(data: dict):
    space = parse_space({"base": {"algorithm": {"name": "repo"}}, **data})
    return check_space(space, ["tiny", SWEEP_DEFAULTS])


# --------------------------------------------------------------------------------------------
# Search-space validation (no training)


@pytest.mark.parametrize(
    "params, message",
    [
        (
            {"train.learning_rate": {"type": "uniform", "low": 1, "high": 2}},
            "params.train.learning_rate.type: unknown parameter type 'uniform'",
        ),
        (
            {"train.learning_rate": {"type": "float", "low": 0.1, "high": 0.01}},
            "params.train.learning_rate: low (0.1) > high (0.01)",
        ),
        (
            {"train.learning_rate": {"type": "float", "low": 0.0, "high": 0.01, "log": True}},
            "params.train.learning_rate: a log range needs low > 0",
        ),
        (
            {"train.learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True, "step": 1e-5}},
            "cannot be combined",
        ),
        (
            {"algorithm.num_replays": {"type": "int", "low": 1, "hgih": 4}},
            "params.algorithm.num_replays: unknown field(s) hgih",
        ),
        (
            {"algorithm.num_replays": {"type": "int", "low": 1.5, "high": 4}},
            "params.algorithm.num_replays.low: an int parameter needs integer bounds",
        ),
        (
            {"algorithm.strategy": {"type": "categorical", "choices": []}},
            "params.algorithm.strategy.choices: expected a non-empty list",
        ),
        ({"learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3}}, "must be a dotted config key"),
        (
            {"train.learnin_rate": {"type": "float", "low": 1e-5, "high": 1e-3}},
            "params.train.learnin_rate: unknown config key 'train.learnin_rate'",
        ),
        (
            {"trian.learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3}},
            "params.trian.learning_rate: unknown config section 'trian'",
        ),
        (
            {"algorithm.num_replay": {"type": "int", "low": 1, "high": 4}},
            "params.algorithm.num_replay: unknown config key 'algorithm.num_replay' for algorithm(s) repo",
        ),
        ({"tracking.experiment_name": {"type": "categorical", "choices": ["a", "b"]}}, "cannot be searched"),
        ({"train.max_steps": {"type": "float", "low": 1.5, "high": 1.7}}, "train.max_steps: expected an integer"),
        (
            {"algorithm.strategy": {"type": "categorical", "choices": ["recent_k", "newest_k"]}},
            None,
        ),  # one bad choice: a warning, not an error
    ],
)
def test_space_validation_names_the_key(params, message):
    if message is None:
        _, warnings = _validate({"params": params})
        assert any("algorithm.strategy=newest_k" in w and "unknown replay strategy" in w for w in warnings), warnings
        return
    with pytest.raises(SpaceError) as e:
        _validate({"params": params})
    assert message in str(e.value)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"parms": {}}, "unknown top-level key(s) parms"),
        ({"params": {}}, "'params' must be a non-empty mapping"),
        ({"objective": {"direction": "up"}, "params": PARAMS}, "objective.direction: expected maximize or minimize"),
        ({"pruner": {"type": "median", "n_startup": 3}, "params": PARAMS}, "pruner:"),
        ({"sampler": {"type": "cmaes"}, "params": PARAMS}, "sampler.type: unknown sampler 'cmaes'"),
        ({"base": {"trian": {}}, "params": PARAMS}, "base: unknown config section 'trian'"),
    ],
)
def test_space_file_structure_errors(data, message):
    with pytest.raises(SpaceError) as e:
        parse_space(data)
    assert message in str(e.value)
    assert isinstance(e.value, ConfigError)  # `harness` prints it as a config error, exit code 2


def test_inconsistent_midpoint_is_a_warning_and_conditions_skip_params():
    # 4..8 step 4 -> midpoint 4 < min_cache_to_replay midpoint 5: only some draws are valid.
    cfg, warnings = _validate(
        {
            "params": {
                "algorithm.max_cache_size": {"type": "int", "low": 4, "high": 8, "step": 4},
                "algorithm.min_cache_to_replay": {"type": "int", "low": 2, "high": 8},
            }
        }
    )
    assert any("midpoint is not a valid config" in w for w in warnings)
    assert cfg.algorithm["min_cache_to_replay"] <= cfg.algorithm["max_cache_size"]
    space = parse_space(
        {
            "params": {
                "algorithm.name": {"type": "categorical", "choices": ["grpo", "repo"]},
                "algorithm.num_replays": {"type": "int", "low": 1, "high": 4, "when": {"algorithm.name": "repo"}},
            }
        }
    )
    check_space(space, ["tiny", SWEEP_DEFAULTS])
    assert space.sample(optuna.trial.FixedTrial({"algorithm.name": "grpo"}), {}) == {"algorithm.name": "grpo"}
    assert space.sample(optuna.trial.FixedTrial({"algorithm.name": "repo", "algorithm.num_replays": 3}), {}) == {
        "algorithm.name": "repo",
        "algorithm.num_replays": 3,
    }


def test_bundled_space_dry_run(capsys):
    assert load_space("repo_tiny").metric == "eval/macro_accuracy"
    assert sweep_main(["repo_tiny", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "algorithm.max_cache_size (int)" in out and "budget: steps:40" in out
    assert sweep_main(["repo_tiny", "--dry-run", "--set", "train.nope=1"]) == 2
    assert "unknown config key 'train.nope'" in capsys.readouterr().err


def test_summaries_of_a_study(tmp_path):
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))

    def objective(t):
        x, y = (
            t.suggest_float("train.learning_rate", 1e-5, 1e-3, log=True),
            t.suggest_int("algorithm.num_replays", 1, 8),
        )
        t.report(y / 8, 1)
        return y / 8 + 0.01 * x

    study.optimize(objective, n_trials=8)
    written = write_summaries(study, tmp_path / "summary")
    assert {
        "best_trial",
        "trials",
        "importances",
        "optimization_history",
        "param_importances",
        "intermediate_values",
    } <= set(written)
    best = json.loads(written["best_trial"].read_text())
    assert best["best_trial"]["number"] == study.best_trial.number and best["states"]["COMPLETE"] == 8
    imp = json.loads(written["importances"].read_text())
    assert (
        imp["evaluator"] == "fanova" and max(imp["importances"], key=imp["importances"].get) == "algorithm.num_replays"
    )
    assert len(written["trials"].read_text().splitlines()) == 9
    assert all(
        p.stat().st_size > 1000
        for k, p in written.items()
        if k.endswith(("history", "importances", "values")) and p.suffix == ".png"
    )


# --------------------------------------------------------------------------------------------
# Trials in this process: a rejected config fails only its trial; the pruner stops a trial via evaluations


def test_bad_config_fails_its_trial_and_pruner_stops_training(tmp_path, quick_model_dir, capsys):
    params = {
        "algorithm.max_cache_size": {"type": "int", "low": 2, "high": 8, "step": 2},
        "algorithm.min_cache_to_replay": {"type": "int", "low": 2, "high": 6},
        "algorithm.num_replays": {"type": "int", "low": 1, "high": 2},
    }
    # accuracy < 2: pruned at the first intermediate evaluation, at half the budget -> reported at step 500 (permille)
    space = _space_file(
        tmp_path,
        quick_model_dir,
        params=params,
        pruner={"type": "threshold", "lower": 2.0},
        eval={"every_steps": 0, "at_budget_fractions": [0.5]},
    )
    common = _common(tmp_path)
    assert (
        sweep_main([str(space), "--study-name", "s", "--trials", "0", *common]) == 1
    )  # creates the study (no trial yet)
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    study.enqueue_trial(
        {"algorithm.max_cache_size": 2, "algorithm.min_cache_to_replay": 6, "algorithm.num_replays": 1}
    )  # min > max: rejected
    study.enqueue_trial({"algorithm.max_cache_size": 8, "algorithm.min_cache_to_replay": 2, "algorithm.num_replays": 2})
    assert (
        sweep_main(["--study-name", "s", "--trials", "2", "--workers", "0", "--no-progress", *common]) == 1
    )  # no trial completed
    trials = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}").trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.PRUNED]
    assert "algorithm.min_cache_to_replay (6) > algorithm.max_cache_size (2)" in trials[0].user_attrs["fail_reason"]
    assert trials[1].user_attrs["pruned_at_step"] == 500 and list(trials[1].intermediate_values) == [500]
    assert trials[1].user_attrs["pruned_at_train_step"] == 1

    runs, client = _runs(tmp_path)
    parent = runs[runs["tags.harness.role"] == "sweep"]
    assert len(parent) == 1
    parent_id = parent.iloc[0]["run_id"]
    kids = runs[runs["tags.harness.role"] == "trial"].set_index("tags.optuna.trial_number")
    assert set(kids["tags.mlflow.parentRunId"]) == {parent_id}
    assert kids.loc["0", "status"] == "FAILED" and "min_cache_to_replay" in kids.loc["0", "tags.harness.fail_reason"]
    assert kids.loc["1", "status"] == "KILLED" and kids.loc["1", "tags.optuna.state"] == "PRUNED"
    assert (
        kids.loc["1", "params.trial.algorithm.max_cache_size"] == "8"
        and kids.loc["1", "params.algorithm.max_cache_size"] == "8"
    )
    assert trials[1].user_attrs["mlflow_run_id"] == kids.loc["1", "run_id"]
    assert {"sweep/best_trial.json", "sweep/trials.csv", "sweep/space.yaml"} <= {
        a.path for a in client.list_artifacts(parent_id, "sweep")
    }

    # Joining the study with a different space is refused, naming the study.
    changed = _space_file(
        tmp_path,
        quick_model_dir,
        params={**params, "algorithm.num_replays": {"type": "int", "low": 1, "high": 3}},
        name="changed",
    )
    capsys.readouterr()
    assert sweep_main([str(changed), "--study-name", "s", *common]) == 2
    assert "study 's' already exists" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# Parallel workers on one sqlite storage; killed workers


def _wait_for_running_trial(storage_url: str, study_name: str, proc: subprocess.Popen, timeout: float = 150):
    """Poll the storage until a trial is RUNNING with its MLflow run created (training under way); return it."""
    storage = open_storage(storage_url, heartbeat_interval=None)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert proc.poll() is None, f"sweep exited early with {proc.returncode}"
        try:
            study = optuna.load_study(study_name=study_name, storage=storage)
        except KeyError:
            time.sleep(0.5)
            continue
        for t in study.get_trials(states=(TrialState.RUNNING,)):
            if "worker_pid" in t.user_attrs and "mlflow_run_id" in t.user_attrs:
                pid = t.user_attrs["worker_pid"]
                os.kill(pid, signal.SIGSTOP)  # freeze it, then make sure the trial did not just finish
                if study._storage.get_trial(t._trial_id).state == TrialState.RUNNING:
                    os.kill(pid, signal.SIGKILL)
                    return t.number, pid
                os.kill(pid, signal.SIGCONT)
        time.sleep(0.2)
    raise AssertionError("no trial reached training in time")


def test_two_workers_share_sqlite_and_survive_a_killed_worker(tmp_path, quick_model_dir):
    """Done-when: a 2-worker sweep of 6 trials on one sqlite storage; one worker killed mid-trial leaves that
    trial FAIL (and its MLflow run KILLED), a replacement worker starts and the study reaches its trial count."""
    space = _space_file(tmp_path, quick_model_dir)
    storage_url = f"sqlite:///{tmp_path / 'optuna.db'}"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [
        sys.executable,
        "-m",
        "sweeps.cli",
        str(space),
        "--study-name",
        "par",
        "--trials",
        "6",
        "--workers",
        "2",
        "--heartbeat-interval",
        "1",
        "--grace-period",
        "5",
        *_common(tmp_path),
    ]
    log = (tmp_path / "sweep.log").open("w")
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        killed_number, killed_pid = _wait_for_running_trial(storage_url, "par", proc)
        rc = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    out = (tmp_path / "sweep.log").read_text()
    assert rc == 0, out[-3000:]
    assert f"pid {killed_pid}) died: killed by signal 9" in out and "worker 2 started" in out  # replaced

    study = optuna.load_study(study_name="par", storage=storage_url)
    trials = study.trials
    assert len(trials) >= 6, out[-3000:]
    by_number = {t.number: t for t in trials}
    assert by_number[killed_number].state == TrialState.FAIL
    assert "killed by signal 9" in by_number[killed_number].user_attrs["fail_reason"]
    others = [t for t in trials if t.number != killed_number]
    assert all(t.state == TrialState.COMPLETE for t in others), [
        (t.number, t.state, t.user_attrs.get("fail_reason")) for t in others
    ]
    assert len({t.user_attrs["worker_pid"] for t in trials}) >= 2  # really ran in parallel processes
    assert all(Path(t.user_attrs["output_dir"]).name == f"trial-{t.number}" for t in trials)
    assert all(
        sorted(t.intermediate_values) == [1, 2] for t in others
    )  # eval.every_steps=1 at step 1, then the final evaluation

    runs, client = _runs(tmp_path)
    parent = runs[runs["tags.harness.role"] == "sweep"].iloc[0]
    assert parent["status"] == "FINISHED" and parent["tags.harness.sweep"] == "par"
    kids = runs[runs["tags.harness.role"] == "trial"].set_index("tags.optuna.trial_number")
    assert len(kids) == len(trials) and set(kids["tags.mlflow.parentRunId"]) == {parent["run_id"]}
    assert kids.loc[str(killed_number), "status"] == "KILLED"
    assert all(kids.loc[str(t.number), "status"] == "FINISHED" for t in others)
    artifacts = {a.path for a in client.list_artifacts(parent["run_id"], "sweep")}
    assert {"sweep/best_trial.json", "sweep/trials.csv", "sweep/optimization_history.png"} <= artifacts
    best = json.loads(
        Path(client.download_artifacts(parent["run_id"], "sweep/best_trial.json", str(tmp_path / "dl"))).read_text()
    )
    assert best["n_trials"] == len(trials) and best["states"]["FAIL"] == 1
    # `harness sweep` writes its report at the end: the sweep section with history and importances
    report = (tmp_path / "report" / "report.md").read_text()
    assert "par" in report and (tmp_path / "report" / "report.html").exists()
    table = pd.read_csv(tmp_path / "report" / "tables" / "sweep_trials.csv").set_index("number")
    for t in trials:  # the report's trial table is the study's own
        assert table.loc[t.number, "state"] == t.state.name
        if t.value is not None:
            assert table.loc[t.number, "value"] == pytest.approx(t.value)


def test_heartbeat_fails_the_trial_of_a_lone_killed_worker(tmp_path, quick_model_dir):
    """A worker started directly (as on another machine) dies: no parent sees it, the heartbeat does."""
    space = _space_file(tmp_path, quick_model_dir)
    storage_url = f"sqlite:///{tmp_path / 'optuna.db'}"
    assert (
        sweep_main([str(space), "--study-name", "hb", "--trials", "1", "--report-only", *_common(tmp_path)]) == 0
    )  # create only
    env = dict(
        os.environ,
        PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        HARNESS_SWEEP_STORAGE=storage_url,
        OMP_NUM_THREADS="1",
    )
    log = (tmp_path / "worker.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sweeps.worker",
            "--study",
            "hb",
            "--output-dir",
            str(tmp_path / "runs"),
            "--heartbeat-interval",
            "1",
            "--grace-period",
            "3",
        ],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        number, _ = _wait_for_running_trial(storage_url, "hb", proc)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    storage = open_storage(
        storage_url,
        heartbeat_interval=1,
        grace_period=3,
        stale_callback=stale_trial_callback(f"sqlite:///{tmp_path / 'mlflow.db'}"),
    )
    study = optuna.load_study(study_name="hb", storage=storage)
    assert study.trials[number].state == TrialState.RUNNING  # nobody has looked yet
    time.sleep(4.5)
    fail_stale(study)  # what every worker does before each trial
    assert study.trials[number].state == TrialState.FAIL
    runs, _ = _runs(tmp_path)
    kid = runs[runs["tags.harness.role"] == "trial"].iloc[0]
    assert kid["status"] == "KILLED" and "heartbeat stale" in kid["tags.harness.fail_reason"]


def test_two_workers_share_a_postgresql_study(tmp_path, quick_model_dir):
    """Any Optuna RDB URL works as the shared storage: two worker processes on one PostgreSQL study (what several machines
    would do). Needs a server: CI starts one and sets HARNESS_TEST_POSTGRES_URL; elsewhere skipped unless
    HARNESS_REQUIRE_POSTGRES=1."""
    url = os.environ.get("HARNESS_TEST_POSTGRES_URL")
    if not url:
        if os.environ.get("HARNESS_REQUIRE_POSTGRES") == "1":
            pytest.fail("HARNESS_REQUIRE_POSTGRES=1 but HARNESS_TEST_POSTGRES_URL is not set")
        pytest.skip("no PostgreSQL server (set HARNESS_TEST_POSTGRES_URL=postgresql://user:pw@host/db)")
    study_name = f"pg-{os.getpid()}-{time.time_ns()}"  # a fresh study in a shared database
    space = _space_file(tmp_path, quick_model_dir, eval={"every_steps": 0, "max_examples": 4})
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    common = [
        "--config",
        "tiny",
        "--storage",
        url,
        "--tracking-uri",
        f"sqlite:///{tmp_path / 'mlflow.db'}",
        "--experiment",
        "pg",
        "--output-dir",
        str(tmp_path / "runs"),
        "--no-report",
    ]
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "sweeps.cli",
            str(space),
            "--study-name",
            study_name,
            "--trials",
            "4",
            "--workers",
            "2",
            *common,
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    study = optuna.load_study(study_name=study_name, storage=url)
    assert len(study.trials) == 4 and all(t.state == TrialState.COMPLETE for t in study.trials)
    assert len({t.user_attrs["worker_pid"] for t in study.trials}) == 2  # both workers took trials from the one study
    assert (
        "postgresql://" in res.stdout and "harness:harness@" not in res.stdout
    )  # the URL is shown with its password redacted
    optuna.delete_study(study_name=study_name, storage=url)
