"""Experiment matrix: MLflow parent/child layout, matched budgets, restart skips finished and resumes interrupted runs."""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from harness.experiment import Member, matrix_name, run_matrix

REPO = {"name": "repo:recent_k", "min_cache_to_replay": 4, "max_cache_size": 8, "num_replays": 2}


def _members(make_config):
    out = []
    for algo in ("grpo", REPO):
        cfg = make_config(
            algo, train={"max_steps": -1, "budget": "trained_tokens:500", "save_every": 1}, data={"train_size": 4}
        )
        out.append(Member("quick", algo if isinstance(algo, str) else algo["name"], cfg.train.seed, cfg))
    return out


def test_matrix_layout_budget_and_restart(make_config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    members = _members(make_config)
    name = matrix_name(members, None)
    assert name == matrix_name(_members(make_config), None)  # same command -> same matrix
    results = run_matrix(members, name=name, progress=False)
    uri = members[0].config.tracking.tracking_uri
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("test")
    parents = client.search_runs([exp.experiment_id], "tags.`harness.role` = 'experiment'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}'")
    assert sorted(c.data.tags["algorithm"] for c in children) == ["grpo", "repo:recent_k"]
    assert all(
        c.data.tags["harness.role"] == "member" and c.data.tags["harness.budget_unit"] == "trained_tokens"
        for c in children
    )
    # matched compute: both spent the same budget (stopping at the first step that crosses it)
    for _, _, _, s in results:
        assert s["budget"]["spent"] >= 500 and s["status"] == "FINISHED"

    # Re-running the same matrix skips finished members: no new MLflow runs.
    again = run_matrix(_members(make_config), name=name, progress=False)
    assert [s["run_id"] for *_, s in again] == [s["run_id"] for *_, s in results]
    assert len(client.search_runs([exp.experiment_id], "")) == 3

    # An interrupted member (its run not FINISHED) resumes from its checkpoint into the same MLflow run.
    repo_run = next(c for c in children if c.data.tags["algorithm"] == "repo:recent_k")
    client.set_terminated(repo_run.info.run_id, status="FAILED")
    resumed = run_matrix(_members(make_config), name=name, progress=False)
    repo_summary = resumed[1][3]
    assert repo_summary["run_id"] == repo_run.info.run_id and repo_summary["status"] == "FINISHED"
    assert client.get_run(repo_run.info.run_id).info.status == "FINISHED"
    assert len(client.search_runs([exp.experiment_id], "")) == 3
    assert "grpo" in open(client.download_artifacts(parents[0].info.run_id, "summary.txt", str(tmp_path))).read()
    assert json.loads((tmp_path / "runs" / name / "grpo-quick-s42" / "summary.json").read_text())["steps"] >= 1


def test_cli_run_writes_the_comparison_report(quick_model_dir, tmp_path, monkeypatch, capsys):
    """`harness run` expands the matrix, trains under one budget and writes the report at the end."""
    from harness.cli import main

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = [
        "run",
        "--algos",
        "grpo,repo:recent_k",
        "--models",
        str(quick_model_dir),
        "--config",
        "tiny",
        "--budget",
        "steps:2",
        "--no-progress",
        "--tracking-uri",
        uri,
        "--experiment",
        "cli",
        "--name",
        "clitest",
        "--report-dir",
        str(tmp_path / "rep"),
        "--set",
        "train.prompts_per_step=2",
        "--set",
        "generation.num_generations=4",
        "--set",
        "generation.max_completion_length=16",
        "--set",
        "data.train_size=8",
        "--set",
        "eval.max_examples=4",
        "--set",
        "algorithm.min_cache_to_replay=1",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "vs the grpo run with the same model and seed" in out and "report:" in out
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "repo:recent_k" in md and "grpo" in md
    assert (tmp_path / "rep" / "report.html").exists() and list((tmp_path / "rep" / "tables").glob("*.csv"))
    runs = MlflowClient(uri).search_runs(
        [MlflowClient(uri).get_experiment_by_name("cli").experiment_id], "tags.`harness.role` = 'member'"
    )
    assert sorted(r.data.tags["algorithm"] for r in runs) == ["grpo", "repo:recent_k"]
    assert all(int(r.data.metrics["budget/fraction"]) == 1 for r in runs)
    # the report's accuracy table holds the real runs' final macro accuracy (one seed each: the mean is that run's value)
    import pandas as pd

    acc = pd.read_csv(tmp_path / "rep" / "tables" / "accuracy.csv")
    for r in runs:
        row = acc[(acc["algorithm"] == r.data.tags["algorithm"]) & (acc["benchmark"] == "macro")]
        assert row["mean"].item() == pytest.approx(r.data.metrics["eval/macro_accuracy"])


def test_dry_run_estimates_steps_and_warns_about_a_buffer_that_cannot_replay(capsys):
    from harness.cli import main

    assert (
        main(
            [
                "run",
                "--algos",
                "grpo,repo:recent_k",
                "--config",
                "paper-qwen3-1.7b",
                "--models",
                "qwen3-1.7b",
                "--dry-run",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert (
        out.count("steps:768") == 2 and "warning" not in out
    )  # 1,024 prompts / 4 per step x 3 epochs; replay starts in epoch 3
    assert main(["run", "--algos", "grpo,repo", "--models", "tiny", "--set", "data.train_size=1024", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "warning: repo-tiny-s42: RePO replays a prompt from its visit 3 on" in out and "~1.6 times" in out
    assert "warning: grpo" not in out
    assert (
        main(["run", "--algos", "repo", "--models", "tiny", "--dry-run"]) == 0
    )  # the tiny preset's 256 prompts: ~6 visits
    assert "warning" not in capsys.readouterr().out
