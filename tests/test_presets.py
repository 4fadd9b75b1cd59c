"""Shipped presets: each builds a valid config; paper presets restate the paper's settings exactly."""

from __future__ import annotations

import dataclasses

import pytest

from harness.config import PRESET_DIR, build_config

PRESETS = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
PAPER = [p for p in PRESETS if p.startswith("paper-") and not p.endswith("-fsdp")]  # -fsdp: a paper preset, sharded


def test_presets_are_shipped():
    assert {"tiny", "tiny-matched", "paper-qwen2.5-math-1.5b", "paper-qwen2.5-math-7b", "paper-qwen3-1.7b"} <= set(
        PRESETS
    )


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("algo", ["grpo", "repo:recent_k", "repo:highest_k"])
def test_every_preset_builds_for_every_algorithm(preset, algo):
    layers = ["tiny", preset] if preset == "tiny-matched" else [preset]
    cfg = build_config(*layers, overrides=[f"algorithm.name={algo}"])
    assert cfg.algorithm["name"] == algo


@pytest.mark.parametrize("preset", PAPER)
def test_paper_presets_equal_the_paper_defaults(preset):
    """A paper preset only spells out the defaults (so a copy documents itself), apart from the model, the engine and bf16."""
    cfg, defaults = build_config(preset).to_dict(), build_config().to_dict()
    diff = {(s, k) for s in cfg if isinstance(cfg[s], dict) for k in cfg[s] if cfg[s][k] != defaults[s].get(k)}
    assert diff <= {("model", "name"), ("model", "dtype"), ("generation", "engine")}, diff
    assert cfg["model"]["dtype"] == "bfloat16"  # the reference trains in bf16
    assert cfg["model"]["name"] == preset.removeprefix("paper-")
    assert (
        cfg["data"]["train_size"],
        cfg["train"]["epochs"],
        cfg["train"]["prompts_per_step"],
        cfg["generation"]["num_generations"],
    ) == (1024, 3, 4, 8)


def test_tiny_preset_replays_within_its_steps():
    """100 steps x 16 prompts over the train set must visit each prompt often enough for RePO's default buffer to replay."""
    from algorithms.repo import RePOConfig

    cfg = build_config("tiny")
    visits = cfg.train.max_steps * cfg.train.prompts_per_step / cfg.data.train_size
    repo = RePOConfig()
    visits_before_replay = -(-repo.min_cache_to_replay // cfg.generation.num_generations)
    assert visits >= visits_before_replay + 2, (visits, visits_before_replay)
    assert dataclasses.asdict(repo)["num_replays"] == 8


def test_the_7b_fsdp_preset_is_the_paper_preset_sharded():
    """paper-qwen2.5-math-7b-fsdp changes only how the 7B model is held and sampled (and the per-process batch)."""
    cfg, paper = build_config("paper-qwen2.5-math-7b-fsdp").to_dict(), build_config("paper-qwen2.5-math-7b").to_dict()
    diff = {(s, k) for s in cfg if isinstance(cfg[s], dict) for k in cfg[s] if cfg[s][k] != paper[s].get(k)}
    assert diff == {
        ("model", "dtype"),
        ("model", "gradient_checkpointing"),
        ("generation", "engine"),
        ("generation", "vllm_dtype"),
        ("train", "prompts_per_step"),
        ("train", "sharding"),
        ("train", "fsdp_mixed_precision"),
    }, diff
    assert (cfg["model"]["dtype"], cfg["train"]["sharding"], cfg["train"]["fsdp_mixed_precision"]) == (
        "float32",
        "fsdp",
        "bf16",
    )
    assert cfg["train"]["prompts_per_step"] * 4 == paper["train"]["prompts_per_step"]  # 4 processes: the paper's batch
