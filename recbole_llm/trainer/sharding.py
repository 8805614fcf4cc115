"""FSDP (``fsdp: True``): the LLM's weights, gradients and optimizer states sharded over the processes.

torch's FSDP2 (``fully_shard``) makes every transformer block one unit and the rest of LLMGenRec (embeddings,
final norm, LM head, temporal module) the root unit; each unit's full weights exist only while it runs
(one all-gather before its forward, a reduce-scatter of its gradients after its backward). The trainer
applies it itself rather than through accelerate's FSDP plugin: the same code then runs with gloo on CPUs
(accelerate enables FSDP on GPUs only) and with NCCL on GPUs, and the CPU test checks what the GPUs run.

Generation needs one exception: ranks decode different users and their beam searches end at different
steps, so per-unit all-gathers would wait for each other forever. :func:`full_weights` gathers every unit
once and keeps them until the block ends; decoding, validation and checkpoint writing run inside it. That
holds a full copy of the weights (not of the gradients or optimizer states) per device while it lasts.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from recbole_llm.utils.errors import UserError


def _block_names(llm: torch.nn.Module) -> set[str]:
    """Class names of the transformer blocks (Hugging Face's ``_no_split_modules``: LlamaDecoderLayer, ...)."""
    for module in llm.modules():
        names = getattr(module, "_no_split_modules", None)
        if names:
            return set(names)
    raise UserError(
        f"fsdp=True: {type(llm).__name__} names no transformer block class (_no_split_modules), so it cannot "
        "be sharded block by block. Run without fsdp."
    )


def shard_model(model: torch.nn.Module, device: torch.device) -> int:
    """Shard ``model`` (an LLMGenRec) in place over every process; returns the number of FSDP units."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    names = _block_names(model.llm)
    blocks = [m for m in model.llm.modules() if type(m).__name__ in names]
    for block in blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return len(blocks) + 1


def is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


@contextlib.contextmanager
def full_weights(model: torch.nn.Module) -> Iterator[None]:
    """Every rank holds the whole model inside the block, and no forward pass communicates.

    Every rank must enter it (the gathers are collective); with an unsharded model it does nothing.
    """
    if not is_sharded(model):
        yield
        return
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for unit in units:
        unit.unshard()
        unit.set_reshard_after_forward(False)
    try:
        yield
    finally:
        for unit in units:
            unit.set_reshard_after_forward(True)
            unit.reshard()


def optimizer_state(model: torch.nn.Module, optimizer) -> dict:
    """The whole optimizer state keyed by parameter name (collective: every rank calls it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_optimizer_state_dict(model, optimizer, options=options)


def load_optimizer_state(model: torch.nn.Module, optimizer, state: dict) -> None:
    """Inverse of :func:`optimizer_state`, for a sharded or an unsharded model (any number of processes)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))
