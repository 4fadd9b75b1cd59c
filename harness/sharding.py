"""FSDP2 sharding of the policy: ``train.sharding: fsdp`` (README "Several processes").

The policy is split with ``torch.distributed.fsdp.fully_shard`` per decoder layer plus the root (embeddings, final
norm, LM head; an untied input embedding is a unit of its own, gathered only for its lookup), so parameters,
gradients and AdamW state are held 1/N per process; a forward gathers one layer at a time and frees it after use.
With tied embeddings the embedding's backward is sparse, so the root's peak carries no extra vocabulary-sized block
(:func:`sparse_tied_embedding_grad`). What needs the whole model gets it in one of three ways, never as a persistent
copy:

* **Sampling and evaluation with the in-process engines** (``hf``, ``hf-generate``): :func:`full_weights` gathers
  every layer on every process for the rollout phase and frees them when it ends (as TRL does for ZeRO-3 by
  default). Inside it a forward needs no collective, so the processes may run different numbers of forwards
  (different completion lengths, DAPO's extra rounds, evaluation on the main process only). Cost: the full
  weights (in the compute dtype) on every process during the phase, on top of the 1/N shards.
* **Engines that hold their own weights** (``vllm``, ``vllm-server``): :func:`named_full_tensors` gathers one
  parameter at a time for the engine to load (every process, same order), so besides the engine's own copy
  only one gathered parameter exists at once.
* **Checkpoints**: :func:`full_model_state` and :func:`gathered_optimizer_state` gather the weights and the AdamW
  state to the main process's CPU memory, in the layout of a DDP run's checkpoint (one Hugging Face folder, the
  optimizer in safetensors), so a checkpoint does not depend on the process count it was written with.

Everything here is a collective: every process calls it, in the same order.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


def check_launch(distributed_type: str) -> None:
    """Refuse accelerate's own FSDP / DeepSpeed plugins: the trainer shards the policy itself (``train.sharding``),
    and a model that accelerate wraps that way would hand the rollout engines shards (``accelerate launch`` with a
    plain multi-GPU config, ``examples/accelerate/fsdp_gpu.yaml``, or torchrun)."""
    kind = str(distributed_type).rsplit(".", 1)[-1].upper()
    if kind in ("FSDP", "DEEPSPEED"):
        from harness.schema import ConfigError

        raise ConfigError(
            f"accelerate is configured for {kind} (distributed_type: {kind}): the harness shards the policy itself. "
            "Launch with a multi-GPU config (distributed_type: MULTI_GPU, e.g. examples/accelerate/fsdp_gpu.yaml) or "
            "torchrun, and set train.sharding=fsdp (README 'Several processes')"
        )


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks of a Hugging Face causal LM (``model.model.layers`` for Llama/Qwen-style models)."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise ValueError(
            f"train.sharding=fsdp: cannot find the decoder layers of {type(model).__name__} (expected model.model.layers)"
        )
    return list(layers)


def shard_model(
    model: torch.nn.Module, device: torch.device, *, mixed_precision: str = "none", cpu_offload: bool = False
) -> torch.nn.Module:
    """Apply FSDP2 in place: each decoder layer, an untied input embedding, then the root. ``mixed_precision="bf16"``:
    gather and compute in bfloat16, reduce gradients in float32 (the shards keep their dtype); ``cpu_offload``: shards,
    gradients and optimizer state live in CPU memory (GPU runs)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    kw: dict = {"mesh": mesh}
    if mixed_precision == "bf16":
        kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    if cpu_offload:
        kw["offload_policy"] = CPUOffloadPolicy()
    else:
        model.to(device)
    if device.type == "cpu":  # FSDP's per-layer buffers would otherwise stay resident once freed (measured)
        from harness.memory import return_large_frees_to_os

        return_large_frees_to_os()
    tied = sparse_tied_embedding_grad(model)
    for layer in decoder_layers(model):
        fully_shard(layer, reshard_after_forward=True, **kw)
    emb = model.get_input_embeddings()
    if not tied and isinstance(emb, torch.nn.Embedding):
        # an untied input embedding is a unit of its own, gathered for the lookup only: its backward needs the token
        # ids, not the matrix, so it is not gathered again there (the root then holds the head alone)
        fully_shard(emb, reshard_after_forward=True, **kw)
        emb.set_unshard_in_backward(False)
    # the root's parameters (embeddings, head) are needed again right after the forward (the chunked log-probs use
    # the head outside it) and in backward: kept gathered between the two, as FSDP2 does by default for the root
    fully_shard(model, reshard_after_forward=False, **kw)
    return model


def sparse_tied_embedding_grad(model: torch.nn.Module) -> bool:
    """With tied input embeddings and LM head, make the embedding's backward sparse; returns whether it did.

    The root unit's peak is the embedding's backward, at the very end of the backward pass: the gathered matrix and
    the head's dense gradient (held by autograd until the embedding's part of the same gradient arrives) are alive,
    and a dense embedding backward adds a third vocab x hidden block (``embedding_dense_backward`` writes the
    micro-batch's few rows into a zeroed matrix) before the two are summed. With ``nn.Embedding.sparse`` the
    embedding's part is only those rows (``[tokens, hidden]``), and autograd adds it in place into the head's dense
    gradient, so the parameter still receives one dense gradient, as FSDP's reduce-scatter needs (SmolLM2-135M, 2
    processes: the training peak falls 0.12 GB, README "Several processes"). Only for a tied matrix: there the head's
    dense gradient is always part of the same sum (every gradient pass computes log-probs through the head). An untied
    embedding's gradient would be sparse on its own, which FSDP cannot reduce, so it stays dense."""
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    if not isinstance(emb, torch.nn.Embedding) or getattr(head, "weight", None) is not emb.weight:
        return False
    emb.sparse = True
    return True


def fsdp_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def is_sharded(model: torch.nn.Module) -> bool:
    return bool(fsdp_modules(model))


@contextmanager
def full_weights(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Every layer of a sharded ``model`` gathered on this process until the block ends; forwards inside need no
    collective. Entering is a collective (every process, same point); leaving frees the gathered weights."""
    mods = fsdp_modules(model)
    for m in mods:
        m.unshard()
        m.set_reshard_after_forward(False, recurse=False)
    try:
        yield model
    finally:
        for m in mods:
            m.reshard()
            m.set_reshard_after_forward(m is not model, recurse=False)  # as shard_model set them
        if next(model.parameters()).device.type == "cpu":  # the rollout's freed memory back to the OS before training
            from harness.memory import trim_freed_memory

            trim_freed_memory()


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a (possibly sharded DTensor) parameter, gradient norm or state; a collective when sharded."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def named_full_tensors(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """``model.state_dict()`` items with sharded tensors gathered one at a time (a collective per tensor)."""
    for name, t in model.state_dict().items():
        yield name, full_tensor(t.detach())


def full_model_state(model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """The gathered state dict in CPU memory on the main process (None on the others); gathered tensor by tensor."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not sd:
        return None
    seen: set[int] = set()
    for name, p in model.named_parameters(remove_duplicate=False):  # a tied head is saved once, as by a DDP run
        if id(p) in seen:
            sd.pop(name, None)
        seen.add(id(p))
    return sd


def gathered_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict | None:
    """The AdamW state of a sharded model gathered in the plain optimizer's layout (integer parameter ids in
    ``model.parameters()`` order), so a checkpoint looks like a DDP run's; on the main process only (None elsewhere)."""
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
