"""Shared fixtures: a quickly warm-started tiny model (built once per session, offline) and configs."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def quick_model_dir(tmp_path_factory):
    """The tiny architecture after a short warm start: it writes `\\boxed{}` answers, rarely right ones.

    Enough for trainer mechanics (format rewards give every group some variance); the real demo uses
    `harness models build tiny`, which trains until held-out accuracy is in the RL band.
    """
    from harness.tiny_model import TinyBuildConfig, build_tiny_model

    cache = os.environ.get("HARNESS_TEST_CACHE") or str(tmp_path_factory.mktemp("tiny-cache"))
    cfg = TinyBuildConfig(
        max_steps=30, eval_every=30, eval_size=16, target_min_acc=0.0, completion_format="boxed", lr=3e-3, pass_k=0
    )
    return build_tiny_model(cfg, cache_dir=cache, check_band=False, progress=False)


@pytest.fixture()
def make_config(quick_model_dir, tmp_path):
    """Build a validated tiny-preset config pointing at the quick model, MLflow and outputs in tmp_path."""
    from harness.config import build_config

    def _make(algorithm: str | dict = "grpo", overrides: list[str] | None = None, **sections):
        layer = {
            "model": {"name": str(quick_model_dir)},
            "algorithm": algorithm if isinstance(algorithm, dict) else {"name": algorithm},
            "train": {
                "max_steps": 3,
                "prompts_per_step": 4,
                "output_dir": str(tmp_path / "runs" / "{run_name}"),
                "log_completions_every": 1,
                "format_reward_weight": 0.5,
            },
            "generation": {"num_generations": 4, "max_completion_length": 16},
            "eval": {"before_training": False, "after_training": False, "max_examples": 8},
            "tracking": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment_name": "test"},
        }
        for k, v in sections.items():
            layer.setdefault(k, {}).update(v)
        return build_config("tiny", layer, overrides=overrides)

    return _make


@pytest.fixture()
def hermetic_data(tmp_path, monkeypatch):
    """No real data dir, no hub, no HF cache: data comes only from what a test points at."""
    empty = tmp_path / "no-data"
    empty.mkdir()
    monkeypatch.setenv("HARNESS_DATA_DIR", str(empty))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))


# Modules whose tests start trainers, vLLM engines, servers, several processes or real-model runs.
_SLOW_MODULES = {
    "test_engines",
    "test_multiprocess",
    "test_sweeps",
    "test_experiment",
    "test_reports",
    "test_resume",
    "test_secrets",
    "test_real_model",
    "test_trainer",
    "test_tiny_model",
}
_SLOW_FIXTURES = {"quick_model_dir", "make_config", "smol_dir"}


def pytest_collection_modifyitems(config, items):
    """Mark the slow end-to-end tests `slow` (by module or by the fixtures that build models), so that
    `pytest -m "not slow"` is the fast subset (README)."""
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1] if getattr(item, "module", None) else ""
        if module in _SLOW_MODULES or _SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
