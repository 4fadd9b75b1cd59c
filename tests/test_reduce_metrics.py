"""Metric reduction across processes when they log different metric names in a step (real gloo group, 2 processes)."""

from __future__ import annotations

import os
import socket

import pytest
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, out) -> None:
    import torch.distributed as dist

    from harness.trainer import reduce_metrics

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        if rank == 0:  # replayed rows carried gradient here only, so only this process has the off-policy ratio metrics
            m = {"reward/mean": 0.2, "tokens/trained": 100.0, "ratio/off_mean": 1.5, "ratio/max": 1.9, "ratio/min": 0.7}
        else:
            m = {
                "reward/mean": 0.4,
                "tokens/trained": 50.0,
                "ratio/max": 1.2,
                "ratio/min": 0.5,
                "engine/logprob_gap_mean_abs": 0.01,
            }
        out.put((rank, reduce_metrics(m)))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # seconds of waiting or subprocesses: out of the fast subset
def test_processes_with_different_metric_names_agree():
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, port, q)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict(q.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert results[0] == results[1]  # every process logs the same numbers
    r = results[0]
    assert r["reward/mean"] == pytest.approx(0.3)  # mean
    assert r["tokens/trained"] == 150.0  # counts are summed
    assert (
        r["ratio/off_mean"] == 1.5 and r["engine/logprob_gap_mean_abs"] == 0.01
    )  # mean over the processes that logged it
    assert r["ratio/max"] == 1.9 and r["ratio/min"] == 0.5
