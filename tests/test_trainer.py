"""End-to-end trainer mechanics on the tiny model: MLflow contents, checkpoint/resume, RePO(none) == GRPO."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
import torch

from harness.trainer import Trainer


def _run(cfg, resume=None):
    records = []
    tr = Trainer(cfg, resume=resume, progress=False)
    tr.callbacks.append(records.append)
    return tr, records


def _params(tr):
    return {k: v.detach().clone() for k, v in tr.accelerator.unwrap_model(tr.model).state_dict().items()}


def test_mlflow_run_has_params_metrics_and_artifacts(make_config, tmp_path):
    cfg = make_config("grpo", eval={"before_training": True, "after_training": True})
    tr, records = _run(cfg)
    summary = tr.fit()
    assert summary["steps"] == 3 and len(records) == 3
    mlflow.set_tracking_uri(cfg.tracking.tracking_uri)
    runs = mlflow.search_runs(experiment_names=["test"])
    assert len(runs) == 1
    run = runs.iloc[0]
    assert run["status"] == "FINISHED" and run["run_id"] == summary["run_id"]
    # resolved config as params, including the algorithm's own defaults
    assert run["params.algorithm.name"] == "grpo"
    assert float(run["params.algorithm.epsilon_high"]) == 0.2
    assert int(run["params.train.max_steps"]) == 3
    assert int(run["params.generation.num_generations"]) == 4
    for m in [
        "reward/mean",
        "reward/std",
        "reward/accuracy",
        "groups/zero_std_frac",
        "samples/nonzero_adv_frac",
        "loss/policy",
        "clip/region_frac",
        "completion/mean_length",
        "tokens/generated",
        "tokens/trained",
        "time/generate_s",
        "time/score_s",
        "time/train_s",
        "effective/steps_total",
        "eval/arith/accuracy",
        "eval/macro_accuracy",
    ]:
        assert f"metrics.{m}" in runs.columns, m
    client = mlflow.tracking.MlflowClient(cfg.tracking.tracking_uri)
    history = client.get_metric_history(summary["run_id"], "reward/mean")
    assert sorted(h.step for h in history) == [1, 2, 3]
    assert [h.value for h in sorted(history, key=lambda h: h.step)] == pytest.approx(
        [r.metrics["reward/mean"] for r in records]
    )
    names = {a.path for a in client.list_artifacts(summary["run_id"])}
    assert {"config.yaml", "summary.json", "completions.jsonl", "eval"} <= names
    evals = {a.path for a in client.list_artifacts(summary["run_id"], "eval")}
    assert any(p.startswith("eval/after") for p in evals) and any(p.startswith("eval/before") for p in evals)
    completions = (
        Path(client.download_artifacts(summary["run_id"], "completions.jsonl", str(tmp_path / "dl")))
        .read_text()
        .splitlines()
    )
    first = json.loads(completions[0])
    assert set(first) == {"step", "prompt_id", "completion", "reward"} and len(completions) == 3 * 4 * 4


@pytest.mark.parametrize(
    "algorithm", ["grpo", {"name": "repo:recent_k", "min_cache_to_replay": 4, "max_cache_size": 8, "num_replays": 2}]
)
def test_resume_gives_identical_next_batch_and_parameters(make_config, algorithm):
    # 4 training prompts, 4 per step: every prompt is revisited each step, so replay starts at step 2.
    cfg = make_config(algorithm, train={"save_every": 2, "max_steps": 3, "keep_checkpoints": 3}, data={"train_size": 4})
    full, full_records = _run(cfg)
    full.fit()
    final_params = _params(full)
    ckpt_dir = full.output_dir / "checkpoint-2"
    assert (ckpt_dir / "trainer_state.json").exists() and not list(full.output_dir.glob(".tmp-*"))
    # nothing in a checkpoint is a pickle
    assert not [p for p in ckpt_dir.rglob("*") if p.suffix in (".pt", ".pkl", ".bin", ".pth")]

    resumed, resumed_records = _run(cfg, resume=str(ckpt_dir))
    assert resumed.step == 2 and resumed.tracker.run_id == full.tracker.run_id
    rec = resumed.train_step()
    expected = full_records[2]
    assert rec.prompt_ids == expected.prompt_ids
    assert rec.completion_ids == expected.completion_ids
    assert rec.rewards == expected.rewards
    if isinstance(algorithm, dict):
        assert rec.metrics["replay/rows"] == expected.metrics["replay/rows"] > 0
    for k, v in _params(resumed).items():
        assert torch.equal(v, final_params[k]), k


def test_repo_with_replay_off_is_bit_identical_to_grpo(make_config):
    grpo, grpo_records = _run(make_config("grpo"))
    grpo.fit()
    repo, repo_records = _run(make_config("repo:none"))
    repo.fit()
    assert [r.completion_ids for r in grpo_records] == [r.completion_ids for r in repo_records]
    assert any(r.metrics["samples/nonzero_adv_frac"] > 0 for r in grpo_records)  # there was gradient
    a, b = _params(grpo), _params(repo)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_training_changes_parameters(make_config):
    tr, _ = _run(make_config("grpo", train={"max_steps": 2}))
    before = _params(tr)
    tr.fit()
    after = _params(tr)
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_gradient_checkpointing_recomputes_and_matches(make_config):
    """model.gradient_checkpointing really recomputes (the gradient passes run in training mode; a bug had them in
    eval mode, where transformers skips checkpointing) and trains the same parameters; with share_prompts the
    gradient passes fall back to repeated prompts (no KV cache inside a checkpoint) and still match."""
    results = {}
    for gc, share in ((False, False), (True, False), (True, True)):
        cfg = make_config(
            "grpo",
            model={"gradient_checkpointing": gc},
            train={"max_steps": 2, "share_prompts": share},
            tracking={"run_name": f"gc-{gc}-share-{share}"},
        )
        tr, _ = _run(cfg)
        mlp = tr.accelerator.unwrap_model(tr.model).model.layers[0].mlp
        calls, forward = {"grad": 0}, mlp.forward

        def counted(*args, _calls=calls, _forward=forward, **kwargs):  # (hooks do not fire in a recompute)
            _calls["grad"] += torch.is_grad_enabled()
            return _forward(*args, **kwargs)

        mlp.forward = counted
        tr.fit()
        assert not tr.model.training  # back in eval mode for sampling and evaluation
        assert all(m.p == 0.0 for m in tr.model.modules() if isinstance(m, torch.nn.Dropout))
        results[gc, share] = (_params(tr), calls["grad"])
        tr.close()
    (plain, plain_calls), (ckpt, ckpt_calls), (shared, shared_calls) = results.values()
    assert plain_calls > 0 and ckpt_calls == 2 * plain_calls  # every checkpointed forward runs again in backward
    assert shared_calls == ckpt_calls  # one unshared forward + its recompute (the shared path would make 2 passes)
    for other in (ckpt, shared):
        assert max((plain[k] - other[k]).abs().max().item() for k in plain) <= 1e-6
