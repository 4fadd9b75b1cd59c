"""Named prompt sets in one schema: rows ``{"id", "problem", "answer", "benchmark"}``.

``load_benchmark(name)`` returns an evaluation set, ``load_train_set(name, size, seed)`` a training
set. ``arith`` is built in and offline; a path to a JSONL file with ``problem``/``answer`` fields
works for both. Loaders are registered by name so more benchmarks plug in without touching callers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from benchmarks import arith

Row = dict[str, str]

_EVAL_LOADERS: dict[str, Callable[..., list[Row]]] = {}
_TRAIN_LOADERS: dict[str, Callable[..., list[Row]]] = {}


class DatasetError(ValueError):
    """A dataset cannot be loaded or a row is malformed; the message names the file/benchmark and row."""


def register_benchmark(name: str, loader: Callable[..., list[Row]]) -> None:
    _EVAL_LOADERS[name] = loader


def register_train_set(name: str, loader: Callable[..., list[Row]]) -> None:
    _TRAIN_LOADERS[name] = loader


def available_benchmarks() -> list[str]:
    return sorted(_EVAL_LOADERS)


def available_train_sets() -> list[str]:
    return sorted(_TRAIN_LOADERS)


def load_jsonl(path: str | Path, benchmark: str | None = None) -> list[Row]:
    """Rows from a JSONL file with ``problem`` and ``answer`` (``id`` optional); bad rows fail naming the line."""
    p = Path(path)
    name = benchmark or p.stem
    rows: list[Row] = []
    with p.open() as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DatasetError(f"{p}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise DatasetError(f"{p}:{lineno}: expected a JSON object with 'problem' and 'answer'")
            for key in ("problem", "answer"):
                if not isinstance(obj.get(key), (str, int, float)) or str(obj.get(key)).strip() == "":
                    raise DatasetError(f"{p}:{lineno}: field '{key}' is missing or empty (expected a non-empty string)")
            rows.append({"id": str(obj.get("id", f"{name}-{lineno - 1}")), "problem": str(obj["problem"]), "answer": str(obj["answer"]), "benchmark": name})
    if not rows:
        raise DatasetError(f"{p}: no rows found (expected JSONL with 'problem' and 'answer' fields)")
    ids = [r["id"] for r in rows]
    if len(set(ids)) != len(ids):
        raise DatasetError(f"{p}: duplicate 'id' values; ids must be unique (they key per-prompt state)")
    return rows


def load_benchmark(name: str, max_examples: int | None = None) -> list[Row]:
    if name in _EVAL_LOADERS:
        rows = _EVAL_LOADERS[name]()
    elif name.endswith(".jsonl") and Path(name).exists():
        rows = load_jsonl(name)
    else:
        raise DatasetError(f"unknown benchmark '{name}'; available: {', '.join(available_benchmarks())} (or a path to a .jsonl file)")
    return rows[:max_examples] if max_examples else rows


def load_train_set(name: str, size: int | None = None, seed: int = 42) -> list[Row]:
    if name in _TRAIN_LOADERS:
        rows = _TRAIN_LOADERS[name](size=size, seed=seed)
    elif name.endswith(".jsonl") and Path(name).exists():
        rows = load_jsonl(name)
    else:
        raise DatasetError(f"unknown training set '{name}'; available: {', '.join(available_train_sets())} (or a path to a .jsonl file)")
    return rows[:size] if size else rows


register_benchmark("arith", lambda: arith.make_arith("test"))
register_train_set("arith", lambda size=None, seed=42: arith.make_arith("train", n=size, seed=seed))
