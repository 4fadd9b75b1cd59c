"""Checks run before anything is written (MLflow runs, ``runs/``, ``optuna.db``): every model, training set
and benchmark that a run matrix or a sweep will use resolves, offline too.

A config that validates can still name things that do not exist: ``--models qwen3-17b`` (a typo would
otherwise spend a minute in hub retries and end in a traceback), a training file that is not UTF-8, a
benchmark that was never prepared on an offline machine. ``harness run`` and ``harness sweep`` call
:func:`preflight` after building every config and before creating anything, so a bad name fails at once,
with the key named, and leaves nothing behind.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable

from harness.config import ConfigError, HarnessConfig

#: ``org/name``: what the Hugging Face hub accepts as a model id.
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def hub_offline() -> bool:
    return any(
        os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _in_hub_cache(repo_id: str) -> bool:
    """Whether the local Hugging Face cache holds a snapshot of ``repo_id`` (what from_pretrained can use offline)."""
    try:
        from huggingface_hub import constants, try_to_load_from_cache
    except ImportError:
        return False
    if isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
        return True
    snapshots = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}" / "snapshots"
    return snapshots.is_dir() and any(snapshots.iterdir())


def check_model(name: str) -> None:
    """Raise :class:`ConfigError` unless ``name`` is a registry name, an existing local path or a usable hub id.

    A hub id is usable online; offline (``HF_HUB_OFFLINE=1``) only when the local cache holds it. Nothing is
    downloaded or built here (the built-in tiny model is built when a run first needs it)."""
    from harness.models import REGISTRY, get_spec, resolve_path

    registry = f"registry: {', '.join(REGISTRY)} (`harness models list`)"
    spec = get_spec(name)
    if spec.source == "builtin":
        return
    if spec.source.startswith("package:"):
        try:
            resolve_path(spec)
        except FileNotFoundError as e:
            raise ConfigError(f"model '{name}': {e}") from None
        return
    source = spec.source if name in REGISTRY else name
    if Path(source).expanduser().exists() or (spec.gguf_file and (Path(spec.source) / spec.gguf_file).is_file()):
        return
    if name not in REGISTRY and not HUB_ID.match(name):
        looks_like_path = name.startswith((".", "/", "~")) or os.sep in name or name.lower().endswith(".gguf")
        what = (
            "no such local path"
            if looks_like_path
            else "not a registry name, not an existing local path and not a hub id (org/name)"
        )
        raise ConfigError(f"unknown model '{name}': {what}; {registry}")
    if hub_offline() and not _in_hub_cache(source):
        via = f"registry name for the hub id {source}" if name in REGISTRY else "hub id"
        raise ConfigError(
            f"model '{name}' ({via}) is not in the local Hugging Face cache and HF_HUB_OFFLINE=1 forbids downloading it: "
            f"download it where there is internet (`huggingface-cli download {source}`) and copy the cache here, "
            f"or give a local path; {registry}"
        )


def evaluates(cfg: HarnessConfig) -> bool:
    e = cfg.eval
    return bool(e.benchmarks) and (
        e.before_training or e.after_training or e.every_steps > 0 or bool(e.at_budget_fractions)
    )


def preflight(configs: Iterable[HarnessConfig], *, data: bool = True) -> None:
    """Check every distinct model, training set and (when a run evaluates) benchmark of ``configs``.

    Raises :class:`ConfigError` for a model and :class:`benchmarks.datasets.DatasetError` (naming the file
    and line where there is one) for data. ``data=False`` checks the models only."""
    from benchmarks.datasets import expand_benchmarks, load_benchmark, load_train_set

    seen: set[tuple] = set()
    for cfg in configs:
        checks: list[tuple] = [("model", cfg.model.name)]
        if data:
            checks.append(("train", cfg.data.train, cfg.data.train_size, cfg.data.shuffle_seed))
            if evaluates(cfg):
                checks += [("benchmark", b, cfg.eval.max_examples) for b in expand_benchmarks(cfg.eval.benchmarks)]
        for check in checks:
            if check in seen:
                continue
            seen.add(check)
            if check[0] == "model":
                check_model(check[1])
            elif check[0] == "train":
                load_train_set(check[1], check[2], check[3])
            else:
                load_benchmark(check[1], check[2])


#: Sweep parameters that choose what :func:`preflight` checks.
_RESOURCE_KEYS = ("model.name", "data.train", "eval.benchmarks")


def sweep_configs(space, mid_cfg: HarnessConfig) -> list[HarnessConfig]:
    """The configs a sweep's preflight checks: the midpoint trial's, and one per value of a categorical parameter
    that picks a model, a training set or the benchmarks (``sweeps.space.SearchSpace``)."""
    import copy

    out = [mid_cfg]
    for p in space.params:
        if p.key in _RESOURCE_KEYS and p.type == "categorical":
            section, key = p.key.split(".")
            for value in p.choices:
                cfg = copy.deepcopy(mid_cfg)
                setattr(getattr(cfg, section), key, value)
                out.append(cfg)
    return out
