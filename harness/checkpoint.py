"""Checkpoints that hold all training state, in safetensors + JSON (never pickle).

Layout of ``<output_dir>/checkpoint-<step>/``::

    model/                      save_pretrained (safetensors) + tokenizer
    optimizer.safetensors       optimizer tensors, keyed "<param index>.<name>"
    optimizer.json              param groups and non-tensor state
    scheduler.json              LR scheduler state
    trainer_state.json          step, policy version, data position, MLflow run id, totals, config
    rank<r>/rng.safetensors     torch RNG state of process r
    rank<r>/rng.json            python/numpy RNG state of process r
    rank<r>/algorithm.safetensors + algorithm.json   the plug-in's state (e.g. replay buffer shard)

A checkpoint is written into a temporary folder and renamed into place, so a crash never leaves a
half-written checkpoint that ``--resume`` would pick up.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load_file as load_np, save_file as save_np
from safetensors.torch import load_file as load_torch, save_file as save_torch

from harness.config import atomic_write_json

CKPT_PREFIX = "checkpoint-"


def _tensor_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for name, val in st.items():
            if torch.is_tensor(val):
                tensors[f"{pid}.{name}"] = val.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[name] = val
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def save_optimizer(optimizer: torch.optim.Optimizer, folder: Path) -> None:
    tensors, meta = _tensor_state(optimizer)
    save_torch(tensors, str(folder / "optimizer.safetensors"))
    (folder / "optimizer.json").write_text(json.dumps(meta))


def load_optimizer(optimizer: torch.optim.Optimizer, folder: Path) -> None:
    tensors = load_torch(str(folder / "optimizer.safetensors"))
    meta = json.loads((folder / "optimizer.json").read_text())
    state: dict[int, dict[str, Any]] = {}
    for key, val in tensors.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = val
    for pid, vals in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(vals)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {"torch": torch.get_rng_state()}, {
        "python": [py_state[0], list(py_state[1]), py_state[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }


def restore_rng(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"])
    v, internal, gauss = meta["python"]
    random.setstate((v, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def save_rank_state(folder: Path, rank: int, algo_state: tuple[dict[str, np.ndarray], dict[str, Any]], extra: dict[str, Any]) -> None:
    d = folder / f"rank{rank}"
    d.mkdir(parents=True, exist_ok=True)
    t, m = rng_state()
    save_torch(t, str(d / "rng.safetensors"))
    (d / "rng.json").write_text(json.dumps({**m, **extra}))
    tensors, meta = algo_state
    save_np({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(d / "algorithm.safetensors"))
    (d / "algorithm.json").write_text(json.dumps(meta))


def load_rank_state(folder: Path, rank: int) -> tuple[tuple[dict[str, np.ndarray], dict[str, Any]], dict[str, Any]]:
    d = folder / f"rank{rank}"
    if not d.exists():
        raise FileNotFoundError(f"{folder} has no state for process {rank}: was it saved with a different number of processes?")
    rng_meta = json.loads((d / "rng.json").read_text())
    restore_rng(load_torch(str(d / "rng.safetensors")), rng_meta)
    algo = (load_np(str(d / "algorithm.safetensors")), json.loads((d / "algorithm.json").read_text()))
    return algo, rng_meta


def staging_dir(output_dir: Path, step: int) -> Path:
    d = output_dir / f".tmp-{CKPT_PREFIX}{step}"
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    return d


def finalize(output_dir: Path, staging: Path, step: int, keep: int) -> Path:
    """Rename the staged folder into place, point ``latest`` at it, prune old checkpoints."""
    final = output_dir / f"{CKPT_PREFIX}{step}"
    if final.exists():
        shutil.rmtree(final)
    staging.rename(final)
    atomic_write_json(output_dir / "latest.json", {"checkpoint": final.name, "step": step})
    ckpts = sorted((p for p in output_dir.glob(f"{CKPT_PREFIX}*") if p.is_dir()), key=lambda p: int(p.name[len(CKPT_PREFIX):]))
    for old in ckpts[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def find_checkpoint(path: str | Path) -> Path:
    """Accept a checkpoint folder or an output folder (then its latest checkpoint)."""
    p = Path(path)
    if (p / "trainer_state.json").exists():
        return p
    latest = p / "latest.json"
    if latest.exists():
        return p / json.loads(latest.read_text())["checkpoint"]
    raise FileNotFoundError(f"no checkpoint at '{p}': expected a checkpoint-<step> folder or an output folder with latest.json")


def write_trainer_state(folder: Path, state: dict[str, Any]) -> None:
    atomic_write_json(folder / "trainer_state.json", state)


def read_trainer_state(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "trainer_state.json").read_text())
