"""The per-process memory estimate under DDP and FSDP (harness/memory.py) and how `harness run --dry-run` shows it:
hand-checked numbers for a small architecture, the member's process count, and the fits / does NOT fit line."""

from __future__ import annotations

import re
import sys

import pytest

from harness.cli import main
from harness.launchers import LocalLauncher, SlurmConfig
from harness.launchers.slurm import job_processes
from harness.memory import (
    BASE_BYTES,
    Arch,
    Sharding,
    alternatives,
    estimate_peak_memory,
    model_arch,
)

#: 2 layers, hidden 4, intermediate 8, vocabulary 10, tied: root = 10 x 4 = 40 parameters, each layer (1000 - 40) / 2.
SMALL = Arch(layers=2, hidden=4, intermediate=8, vocab=10, params=1000.0)
#: 10 padded tokens, 5 completion tokens, the full-logits path: logits = 5 x 10 x 4 bytes x 2.5 = 500 bytes.
STEP = dict(tokens=10, completion_tokens=5, chunk_size=0)
#: activations per token and layer: (16 x 4 + 4 x 8) values = 96 -> x 10 tokens x 2 layers = 1,920 values.
ACT_VALUES = 1920


def est(sharding: Sharding, arch: Arch = SMALL, **kw) -> dict[str, float]:
    return estimate_peak_memory(arch, **{**STEP, **kw}, sharding=sharding)


def test_arch_splits_root_and_layers():
    assert (SMALL.root_params, SMALL.layer_params) == (40, 480)
    untied = Arch(2, 4, 8, 10, 1000.0, tied=False)
    assert (untied.root_params, untied.layer_params) == (80, 460)
    q7 = model_arch("qwen2.5-math-7b")  # untied: embeddings and LM head are two 152,064 x 3,584 matrices
    assert not q7.tied and q7.root_params == 2 * 152064 * 3584
    assert q7.layer_params == pytest.approx(233.2e6, rel=1e-3)


def test_one_process_is_unchanged_and_fsdp_with_one_process_trains_unsharded():
    one = est(Sharding())
    assert one["weights"] == 4000 and one["optimizer"] == 8000 and one["ddp_buckets"] == 0 and one["gathered"] == 0
    assert one["total"] == one["training"] == 4 * 4000 + ACT_VALUES * 4 + 500 + BASE_BYTES
    assert est(Sharding(1, "fsdp", "bf16")) == one  # the trainer ignores fsdp (and its options) with one process


def test_ddp_counts_the_whole_model_and_its_gradient_buckets_on_every_process():
    ddp = est(Sharding(processes=4))
    assert (ddp["weights"], ddp["gradients"], ddp["optimizer"], ddp["ddp_buckets"]) == (4000, 4000, 8000, 4000)
    assert ddp["training"] == 20000 + ACT_VALUES * 4 + 500 + BASE_BYTES
    assert ddp["sampling"] == 4000 + 8000 + 4000 + BASE_BYTES  # weights, AdamW, buckets: gradients are freed
    assert ddp["total"] == ddp["training"]


def test_fsdp_shards_the_model_states_and_adds_the_gathered_units():
    fsdp = est(Sharding(4, "fsdp"))
    assert (fsdp["weights"], fsdp["gradients"], fsdp["optimizer"], fsdp["ddp_buckets"]) == (1000, 1000, 2000, 0)
    # 2 layers + the root's matrix gathered in float32, and one layer's + the root's unsharded gradients
    assert fsdp["gathered"] == (2 * 480 + 40) * 4 + (480 + 40) * 4 == 6080
    # untied: the head alone is gathered through the backward (the embedding is not gathered for its backward), but
    # both matrices' gradients exist at its end
    untied = Arch(layers=2, hidden=4, intermediate=8, vocab=10, params=1000.0, tied=False)
    assert est(Sharding(4, "fsdp"), arch=untied)["gathered"] == (2 * 460 + 40) * 4 + (460 + 80) * 4
    assert fsdp["training"] == 4000 + 6080 + ACT_VALUES * 4 + 500 + BASE_BYTES
    # rollout with the hf engine: the whole model gathered (float32) + the weight and AdamW shards
    assert fsdp["sampling_gathered"] == 4000
    assert fsdp["sampling"] == 1000 + 2000 + 4000 + BASE_BYTES
    # a vLLM engine gets the weights one parameter at a time (the largest: the embedding, 10 x 4 x 4 bytes)
    assert est(Sharding(4, "fsdp"), engine="vllm")["sampling_gathered"] == 160


def test_the_rollout_phase_is_the_peak_when_the_gathered_model_outweighs_the_training_step():
    deep = Arch(layers=100, hidden=4, intermediate=8, vocab=10, params=1_000_040.0)  # layer: 10,000, root: 40
    e = est(Sharding(8, "fsdp"), arch=deep, tokens=1, completion_tokens=1)
    shard = 1_000_040 * 4 / 8
    assert e["sampling"] == shard + 2 * shard + 1_000_040 * 4 + BASE_BYTES
    assert e["training"] == 4 * shard + (2 * 10000 + 40) * 4 + (10000 + 40) * 4 + 100 * 96 * 4 + 100 + BASE_BYTES
    assert e["sampling"] > e["training"] and e["total"] == e["sampling"]
    vllm = est(Sharding(8, "fsdp"), arch=deep, tokens=1, completion_tokens=1, engine="vllm")
    assert vllm["total"] == vllm["training"]  # nothing gathered whole for an engine with its own weights


def test_bf16_mixed_precision_keeps_fp32_shards_and_halves_gathered_params_and_activations():
    mp = est(Sharding(4, "fsdp", "bf16"))
    assert (mp["weights"], mp["gradients"], mp["optimizer"]) == (1000, 1000, 2000)  # float32 master shards
    # bf16 layers + root; their gradients in bf16 and the float32 copy for the reduce-scatter (2 + 4 bytes)
    assert mp["gathered"] == 1000 * 2 + 520 * 6 == 5120
    assert mp["activations"] == ACT_VALUES * 2
    assert mp["sampling_gathered"] == 1000 * 2
    assert mp["logits"] == 500  # the log-prob chunks stay float32


def test_cpu_offload_moves_the_model_states_to_host_memory():
    on, off = est(Sharding(4, "fsdp", "bf16", True)), est(Sharding(4, "fsdp", "bf16"))
    assert on["host"] == 1000 + 1000 + 2000 and off["host"] == 0
    assert on["weights"] == on["gradients"] == on["optimizer"] == 0
    assert on["training"] == off["training"] - 4000
    assert on["sampling"] == 2000 + BASE_BYTES  # only the gathered bf16 model is on the GPU during the rollout
    assert est(Sharding(4, "none", cpu_offload=True))["host"] == 0  # offload is an FSDP option


def test_reference_model_and_a_colocated_engine():
    ref = est(Sharding(4, "fsdp"), reference_model=True)
    assert ref["reference"] == 1000 and ref["training"] == est(Sharding(4, "fsdp"))["training"] + 1000
    awake = est(Sharding(4, "fsdp"), engine="vllm", engine_bytes=1e9)
    asleep = est(Sharding(4, "fsdp"), engine="vllm", engine_bytes=1e9, engine_sleeps=True)
    assert awake["training"] == asleep["training"] + 1e9 and awake["sampling"] == asleep["sampling"]


def test_alternatives_compare_ddp_and_fsdp_at_the_members_count():
    assert [s.label for s in alternatives(Sharding(4))] == ["DDP", "FSDP"]
    assert [s.label for s in alternatives(Sharding(8, "fsdp", "bf16"))] == [
        "DDP",
        "FSDP (bf16)",
        "FSDP (bf16, offload)",
    ]
    assert [s.label for s in alternatives(Sharding(1, "fsdp"))] == ["1 process"]


def test_process_count_comes_from_the_launcher(monkeypatch):
    assert job_processes(SlurmConfig(gpus=8)) == 8
    assert job_processes(SlurmConfig(gpus=8, nodes=2)) == 8  # 4 tasks on each of 2 nodes
    assert job_processes(SlurmConfig(gpus=0, nodes=2)) == 2  # CPU jobs: one task per node
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert LocalLauncher().processes() == 1
    monkeypatch.setenv("WORLD_SIZE", "4")  # under torchrun / accelerate launch
    assert LocalLauncher().processes() == 4


def _dry_run(capsys, *argv) -> tuple[int, str, str]:
    rc = main(["run", "--algos", "grpo", "--dry-run", *argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_dry_run_shows_ddp_vs_fsdp_per_process_and_whether_it_fits(capsys, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    rc, out, _ = _dry_run(capsys, "--models", "tiny", "--set", "train.sharding=fsdp", "--processes", "4")
    assert rc == 0 and "4 processes (--processes)" in out and "FSDP*" in out and "DDP" in out
    assert "give --gpu-memory-gb" in out and "fits (" not in out and "does NOT fit" not in out
    rc, out, _ = _dry_run(capsys, "--models", "tiny", "--processes", "4", "--gpu-memory-gb", "80")
    assert rc == 0 and "DDP*" in out and out.count("fits (") == 2 and "vs a 80 GB GPU" in out
    rc, out, _ = _dry_run(capsys, "--models", "tiny", "--gpu-memory-gb", "0.1")
    assert rc == 0 and "1 process;" in out and "does NOT fit" in out


def test_dry_run_takes_the_count_from_slurm_gpus(capsys):
    rc, out, _ = _dry_run(capsys, "--models", "tiny", "--launcher", "slurm", "--slurm-gpus", "8")
    assert rc == 0 and "8 processes (--launcher slurm: 8 GPU(s) over 1 node(s), one process per GPU)" in out
    rc, out, err = _dry_run(capsys, "--models", "tiny", "--launcher", "slurm", "--slurm-gpus", "8", "--processes", "2")
    assert rc == 0 and "2 processes (--processes)" in out and "differs from the 8 process(es)" in err


@pytest.mark.parametrize("flag", [["--processes", "4"], ["--gpu-memory-gb", "80"]])
def test_dry_run_flags_need_dry_run(flag, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--models", "tiny", *flag]) == 2
    assert f"{flag[0]}: only with --dry-run" in capsys.readouterr().err


def test_7b_fsdp_preset_fits_80gb_gpus_where_ddp_does_not(capsys):
    for n in (4, 8):
        rc, out, _ = _dry_run(
            capsys,
            "--config",
            "paper-qwen2.5-math-7b-fsdp",
            "--models",
            "qwen2.5-math-7b",
            "--processes",
            str(n),
            "--gpu-memory-gb",
            "80",
        )
        assert rc == 0 and f"{n} processes" in out
        line = next(x for x in out.splitlines() if "vs a 80 GB GPU" in x)
        verdicts = [v.split(" (")[0] for v in re.findall(r"does NOT fit|fits \(\d+%\)", line)]
        assert verdicts == ["does NOT fit", "fits", "fits"], line  # DDP, FSDP (bf16), FSDP (bf16, offload)
        assert f"steps:{3 * 1024 // n}" in out  # 1,024 prompts split over n processes, 1 per step, 3 epochs


FREES = """
import torch
from harness.memory import return_large_frees_to_os, rss_bytes, trim_freed_memory
if {set_threshold}:
    assert return_large_frees_to_os()
torch.ones(16 << 20, dtype=torch.uint8)  # by default, freeing this mapped 16 MiB block raises glibc's threshold past it
blocks = [torch.ones(2 << 20, dtype=torch.uint8) for _ in range(100)]  # 100 x 2 MiB
small = [torch.ones(64 << 10, dtype=torch.uint8) for _ in range(800)]  # 800 x 64 KiB, from the heap (above the blocks)
held = rss_bytes()
del blocks
after_large = rss_bytes()
del small[::2]  # holes: freed in the middle of the heap, which only a trim returns
before_trim = rss_bytes()
trim_freed_memory()
print((held - after_large) / 2**20, (before_trim - rss_bytes()) / 2**20)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc and /proc are Linux-only")
@pytest.mark.slow  # seconds of waiting or subprocesses: out of the fast subset
def test_cpu_fsdp_memory_is_returned_to_the_os():
    """What CPU FSDP runs set (harness.memory, from harness/sharding.py): with a 1 MiB mmap threshold, freed 2 MiB
    tensors leave the resident set at once (glibc's default, once its threshold has risen, keeps them in the heap),
    and malloc_trim returns free pages in the middle of the heap. In fresh processes: the setting is process-wide."""
    import subprocess

    def run(set_threshold: bool) -> tuple[float, float]:
        out = subprocess.run(
            [sys.executable, "-c", FREES.format(set_threshold=set_threshold)],
            capture_output=True,
            text=True,
            check=True,
        )
        return tuple(float(x) for x in out.stdout.split())

    kept, trimmed_default = run(False)
    released, trimmed = run(True)
    assert released >= 190  # the 200 MiB of 2 MiB blocks, unmapped on free
    assert kept <= 50 and trimmed_default >= 190  # glibc's default kept them in the heap, until malloc_trim
    assert trimmed >= 15  # half of 50 MiB of 64 KiB blocks, as whole free pages
