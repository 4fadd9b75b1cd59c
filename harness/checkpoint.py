"""Checkpoints that hold all training state, in safetensors + JSON (never pickle).

Layout of ``<output_dir>/checkpoint-<step>/``::

    model/                      save_pretrained (safetensors) + tokenizer
    optimizer.safetensors       optimizer tensors, keyed "<param index>.<name>"
    optimizer.json              param groups and non-tensor state
    trainer_state.json          TrainState: step, policy version, MLflow run id, totals, evaluations, config, budget
    rank<r>/rng.safetensors     torch RNG state of process r
    rank<r>/rng.json            python/numpy RNG state and prompt-sampler position of process r
    rank<r>/algorithm.safetensors + algorithm.json   the plug-in's state (e.g. replay buffer shard)
    manifest.json               size + sha256 of every other file (written last, before the rename)

A checkpoint is written into a temporary folder and renamed into place, so a crash never leaves a
half-written checkpoint that ``--resume`` would pick up. What a disk can still do to a finished one
(truncation, a lost file, flipped bits) is caught on resume: :func:`find_checkpoint` checks every file
against the manifest and takes the newest intact checkpoint of an output folder, naming the bad file of
each one it skips; it finds checkpoints from the ``checkpoint-<step>`` folders themselves, so a lost
``latest.json`` loses nothing. Checkpoints from before manifests are checked for structure only (every
file present, JSON readable, safetensors complete).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from harness.io import atomic_write_json

if TYPE_CHECKING:  # torch, numpy and safetensors are imported where used: the CLI imports this module for its errors
    import numpy as np
    import torch

CKPT_PREFIX = "checkpoint-"
MANIFEST = "manifest.json"
DAMAGED_PREFIX = "damaged-"
_CKPT_NAME = re.compile(rf"^{CKPT_PREFIX}(\d+)$")


class CheckpointError(RuntimeError):
    """No usable checkpoint where one was asked for (or expected): the message says which file is bad and what to do."""


def _tensor_state(optimizer: "torch.optim.Optimizer | dict") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    import torch

    sd = optimizer if isinstance(optimizer, dict) else optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for name, val in st.items():
            if torch.is_tensor(val):
                tensors[f"{pid}.{name}"] = val.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[name] = val
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def save_optimizer(optimizer: "torch.optim.Optimizer | dict", folder: Path) -> None:
    """``optimizer``: the optimizer, or a state dict in its layout (integer parameter ids; an FSDP run's gathered one)."""
    from safetensors.torch import save_file as save_torch

    tensors, meta = _tensor_state(optimizer)
    save_torch(tensors, str(folder / "optimizer.safetensors"))
    (folder / "optimizer.json").write_text(json.dumps(meta))


def load_optimizer(optimizer: torch.optim.Optimizer, folder: Path) -> None:
    optimizer.load_state_dict(read_optimizer_state(folder))


def read_optimizer_state(folder: Path) -> dict[str, Any]:
    """The saved optimizer state dict (integer parameter ids, as ``optimizer.state_dict()`` gives it)."""
    from safetensors.torch import load_file as load_torch

    tensors = load_torch(str(folder / "optimizer.safetensors"))
    meta = json.loads((folder / "optimizer.json").read_text())
    state: dict[int, dict[str, Any]] = {}
    for key, val in tensors.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = val
    for pid, vals in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(vals)
    return {"state": state, "param_groups": meta["param_groups"]}


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    import numpy as np
    import torch

    np_state = np.random.get_state()
    py_state = random.getstate()
    return {"torch": torch.get_rng_state()}, {
        "python": [py_state[0], list(py_state[1]), py_state[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }


def restore_rng(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    import numpy as np
    import torch

    torch.set_rng_state(tensors["torch"])
    v, internal, gauss = meta["python"]
    random.setstate((v, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def save_rank_state(
    folder: Path, rank: int, algo_state: tuple[dict[str, np.ndarray], dict[str, Any]], extra: dict[str, Any]
) -> None:
    import numpy as np
    from safetensors.numpy import save_file as save_np
    from safetensors.torch import save_file as save_torch

    d = folder / f"rank{rank}"
    d.mkdir(parents=True, exist_ok=True)
    t, m = rng_state()
    save_torch(t, str(d / "rng.safetensors"))
    (d / "rng.json").write_text(json.dumps({**m, **extra}))
    tensors, meta = algo_state
    save_np({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(d / "algorithm.safetensors"))
    (d / "algorithm.json").write_text(json.dumps(meta))


def load_rank_state(folder: Path, rank: int) -> tuple[tuple[dict[str, np.ndarray], dict[str, Any]], dict[str, Any]]:
    from safetensors.numpy import load_file as load_np
    from safetensors.torch import load_file as load_torch

    d = folder / f"rank{rank}"
    if not d.exists():
        raise FileNotFoundError(
            f"{folder} has no state for process {rank}: was it saved with a different number of processes?"
        )
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
    """Write the manifest, rename the staged folder into place, point ``latest`` at it, prune old checkpoints."""
    write_manifest(staging)
    final = output_dir / f"{CKPT_PREFIX}{step}"
    if final.exists():
        shutil.rmtree(final)
    staging.rename(final)
    atomic_write_json(output_dir / "latest.json", {"checkpoint": final.name, "step": step})
    for old in list_checkpoints(output_dir)[keep:]:
        shutil.rmtree(old, ignore_errors=True)
    return final


# -- integrity --------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.relative_to(folder).as_posix() != MANIFEST)


def write_manifest(folder: Path) -> dict[str, Any]:
    """``manifest.json``: size and sha256 of every file of the checkpoint folder."""
    files = {p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": _sha256(p)} for p in _files(folder)}
    manifest = {"version": 1, "files": files}
    atomic_write_json(folder / MANIFEST, manifest)
    return manifest


def _check_safetensors(path: Path) -> str | None:
    """A structural check: the header parses and the file is as long as the header says (catches truncation)."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            return f"{size} bytes, too short for a safetensors file"
        n = int.from_bytes(head, "little")
        if n > size - 8:
            return f"truncated ({size} bytes, its header alone needs {8 + n})"
        try:
            header = json.loads(fh.read(n))
        except ValueError:
            return "unreadable safetensors header"
    end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    if size != 8 + n + end:
        return (
            f"truncated ({size} bytes, expected {8 + n + end})"
            if size < 8 + n + end
            else f"{size} bytes, expected {8 + n + end}"
        )
    return None


def _structure_problems(folder: Path) -> list[str]:
    """Required files present, JSON readable, safetensors complete (the check for checkpoints without a manifest)."""
    problems: list[str] = []
    try:
        state = json.loads((folder / "trainer_state.json").read_text())
    except FileNotFoundError:
        return ["trainer_state.json: missing"]
    except ValueError as e:
        return [f"trainer_state.json: unreadable JSON ({e})"]
    ranks = int(state.get("num_processes", 1) or 1) if isinstance(state, dict) else 1
    required = ["optimizer.safetensors", "optimizer.json", "model/config.json"]
    for r in range(ranks):
        required += [
            f"rank{r}/rng.safetensors",
            f"rank{r}/rng.json",
            f"rank{r}/algorithm.safetensors",
            f"rank{r}/algorithm.json",
        ]
    for rel in required:
        if not (folder / rel).is_file():
            problems.append(f"{rel}: missing")
    if not list((folder / "model").glob("*.safetensors")):
        problems.append("model/*.safetensors: missing")
    for p in _files(folder):
        rel = p.relative_to(folder).as_posix()
        if p.suffix == ".json":
            try:
                json.loads(p.read_text())
            except (ValueError, UnicodeDecodeError) as e:
                problems.append(f"{rel}: unreadable JSON ({e})")
        elif p.suffix == ".safetensors":
            why = _check_safetensors(p)
            if why:
                problems.append(f"{rel}: {why}")
    return problems


def verify_checkpoint(folder: str | Path) -> list[str]:
    """What is wrong with a checkpoint folder ("<file>: <problem>"); empty when it is intact.

    With a manifest: every listed file present, of the recorded size and sha256. Without one (older
    checkpoints): :func:`_structure_problems`.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return [f"{folder}: not a folder"]
    mpath = folder / MANIFEST
    if not mpath.exists():
        return _structure_problems(folder)
    try:
        files = json.loads(mpath.read_text())["files"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        return [f"{MANIFEST}: unreadable ({type(e).__name__}: {e})"]
    problems = []
    for rel, meta in sorted(files.items()):
        p = folder / rel
        if not p.is_file():
            problems.append(f"{rel}: missing")
        elif p.stat().st_size != meta["size"]:
            size = p.stat().st_size
            problems.append(
                f"{rel}: {size} bytes, expected {meta['size']}" + (" (truncated)" if size < meta["size"] else "")
            )
        elif _sha256(p) != meta["sha256"]:
            problems.append(f"{rel}: sha256 differs from the manifest (the file is corrupted)")
    return problems


def checkpoint_step(folder: Path) -> int | None:
    m = _CKPT_NAME.match(folder.name)
    return int(m.group(1)) if m else None


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """The ``checkpoint-<step>`` folders of an output folder, newest (highest step) first."""
    p = Path(output_dir)
    if not p.is_dir():
        return []
    found = [c for c in p.iterdir() if c.is_dir() and checkpoint_step(c) is not None]
    return sorted(found, key=lambda c: checkpoint_step(c), reverse=True)


def is_checkpoint_dir(path: str | Path) -> bool:
    p = Path(path)
    return checkpoint_step(p) is not None or (p / "trainer_state.json").exists() or (p / MANIFEST).exists()


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr, flush=True)


def find_checkpoint(
    path: str | Path, *, verify: bool = True, warn: Callable[[str], None] = _warn, set_aside_damaged: bool = False
) -> Path:
    """Accept a checkpoint folder or an output folder (then its newest intact checkpoint).

    An output folder's checkpoints are found from its ``checkpoint-<step>`` folders (``latest.json`` is not
    needed); a damaged one is skipped with a warning naming its bad file (``set_aside_damaged``: and renamed
    to ``damaged-checkpoint-<step>``, so the resumed run neither prunes its own new checkpoints in favour of it
    nor resumes from it again). A checkpoint folder given explicitly must be intact. Raises
    :class:`CheckpointError` when there is nothing usable.
    """
    p = Path(path)
    if is_checkpoint_dir(p):
        if not p.is_dir():
            raise CheckpointError(f"checkpoint folder '{p}' does not exist")
        problems = verify_checkpoint(p) if verify else []
        if problems:
            others = [c.name for c in list_checkpoints(p.parent) if c != p]
            raise CheckpointError(
                f"checkpoint '{p}' is damaged: {'; '.join(problems)}"
                + (
                    f". Resume from its output folder '{p.parent}' to use the newest intact checkpoint (there: {', '.join(others)})"
                    if others
                    else ""
                )
            )
        return p
    candidates = list_checkpoints(p)
    if not candidates:
        if (p / "latest.json").exists():
            raise CheckpointError(
                f"'{p}' has latest.json but no checkpoint-<step> folder: the checkpoints were removed"
            )
        raise CheckpointError(
            f"no checkpoint at '{p}': expected a checkpoint-<step> folder or an output folder holding them"
        )
    pointer = None
    try:
        pointer = json.loads((p / "latest.json").read_text())["checkpoint"]
    except FileNotFoundError:
        pass
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        warn(f"{p / 'latest.json'} is unreadable; the checkpoints are found from the folders")
    skipped: list[str] = []
    damaged: list[Path] = []
    for c in candidates:
        problems = verify_checkpoint(c) if verify else []
        if problems:
            skipped.append(f"{c.name} ({'; '.join(problems)})")
            damaged.append(c)
            continue
        for s, bad in zip(skipped, damaged):
            moved = f"; moved to {set_aside(bad).name}" if set_aside_damaged else ""
            warn(f"checkpoint {s} is damaged: skipped{moved}")
        if skipped:
            warn(f"resuming from {c.name}, the newest intact checkpoint in {p}")
        elif pointer is None and not (p / "latest.json").exists():
            warn(f"{p / 'latest.json'} is missing; resuming from {c.name}, the newest checkpoint folder in {p}")
        return c
    raise CheckpointError(
        f"no intact checkpoint in '{p}': "
        + "; ".join(skipped)
        + ". Restore a copy, or start the run afresh in another output folder (these checkpoints are not overwritten)"
    )


def set_aside(folder: Path) -> Path:
    """Rename a damaged checkpoint to ``damaged-checkpoint-<step>`` (kept for inspection, never resumed from or pruned)."""
    target = folder.with_name(DAMAGED_PREFIX + folder.name)
    if target.exists():
        shutil.rmtree(target)
    folder.rename(target)
    return target


def _states_newest_first(path: str | Path) -> list[dict[str, Any]]:
    p = Path(path)
    folders = [p] if is_checkpoint_dir(p) else list_checkpoints(p)
    out = []
    for c in folders:
        try:
            out.append(read_trainer_state(c))
        except (OSError, ValueError):
            continue
    return out


def recorded_run_id(path: str | Path) -> str | None:
    """The MLflow run id in the newest readable trainer_state.json under ``path`` (best effort, for error handling)."""
    for st in _states_newest_first(path):
        if isinstance(st, dict) and st.get("mlflow_run_id"):
            return st["mlflow_run_id"]
    return None


def saved_config(path: str | Path) -> dict[str, Any]:
    """The run's resolved config as saved with its checkpoints (the newest readable one; all checkpoints of a run hold
    the same config), without verifying the checkpoint - the trainer does that when it resumes."""
    for st in _states_newest_first(path):
        if isinstance(st, dict) and isinstance(st.get("config"), dict):
            return st["config"]
    raise CheckpointError(
        f"no checkpoint with a readable trainer_state.json at '{path}': expected a checkpoint-<step> folder or an output folder holding them"
    )


@dataclass
class TrainState:
    """What ``trainer_state.json`` holds: the run's progress outside the weights, the optimizer and the per-process
    files, written and read as one record (the trainer keeps its live progress in one of these)."""

    step: int = 0  # optimizer steps taken (= steps trained)
    policy_version: int = 0  # weight versions the rollout engine has seen
    mlflow_run_id: str | None = None
    totals: dict[str, float] = field(default_factory=dict)  # running totals of harness.budget.TOTALED
    eval_history: list[dict[str, Any]] = field(default_factory=list)  # one summary per evaluation
    fractions_done: list[float] = field(default_factory=list)  # eval.at_budget_fractions already evaluated
    config: dict[str, Any] = field(default_factory=dict)  # the resolved config, secrets masked
    num_processes: int = 1
    budget: list[Any] = field(default_factory=list)  # [unit, value]

    def write(self, folder: Path) -> None:
        atomic_write_json(folder / "trainer_state.json", dataclasses.asdict(self))

    @classmethod
    def read(cls, folder: Path) -> "TrainState":
        data = read_trainer_state(folder)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CheckpointError(
                f"{folder / 'trainer_state.json'}: unknown keys {', '.join(unknown)} (expected {', '.join(sorted(known))})"
            )
        return cls(**data)


def read_trainer_state(folder: Path) -> dict[str, Any]:
    """``trainer_state.json`` as a plain mapping (for tools that read one field of any checkpoint)."""
    return json.loads((folder / "trainer_state.json").read_text())
