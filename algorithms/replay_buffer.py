"""Compact per-prompt FIFO replay buffer for RePO.

Each prompt (keyed by a stable prompt-id string, never by templated text) keeps up
to ``max_cache_size`` past completions, oldest first, like the reference's
``deque(maxlen=max_cache_size)``.  An entry is: completion token ids, the behaviour
policy's per-token log-probs, a scalar reward and the policy version that produced it.

Storage layout (per prompt, five exact-size numpy arrays, no padding, no Python
object per token or per entry)::

    tokens    int32   [sum of lengths]   completions concatenated, oldest first
    logprobs  float32 [sum of lengths]   aligned with ``tokens``
    lengths   int32   [entries]
    rewards   float64 [entries]
    versions  int64   [entries]

So a stored token costs 8 bytes and an entry 20 bytes on top of its tokens
(16 entries x 200 tokens -> 8.1 B/token; 16 x 12 tokens -> 9.67 B/token).
:meth:`ReplayBuffer.nbytes` counts exactly these array bytes; it does not count
Python object headers (numpy array objects, the dict, the id strings: a few hundred
bytes per prompt), see :meth:`ReplayBuffer.overhead_bytes`.

Adding copies the prompt's arrays (O(size of that prompt's buffer)), which keeps
every array exact-size.  Log-probs are stored as float32 (token ids must fit int32);
everything stored round-trips bit-exactly through :meth:`save` / :meth:`load`
(one safetensors file, metadata in its header, written atomically; no pickle).
"""

from __future__ import annotations

import json
import math
import operator
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from harness.io import atomic_write

__all__ = ["ReplayEntry", "ReplayBuffer"]

_FORMAT = "rl_harness.replay_buffer"
_FORMAT_VERSION = 1
_META_KEY = "replay_buffer_meta"
_I32 = np.iinfo(np.int32)


@dataclass(eq=False)
class ReplayEntry:
    completion_ids: np.ndarray  # int32, 1-D
    logprobs: np.ndarray  # float32, 1-D, same length
    reward: float
    policy_version: int

    def __len__(self) -> int:
        return int(self.completion_ids.shape[0])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ReplayEntry):
            return NotImplemented
        return (
            np.array_equal(self.completion_ids, other.completion_ids)
            and self.logprobs.tobytes() == other.logprobs.tobytes()
            and _same_float(self.reward, other.reward)
            and self.policy_version == other.policy_version
        )


def _same_float(a: float, b: float) -> bool:
    return np.float64(a).tobytes() == np.float64(b).tobytes()


def _to_numpy(x: Any, what: str) -> np.ndarray:
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor without importing torch
        x = x.detach().cpu().numpy()
    try:
        arr = np.asarray(x)
    except Exception as e:  # ragged lists etc.
        raise ValueError(f"{what} could not be converted to an array: {e}") from None
    if arr.ndim != 1:
        raise ValueError(f"{what} must be 1-D, got shape {tuple(arr.shape)}")
    return arr


def _as_ids(x: Any) -> np.ndarray:
    arr = _to_numpy(x, "completion_ids")
    if arr.size == 0:
        return np.zeros(0, dtype=np.int32)
    if arr.dtype.kind not in "iu":
        raise ValueError(f"completion_ids must be integers, got dtype {arr.dtype}")
    if arr.min() < _I32.min or arr.max() > _I32.max:
        raise ValueError("completion_ids do not fit in int32")
    return arr.astype(np.int32, copy=False)


def _as_logprobs(x: Any) -> np.ndarray:
    arr = _to_numpy(x, "logprobs")
    if arr.size == 0:
        return np.zeros(0, dtype=np.float32)
    if arr.dtype.kind not in "fiu":
        raise ValueError(f"logprobs must be floats, got dtype {arr.dtype}")
    return arr.astype(np.float32, copy=False)


def _as_reward(r: Any) -> float:
    try:
        v = float(r)
    except (TypeError, ValueError):
        raise ValueError(f"reward must be a real number, got {r!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"reward must be finite, got {v}")
    return v


def _as_version(v: Any) -> int:
    if isinstance(v, bool):
        raise TypeError("policy_version must be an int, got bool")
    try:
        return operator.index(v)
    except TypeError:
        raise TypeError(f"policy_version must be an int, got {type(v).__name__}") from None


class _PromptStore:
    """One prompt's entries in five exact-size arrays (see module docstring)."""

    __slots__ = ("tokens", "logprobs", "lengths", "rewards", "versions")

    def __init__(self, tokens, logprobs, lengths, rewards, versions):
        self.tokens = tokens
        self.logprobs = logprobs
        self.lengths = lengths
        self.rewards = rewards
        self.versions = versions

    @classmethod
    def empty(cls) -> "_PromptStore":
        return cls(
            np.zeros(0, np.int32),
            np.zeros(0, np.float32),
            np.zeros(0, np.int32),
            np.zeros(0, np.float64),
            np.zeros(0, np.int64),
        )

    def arrays(self) -> tuple[np.ndarray, ...]:
        return (self.tokens, self.logprobs, self.lengths, self.rewards, self.versions)

    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays())

    def append(self, ids, lps, rewards, versions, max_size: int) -> None:
        """Append entries (lists of arrays) then keep only the newest ``max_size``."""
        lengths = np.concatenate([self.lengths, np.array([len(x) for x in ids], np.int32)])
        rw = np.concatenate([self.rewards, np.asarray(rewards, np.float64)])
        vs = np.concatenate([self.versions, np.asarray(versions, np.int64)])
        drop = max(0, len(lengths) - max_size)
        drop_tokens = int(lengths[:drop].sum(dtype=np.int64))
        self.tokens = np.concatenate([self.tokens[drop_tokens:], *ids])
        self.logprobs = np.concatenate([self.logprobs[drop_tokens:], *lps])
        # Slices of fresh arrays would keep the dropped head alive; copy to stay exact.
        self.lengths = lengths[drop:].copy() if drop else lengths
        self.rewards = rw[drop:].copy() if drop else rw
        self.versions = vs[drop:].copy() if drop else vs

    def offsets(self) -> np.ndarray:
        off = np.zeros(len(self.lengths) + 1, dtype=np.int64)
        np.cumsum(self.lengths, out=off[1:])
        return off


class ReplayBuffer:
    """Per-prompt FIFO replay buffer with at most ``max_cache_size`` entries per prompt."""

    def __init__(self, max_cache_size: int):
        if isinstance(max_cache_size, bool):
            raise TypeError("max_cache_size must be an int")
        max_cache_size = operator.index(max_cache_size)
        if max_cache_size < 1:
            raise ValueError(f"max_cache_size must be >= 1, got {max_cache_size}")
        self.max_cache_size = max_cache_size
        self._store: dict[str, _PromptStore] = {}

    # ------------------------------------------------------------------ writing
    def add(self, prompt_id: str, completion_ids, logprobs, reward: float, policy_version: int) -> None:
        """Append one completion for ``prompt_id``; evicts the oldest beyond capacity."""
        self.add_many(prompt_id, [completion_ids], [logprobs], [reward], policy_version)

    def add_many(
        self,
        prompt_id: str,
        list_of_completion_ids: Sequence,
        list_of_logprobs: Sequence,
        rewards: Sequence[float],
        policy_version: "int | Sequence[int]",
    ) -> None:
        """Append several completions (in order) for one prompt.

        ``policy_version`` is one int for all entries, or one per entry.  All inputs are
        validated before anything is stored, so a bad entry leaves the buffer unchanged.
        """
        if not isinstance(prompt_id, str):
            raise TypeError(f"prompt_id must be a str, got {type(prompt_id).__name__}")
        ids_list = list(list_of_completion_ids)
        lp_list = list(list_of_logprobs)
        rw_list = list(rewards)
        n = len(ids_list)
        if len(lp_list) != n or len(rw_list) != n:
            raise ValueError(
                f"add_many needs as many logprobs and rewards as completions: got "
                f"{n} completions, {len(lp_list)} logprobs, {len(rw_list)} rewards"
            )
        if isinstance(policy_version, (list, tuple, np.ndarray)):
            vs = [_as_version(v) for v in policy_version]
            if len(vs) != n:
                raise ValueError(f"got {len(vs)} policy versions for {n} completions")
        else:
            vs = [_as_version(policy_version)] * n
        if n == 0:
            return
        ids, lps = [], []
        for i, (c, lp) in enumerate(zip(ids_list, lp_list)):
            c, lp = _as_ids(c), _as_logprobs(lp)
            if c.shape[0] != lp.shape[0]:
                raise ValueError(
                    f"completion {i}: completion_ids has {c.shape[0]} tokens but logprobs "
                    f"has {lp.shape[0]}; they must have the same length"
                )
            ids.append(c)
            lps.append(lp)
        rws = [_as_reward(r) for r in rw_list]
        # Only the newest max_cache_size of this batch can survive.
        keep = self.max_cache_size
        if n > keep:
            ids, lps, rws, vs = ids[-keep:], lps[-keep:], rws[-keep:], vs[-keep:]
        store = self._store.get(prompt_id)
        if store is None:
            store = self._store[prompt_id] = _PromptStore.empty()
        store.append(ids, lps, rws, vs, self.max_cache_size)

    # ------------------------------------------------------------------ reading
    def __len__(self) -> int:
        """Number of prompts with at least one entry."""
        return len(self._store)

    def __contains__(self, prompt_id: object) -> bool:
        return prompt_id in self._store

    def __iter__(self) -> Iterator[str]:
        return iter(self._store)

    def prompt_ids(self) -> list[str]:
        """Prompt ids in first-insertion order."""
        return list(self._store)

    def size(self, prompt_id: str) -> int:
        """Number of entries stored for ``prompt_id`` (0 if unknown)."""
        s = self._store.get(prompt_id)
        return 0 if s is None else int(s.lengths.shape[0])

    def rewards(self, prompt_id: str) -> np.ndarray:
        """float64 rewards, oldest first (a copy; empty for an unknown prompt)."""
        s = self._store.get(prompt_id)
        return np.zeros(0, np.float64) if s is None else s.rewards.copy()

    def versions(self, prompt_id: str) -> np.ndarray:
        """int64 policy versions, oldest first (a copy; empty for an unknown prompt)."""
        s = self._store.get(prompt_id)
        return np.zeros(0, np.int64) if s is None else s.versions.copy()

    def lengths(self, prompt_id: str) -> np.ndarray:
        """int32 completion lengths, oldest first (a copy; empty for an unknown prompt)."""
        s = self._store.get(prompt_id)
        return np.zeros(0, np.int32) if s is None else s.lengths.copy()

    def get(self, prompt_id: str, indices: Iterable[int]) -> list[ReplayEntry]:
        """Entries at ``indices`` (0 = oldest), in the given order; arrays are copies.

        Raises ``KeyError`` for an unknown prompt (unless ``indices`` is empty) and
        ``IndexError`` for indices outside ``range(size(prompt_id))``.
        """
        idx = [operator.index(i) for i in indices]
        if not idx:
            return []
        s = self._store.get(prompt_id)
        if s is None:
            raise KeyError(f"unknown prompt_id {prompt_id!r}")
        n = int(s.lengths.shape[0])
        bad = [i for i in idx if not 0 <= i < n]
        if bad:
            raise IndexError(f"indices {bad} out of range for prompt {prompt_id!r} with {n} entries")
        off = s.offsets()
        return [
            ReplayEntry(
                completion_ids=s.tokens[off[i] : off[i + 1]].copy(),
                logprobs=s.logprobs[off[i] : off[i + 1]].copy(),
                reward=float(s.rewards[i]),
                policy_version=int(s.versions[i]),
            )
            for i in idx
        ]

    # ------------------------------------------------------------------ accounting
    def num_entries(self) -> int:
        return sum(int(s.lengths.shape[0]) for s in self._store.values())

    def num_tokens(self) -> int:
        return sum(int(s.tokens.shape[0]) for s in self._store.values())

    def nbytes(self) -> int:
        """Bytes of the stored numpy arrays (token ids, log-probs, per-entry lengths,
        rewards, versions).  Python object headers are not included: see
        :meth:`overhead_bytes`."""
        return sum(s.nbytes() for s in self._store.values())

    def overhead_bytes(self) -> int:
        """Estimate of the Python-object overhead on top of :meth:`nbytes` (the dict, the
        prompt-id strings, the per-prompt store objects and numpy array headers)."""
        total = sys.getsizeof(self._store)
        for pid, s in self._store.items():
            total += sys.getsizeof(pid) + sys.getsizeof(s)
            total += sum(sys.getsizeof(a) - a.nbytes for a in s.arrays())
        return total

    def bytes_per_token(self, include_overhead: bool = False) -> float:
        """``nbytes() / num_tokens()`` (NaN when empty); with ``include_overhead`` the
        Python-object overhead estimate is added to the numerator."""
        t = self.num_tokens()
        if t == 0:
            return float("nan")
        b = self.nbytes() + (self.overhead_bytes() if include_overhead else 0)
        return b / t

    # ------------------------------------------------------------------ equality
    def __eq__(self, other: object) -> bool:
        """Same capacity and, per prompt, identical entries in the same order (token ids,
        bit-identical log-probs and rewards, versions).  Prompt order is ignored."""
        if not isinstance(other, ReplayBuffer):
            return NotImplemented
        if self.max_cache_size != other.max_cache_size or self._store.keys() != other._store.keys():
            return False
        for pid, a in self._store.items():
            b = other._store[pid]
            for x, y in zip(a.arrays(), b.arrays()):
                if x.dtype != y.dtype or x.shape != y.shape or x.tobytes() != y.tobytes():
                    return False
        return True

    __hash__ = None  # mutable

    def __repr__(self) -> str:
        return (
            f"ReplayBuffer(max_cache_size={self.max_cache_size}, prompts={len(self)}, "
            f"entries={self.num_entries()}, tokens={self.num_tokens()}, nbytes={self.nbytes()})"
        )

    # ------------------------------------------------------------------ serialisation
    def state_dict(self) -> tuple[dict[str, np.ndarray], dict]:
        """``(tensors, meta)``: six flat arrays (all prompts concatenated in
        ``meta["prompt_ids"]`` order) for safetensors, and JSON-able metadata."""
        stores = list(self._store.values())

        def cat(i: int, dtype) -> np.ndarray:
            parts = [s.arrays()[i] for s in stores]
            return np.ascontiguousarray(np.concatenate(parts) if parts else np.zeros(0, dtype), dtype=dtype)

        tensors = {
            "tokens": cat(0, np.int32),
            "logprobs": cat(1, np.float32),
            "lengths": cat(2, np.int32),
            "rewards": cat(3, np.float64),
            "versions": cat(4, np.int64),
            "entries_per_prompt": np.array([s.lengths.shape[0] for s in stores], dtype=np.int64),
        }
        meta = {
            "format": _FORMAT,
            "format_version": _FORMAT_VERSION,
            "max_cache_size": self.max_cache_size,
            "prompt_ids": list(self._store),
        }
        return tensors, meta

    @classmethod
    def from_state_dict(cls, tensors: dict[str, Any], meta: dict) -> "ReplayBuffer":
        if meta.get("format") != _FORMAT:
            raise ValueError(f"not a replay-buffer state (format={meta.get('format')!r})")
        if meta.get("format_version") != _FORMAT_VERSION:
            raise ValueError(f"unsupported replay-buffer format_version {meta.get('format_version')!r}")
        expected = {
            "tokens": np.int32,
            "logprobs": np.float32,
            "lengths": np.int32,
            "rewards": np.float64,
            "versions": np.int64,
            "entries_per_prompt": np.int64,
        }
        arr: dict[str, np.ndarray] = {}
        for name, dt in expected.items():
            if name not in tensors:
                raise ValueError(f"replay-buffer state is missing tensor {name!r}")
            a = _to_numpy(tensors[name], name)
            if a.dtype != np.dtype(dt):
                raise ValueError(f"tensor {name!r} has dtype {a.dtype}, expected {np.dtype(dt)}")
            arr[name] = a
        buf = cls(meta["max_cache_size"])
        pids = list(meta["prompt_ids"])
        counts = arr["entries_per_prompt"]
        n_ent = arr["lengths"].shape[0]
        if len(pids) != counts.shape[0] or len(set(pids)) != len(pids):
            raise ValueError("prompt_ids do not match entries_per_prompt (or contain duplicates)")
        if int(counts.sum()) != n_ent or arr["rewards"].shape[0] != n_ent or arr["versions"].shape[0] != n_ent:
            raise ValueError("per-entry arrays disagree on the number of entries")
        if (counts < 1).any() or (counts > buf.max_cache_size).any():
            raise ValueError("entries_per_prompt must be in [1, max_cache_size]")
        if (arr["lengths"] < 0).any():
            raise ValueError("negative completion length")
        n_tok = int(arr["lengths"].sum(dtype=np.int64))
        if arr["tokens"].shape[0] != n_tok or arr["logprobs"].shape[0] != n_tok:
            raise ValueError("token arrays disagree with the sum of completion lengths")
        e0 = t0 = 0
        for pid, c in zip(pids, counts.tolist()):
            if not isinstance(pid, str):
                raise ValueError(f"prompt id {pid!r} is not a string")
            lens = arr["lengths"][e0 : e0 + c].copy()
            t = int(lens.sum(dtype=np.int64))
            buf._store[pid] = _PromptStore(
                arr["tokens"][t0 : t0 + t].copy(),
                arr["logprobs"][t0 : t0 + t].copy(),
                lens,
                arr["rewards"][e0 : e0 + c].copy(),
                arr["versions"][e0 : e0 + c].copy(),
            )
            e0 += c
            t0 += t
        return buf

    def save(self, path: "str | Path") -> None:
        """Write one safetensors file (metadata JSON in its header) atomically:
        to a temporary file in the same directory, fsync, then ``os.replace``."""
        from safetensors.numpy import save_file

        tensors, meta = self.state_dict()
        with atomic_write(path) as tmp:
            save_file(tensors, str(tmp), metadata={_META_KEY: json.dumps(meta)})

    @classmethod
    def load(cls, path: "str | Path") -> "ReplayBuffer":
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as f:
            header = f.metadata() or {}
            if _META_KEY not in header:
                raise ValueError(f"{path}: no {_META_KEY!r} in safetensors metadata")
            meta = json.loads(header[_META_KEY])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        return cls.from_state_dict(tensors, meta)
