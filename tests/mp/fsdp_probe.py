"""Standalone FSDP2 check over gloo (issue 15): run with
`python -m torch.distributed.run --nproc_per_node 2 tests/mp/fsdp_probe.py MODEL_DIR OUT_DIR`.

Shards a causal LM with ``fully_shard`` per decoder layer plus the root, trains a few AdamW steps on fixed token
batches (each rank its own half), and writes per rank: the losses, and a digest and max-abs of the gathered full
state dict. ``--ddp`` runs the same steps under DDP instead, so the two can be compared.
"""

import hashlib
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist


def main() -> None:
    model_dir, out_dir = sys.argv[1], Path(sys.argv[2])
    mode = "ddp" if "--ddp" in sys.argv else "fsdp"
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    vocab = model.config.vocab_size
    if mode == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for layer in model.model.layers:
            fully_shard(layer)
        fully_shard(model)
        wrapped = model
    else:
        from torch.nn.parallel import DistributedDataParallel

        wrapped = DistributedDataParallel(model)
    opt = torch.optim.AdamW(wrapped.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1234)
    data = torch.randint(0, vocab, (3, world * 2, 12), generator=g)  # steps x global batch x tokens
    losses = []
    for step in range(3):
        ids = data[step, rank * 2 : (rank + 1) * 2]
        loss = wrapped(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss.detach()))
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    if mode == "fsdp":
        sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        everywhere = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    else:
        sd = everywhere = model.state_dict()
    every_digest = hashlib.sha256(
        b"".join(everywhere[k].detach().float().numpy().tobytes() for k in sorted(everywhere))
    ).hexdigest()
    # cpu_offload=True: only rank 0 receives the full tensors (others get an empty dict) unless broadcast_from_rank0;
    # record what each rank got.
    keys = sorted(sd)
    digest = hashlib.sha256(b"".join(sd[k].detach().float().numpy().tobytes() for k in keys)).hexdigest() if sd else ""
    if sd:
        torch.save({k: sd[k].detach().clone() for k in keys}, out_dir / f"{mode}_rank{rank}.pt")
    (out_dir / f"{mode}_rank{rank}.json").write_text(
        json.dumps(
            {
                "rank": rank,
                "world": world,
                "losses": losses,
                "n_keys": len(keys),
                "digest": digest,
                "digest_no_offload": every_digest,
            }
        )
    )
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
