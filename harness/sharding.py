"""FSDP2 sharding of the policy (issue 15, work in progress): ``train.sharding: fsdp``.

The policy is split with ``torch.distributed.fsdp.fully_shard`` per decoder layer plus the root, so parameters,
gradients and AdamW state are held 1/N per process. Rollout engines need full weights: the trainer keeps an unsharded
copy of the policy (:class:`SamplingCopy`), refreshed parameter by parameter from the shards after every optimizer
step (each parameter is all-gathered in turn, so besides the copy only one gathered parameter exists at a time). The
copy costs the full weights (not gradients or optimizer state) on every process; a full-parameter context on the
sharded model itself would avoid it but needs every process to run the same number of forwards while sampling.
"""

from __future__ import annotations

import copy

import torch


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks of a Hugging Face causal LM (``model.model.layers`` for Llama/Qwen-style models)."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise ValueError(
            f"train.sharding=fsdp: cannot find the decoder layers of {type(model).__name__} (expected model.model.layers)"
        )
    return list(layers)


def shard_model(model: torch.nn.Module) -> torch.nn.Module:
    """Apply FSDP2 in place: each decoder layer, then the root (embeddings, final norm, a tied or untied LM head)."""
    from torch.distributed.fsdp import fully_shard

    for layer in decoder_layers(model):
        fully_shard(layer)
    fully_shard(model)
    return model


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a (possibly DTensor) parameter or gradient norm; a collective when sharded."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


class SamplingCopy:
    """An unsharded copy of the policy for the rollout engine, evaluation and no-grad log-probs."""

    def __init__(self, model: torch.nn.Module):
        # Taken before sharding: same weights, same buffers, plain tensors.
        self.model = copy.deepcopy(model)
        self.model.requires_grad_(False)

    @torch.no_grad()
    def refresh(self, sharded: torch.nn.Module) -> torch.nn.Module:
        """Copy the sharded model's current parameters in, one all-gather per parameter (every process calls this)."""
        mine = dict(self.model.named_parameters())
        for name, p in sharded.named_parameters():
            mine[name].copy_(full_tensor(p.detach()))
        return self.model


def gathered_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict | None:
    """The AdamW state of a sharded model gathered in the plain optimizer's layout (integer parameter ids in
    ``model.parameters()`` order), so a checkpoint looks like a DDP run's; on the main process only (None elsewhere).
    A collective: every process calls it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    sd = get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not sd:
        return None
    ids = {name: i for i, (name, _) in enumerate(model.named_parameters())}
    groups = [{**g, "params": [ids[n] for n in g["params"]]} for g in sd["param_groups"]]
    return {"state": {ids[n]: st for n, st in sd["state"].items()}, "param_groups": groups}


def load_gathered_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, sd: dict) -> None:
    """Load a plain-layout optimizer state (a checkpoint's, read by every process) into the sharded optimizer."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    names = [name for name, _ in model.named_parameters()]
    groups = [{**g, "params": [names[i] for i in g["params"]]} for g in sd["param_groups"]]
    fqn_sd = {"state": {names[int(i)]: st for i, st in sd["state"].items()}, "param_groups": groups}
    set_optimizer_state_dict(model, optimizer, optim_state_dict=fqn_sd, options=StateDictOptions(full_state_dict=True))
