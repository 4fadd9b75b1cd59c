"""Two real processes (torchrun + accelerate) over gloo: data sharding, replay ownership and parameter agreement."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).parent / "mp" / "ddp_worker.py"


def launch(model_dir, algo, out: Path) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # torchrun starts the processes; accelerate's Accelerator picks up the env and uses gloo on CPU.
    # (`accelerate launch` on multi-CPU shells out to mpirun, which this machine does not have.)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29533",
        str(WORKER),
        str(model_dir),
        algo,
        str(out),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.parametrize("algo", ["grpo", "repo:recent_k", "grpo+share_prompts", "exgrpo"])
def test_two_processes_agree(quick_model_dir, tmp_path, algo):
    r0, r1 = launch(quick_model_dir, algo, tmp_path / "out")
    assert r0["world"] == r1["world"] == 2
    # Same parameters on both processes after 4 DDP steps.
    assert r0["param_digest"] == r1["param_digest"]
    # Data: each process only ever sees prompts it owns; together they cover disjoint halves.
    assert not set(r0["owned"]) & set(r1["owned"])
    for r in (r0, r1):
        seen = {p for s in r["steps"] for p in s["prompt_ids"]}
        assert seen <= set(r["owned"]) and len(r["steps"]) == 4
    if algo == "exgrpo":  # revisited prompts are owned ones (checked above with every generated prompt)
        assert sum(s["experience_groups"] for s in r0["steps"]) > 0
    if algo.startswith("repo"):
        # Every prompt's buffer lives on its owner only, so no process ever needs another's completions.
        for r in (r0, r1):
            assert r["buffer_prompts"] and set(r["buffer_prompts"]) <= set(r["owned"])
        # 8 prompts, 2 per step per process: revisits from step 3 on replay 2 rows per prompt on both processes.
        assert r0["local_replay_rows"] == r1["local_replay_rows"] == [0, 0, 4, 4]
        # The logged (reduced) replay row count is the sum over processes.
        assert [s["replay_rows"] for s in r0["steps"]] == [0, 0, 8, 8]
