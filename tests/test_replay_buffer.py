import json
import os
import random

import numpy as np
import pytest

from algorithms.replay_buffer import ReplayBuffer, ReplayEntry
from algorithms.replay_strategies import get_strategy


def _entry(rng: np.random.Generator, length: int):
    ids = rng.integers(0, 150_000, size=length, dtype=np.int64)
    lps = -rng.exponential(1.0, size=length).astype(np.float32)
    return ids, lps


def _fill(buf, n_prompts, n_entries, mean_len, seed=0, jitter=0.5):
    rng = np.random.default_rng(seed)
    for p in range(n_prompts):
        for e in range(n_entries):
            length = max(1, int(rng.integers(int(mean_len * (1 - jitter)), int(mean_len * (1 + jitter)) + 1)))
            ids, lps = _entry(rng, length)
            buf.add(f"prompt-{p}", ids, lps, float(rng.integers(0, 3)) / 2, e)
    return buf


# --------------------------------------------------------------------------- basics


def test_add_get_roundtrip_values():
    buf = ReplayBuffer(4)
    ids = [5, 6, 7]
    lps = np.array([-0.1, -0.2, -0.3], dtype=np.float64)
    buf.add("q1", ids, lps, 1.0, 3)
    assert len(buf) == 1 and buf.size("q1") == 1 and buf.size("other") == 0
    (e,) = buf.get("q1", [0])
    assert isinstance(e, ReplayEntry)
    assert e.completion_ids.dtype == np.int32 and e.completion_ids.tolist() == ids
    assert e.logprobs.dtype == np.float32
    np.testing.assert_array_equal(e.logprobs, lps.astype(np.float32))
    assert e.reward == 1.0 and isinstance(e.reward, float)
    assert e.policy_version == 3 and isinstance(e.policy_version, int)
    assert buf.rewards("q1").dtype == np.float64
    assert buf.versions("q1").dtype == np.int64
    assert buf.rewards("nope").shape == (0,) and buf.versions("nope").shape == (0,)


def test_get_returns_copies_in_requested_order():
    buf = ReplayBuffer(8)
    for i in range(4):
        buf.add("p", [i] * (i + 1), [-float(i)] * (i + 1), i / 10, i)
    got = buf.get("p", [3, 0, 2])
    assert [e.policy_version for e in got] == [3, 0, 2]
    assert [len(e) for e in got] == [4, 1, 3]
    got[0].completion_ids[:] = 99
    assert buf.get("p", [3])[0].completion_ids.tolist() == [3, 3, 3, 3]
    r = buf.rewards("p")
    r[:] = -1
    assert buf.rewards("p").tolist() == [0.0, 0.1, 0.2, 0.3]


def test_get_errors():
    buf = ReplayBuffer(2)
    buf.add("p", [1], [-1.0], 0.0, 0)
    assert buf.get("missing", []) == []
    with pytest.raises(KeyError):
        buf.get("missing", [0])
    with pytest.raises(IndexError):
        buf.get("p", [1])
    with pytest.raises(IndexError):
        buf.get("p", [-1])


def test_fifo_eviction_order():
    buf = ReplayBuffer(3)
    for v in range(7):
        buf.add("p", [v] * (v + 1), [-0.5] * (v + 1), float(v), v)
        assert buf.size("p") == min(v + 1, 3)
    assert buf.versions("p").tolist() == [4, 5, 6]
    assert buf.rewards("p").tolist() == [4.0, 5.0, 6.0]
    assert [e.completion_ids.tolist() for e in buf.get("p", [0, 1, 2])] == [[4] * 5, [5] * 6, [6] * 7]
    # nbytes counts exactly what is kept after eviction
    assert buf.num_tokens() == 5 + 6 + 7
    assert buf.nbytes() == 8 * 18 + 20 * 3


def test_prompts_are_independent():
    buf = ReplayBuffer(2)
    buf.add("a", [1], [-1.0], 0.0, 0)
    for v in range(5):
        buf.add("b", [v], [-1.0], 1.0, v)
    assert buf.size("a") == 1 and buf.size("b") == 2
    assert buf.versions("b").tolist() == [3, 4]
    assert buf.prompt_ids() == ["a", "b"] and "a" in buf and "c" not in buf
    assert buf.num_entries() == 3


def test_add_many_matches_repeated_add_and_evicts():
    rng = np.random.default_rng(1)
    items = [_entry(rng, int(rng.integers(1, 9))) for _ in range(7)]
    rewards = [0.0, 1.0, 0.5, 1.0, 0.0, 0.5, 1.0]
    a, b = ReplayBuffer(5), ReplayBuffer(5)
    for (ids, lps), r in zip(items, rewards):
        a.add("p", ids, lps, r, 2)
    b.add_many("p", [i for i, _ in items[:3]], [l for _, l in items[:3]], rewards[:3], 2)
    b.add_many("p", [i for i, _ in items[3:]], [l for _, l in items[3:]], np.array(rewards[3:]), 2)
    assert a == b
    c = ReplayBuffer(5)
    c.add_many("p", [i for i, _ in items], [l for _, l in items], rewards, 2)
    assert a == c
    d = ReplayBuffer(5)
    d.add_many("p", [i for i, _ in items], [l for _, l in items], rewards, list(range(7)))
    assert d.versions("p").tolist() == [2, 3, 4, 5, 6]
    d.add_many("p", [], [], [], 9)
    assert d.size("p") == 5
    d.add_many("new", [], [], [], 9)
    assert "new" not in d


def test_accepts_torch_tensors():
    torch = pytest.importorskip("torch")
    buf = ReplayBuffer(2)
    ids = torch.tensor([1, 2, 3])
    lps = torch.tensor([-0.1, -0.2, -0.3], requires_grad=True)
    buf.add("p", ids, lps, torch.tensor(1.0), 0)
    (e,) = buf.get("p", [0])
    assert e.completion_ids.tolist() == [1, 2, 3]
    np.testing.assert_array_equal(e.logprobs, lps.detach().numpy())


# --------------------------------------------------------------------------- validation


def test_bad_inputs_give_clear_errors():
    buf = ReplayBuffer(4)
    with pytest.raises(ValueError, match="same length"):
        buf.add("p", [1, 2, 3], [-0.1, -0.2], 1.0, 0)
    with pytest.raises(ValueError, match="1-D"):
        buf.add("p", [[1, 2], [3, 4]], [[-0.1, -0.2], [-0.3, -0.4]], 1.0, 0)
    with pytest.raises(ValueError, match="1-D"):
        buf.add("p", [1, 2], np.zeros((2, 1)), 1.0, 0)
    with pytest.raises(ValueError, match="1-D"):
        buf.add("p", 5, -0.1, 1.0, 0)
    with pytest.raises(ValueError, match="integers"):
        buf.add("p", [1.5, 2.0], [-0.1, -0.2], 1.0, 0)
    with pytest.raises(ValueError, match="int32"):
        buf.add("p", [2**40], [-0.1], 1.0, 0)
    with pytest.raises(ValueError, match="finite"):
        buf.add("p", [1], [-0.1], float("nan"), 0)
    with pytest.raises(ValueError, match="real number"):
        buf.add("p", [1], [-0.1], "good", 0)
    with pytest.raises(TypeError, match="prompt_id"):
        buf.add(3, [1], [-0.1], 1.0, 0)
    with pytest.raises(TypeError, match="policy_version"):
        buf.add("p", [1], [-0.1], 1.0, 1.5)
    with pytest.raises(ValueError, match="as many"):
        buf.add_many("p", [[1], [2]], [[-0.1]], [1.0, 0.0], 0)
    # a bad entry in a batch leaves the buffer unchanged
    with pytest.raises(ValueError, match="completion 1"):
        buf.add_many("p", [[1], [2, 3]], [[-0.1], [-0.2]], [1.0, 0.0], 0)
    assert len(buf) == 0 and buf.num_entries() == 0
    for bad in (0, -1):
        with pytest.raises(ValueError):
            ReplayBuffer(bad)
    with pytest.raises(TypeError):
        ReplayBuffer(2.5)


def test_empty_completion_allowed():
    buf = ReplayBuffer(2)
    buf.add("p", [], [], 0.0, 0)
    buf.add("p", [7], [-1.0], 1.0, 1)
    assert [len(e) for e in buf.get("p", [0, 1])] == [0, 1]


# --------------------------------------------------------------------------- memory


def test_bytes_per_token_realistic_fill():
    buf = _fill(ReplayBuffer(16), n_prompts=32, n_entries=20, mean_len=220)
    assert buf.num_entries() == 32 * 16
    bpt = buf.bytes_per_token()
    assert 8.0 <= bpt <= 10.0, bpt
    # nbytes is exactly the array bytes: 8 B/token + 20 B/entry
    assert buf.nbytes() == 8 * buf.num_tokens() + 20 * buf.num_entries()
    # even counting Python object headers it stays under 10 B/token
    assert buf.bytes_per_token(include_overhead=True) <= 10.0


def test_bytes_per_token_tiny_entries():
    buf = ReplayBuffer(16)
    for e in range(16):
        buf.add("p", np.arange(12), np.zeros(12, np.float32), 1.0, e)
    assert buf.bytes_per_token() == pytest.approx(8 + 20 / 12)
    assert buf.bytes_per_token() <= 10.0


def test_bytes_per_token_empty_is_nan():
    assert np.isnan(ReplayBuffer(4).bytes_per_token())
    assert ReplayBuffer(4).nbytes() == 0


# --------------------------------------------------------------------------- persistence


def test_save_load_equality(tmp_path):
    buf = _fill(ReplayBuffer(6), n_prompts=5, n_entries=9, mean_len=30, seed=3)
    # odd prompt ids and special float values must survive
    buf.add('ünïcode / "quoted" :: id', [1, 2], [np.float32(-0.0), np.float32(-1e-45)], -0.0, 2**40)
    buf.add("p-nan-logprob", [3], [np.nan], 0.1, 0)
    path = tmp_path / "sub" / "buffer.safetensors"
    buf.save(path)
    assert os.listdir(path.parent) == ["buffer.safetensors"]  # no temp file left behind
    loaded = ReplayBuffer.load(path)
    assert loaded == buf
    assert loaded.max_cache_size == 6
    assert loaded.prompt_ids() == buf.prompt_ids()
    for pid in buf.prompt_ids():
        n = buf.size(pid)
        for a, b in zip(buf.get(pid, range(n)), loaded.get(pid, range(n))):
            assert a.completion_ids.tobytes() == b.completion_ids.tobytes()
            assert a.logprobs.tobytes() == b.logprobs.tobytes()  # bit-exact
            assert np.float64(a.reward).tobytes() == np.float64(b.reward).tobytes()
            assert a.policy_version == b.policy_version
    # the loaded buffer keeps working (FIFO continues)
    loaded.add("prompt-0", [1], [-1.0], 1.0, 99)
    assert loaded.versions("prompt-0")[-1] == 99 and loaded.size("prompt-0") == 6


def test_save_overwrites_atomically(tmp_path):
    path = tmp_path / "b.safetensors"
    a = _fill(ReplayBuffer(3), 2, 4, 10, seed=1)
    a.save(path)
    b = _fill(ReplayBuffer(5), 3, 2, 10, seed=2)
    b.save(str(path))
    assert ReplayBuffer.load(path) == b
    assert sorted(os.listdir(tmp_path)) == ["b.safetensors"]


def test_save_load_empty(tmp_path):
    path = tmp_path / "empty.safetensors"
    ReplayBuffer(7).save(path)
    loaded = ReplayBuffer.load(path)
    assert loaded == ReplayBuffer(7) and len(loaded) == 0


def test_file_is_safetensors_without_pickle(tmp_path):
    from safetensors import safe_open

    path = tmp_path / "b.safetensors"
    _fill(ReplayBuffer(3), 2, 3, 5).save(path)
    with safe_open(str(path), framework="numpy") as f:
        meta = json.loads(f.metadata()["replay_buffer_meta"])
        assert meta["max_cache_size"] == 3 and meta["prompt_ids"] == ["prompt-0", "prompt-1"]
        assert set(f.keys()) == {"tokens", "logprobs", "lengths", "rewards", "versions", "entries_per_prompt"}


def test_state_dict_roundtrip_and_validation():
    buf = _fill(ReplayBuffer(4), 3, 5, 8)
    tensors, meta = buf.state_dict()
    json.dumps(meta)
    assert ReplayBuffer.from_state_dict(tensors, meta) == buf
    bad = dict(tensors, tokens=tensors["tokens"][:-1])
    with pytest.raises(ValueError, match="token arrays"):
        ReplayBuffer.from_state_dict(bad, meta)
    with pytest.raises(ValueError, match="dtype"):
        ReplayBuffer.from_state_dict(dict(tensors, logprobs=tensors["logprobs"].astype(np.float64)), meta)
    with pytest.raises(ValueError, match="format"):
        ReplayBuffer.from_state_dict(tensors, dict(meta, format="other"))
    with pytest.raises(ValueError, match="max_cache_size"):
        ReplayBuffer.from_state_dict(tensors, dict(meta, max_cache_size=2))


def test_equality_is_sensitive():
    a = ReplayBuffer(3)
    a.add("p", [1, 2], [-0.5, -0.25], 1.0, 0)
    b = ReplayBuffer(3)
    b.add("p", [1, 2], [-0.5, -0.25], 1.0, 0)
    assert a == b
    c = ReplayBuffer(4)
    c.add("p", [1, 2], [-0.5, -0.25], 1.0, 0)
    assert a != c
    d = ReplayBuffer(3)
    d.add("p", [1, 2], [-0.5, np.nextafter(np.float32(-0.25), np.float32(0))], 1.0, 0)
    assert a != d
    e = ReplayBuffer(3)
    e.add("p", [1, 2], [-0.5, -0.25], 1.0, 1)
    assert a != e


# --------------------------------------------------------------------------- integration with strategies


def test_strategies_on_buffer_rewards():
    buf = ReplayBuffer(8)
    for v, r in enumerate([0.0, 1.0, 1.0, 0.0, 0.5, 1.0]):
        buf.add("p", [v], [-1.0], r, v)
    idx = get_strategy("max_variance_k")(buf.rewards("p"), 2, random.Random(0))
    assert idx == [0, 1]
    entries = buf.get("p", idx)
    assert [e.reward for e in entries] == [0.0, 1.0]
    assert get_strategy("recent_k")(buf.rewards("p"), 2, random.Random(0)) == [4, 5]
