"""Several processes, one run: rank 0 decides names and writes shared files, the other ranks receive them.

``torchrun`` / ``accelerate launch`` start one copy of the command per process; without care each copy
names its own run folder, writes its own results JSON and prints every log line. The helpers here read
the launcher's environment (valid before any process group exists), start the process group early
(gloo on CPU, NCCL on GPUs, through ``accelerate``'s ``PartialState``) and pass rank 0's choices on.
With one process every helper is a no-op.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TypeVar

import torch

T = TypeVar("T")


def world_size() -> int:
    """Processes of this launch (``WORLD_SIZE`` set by torchrun / accelerate launch; 1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def process_rank() -> int:
    """This process's global rank (``RANK``; 0 without a launcher)."""
    return int(os.environ.get("RANK", "0") or 0)


def is_main_process() -> bool:
    """Rank 0: the one process that logs, names the run and writes checkpoints and results."""
    return process_rank() == 0


def _group_ready() -> bool:
    return world_size() > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()


def start_processes(cpu: bool) -> None:
    """Join the launch's process group now (gloo for ``cpu``, NCCL on GPUs), before data or folders are made.

    ``accelerate``'s ``PartialState`` is what the trainer's ``Accelerator`` joins later, so both agree.
    """
    if world_size() > 1 and not _group_ready():
        from accelerate import PartialState

        PartialState(cpu=cpu)


def broadcast_from_main(value: T) -> T:
    """Rank 0's ``value`` on every rank (a pickled object: a run folder name, a results path)."""
    if not _group_ready():
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    """Wait until every process gets here (no-op with one process)."""
    if _group_ready():
        torch.distributed.barrier()


@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. preparing a dataset), the others after it, finding its files."""
    if not is_main_process():
        barrier()
    try:
        yield
    finally:
        if is_main_process():
            barrier()


def reduce_sum(values: dict[str, float]) -> dict[str, float]:
    """Each key's sum over all processes (float64; the same key set on every rank)."""
    if not _group_ready() or not values:
        return dict(values)
    keys = sorted(values)
    tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    backend = torch.distributed.get_backend()
    if backend == "nccl":
        tensor = tensor.cuda()
    torch.distributed.all_reduce(tensor)
    return dict(zip(keys, tensor.cpu().tolist(), strict=True))


def single_process_only(model: str) -> None:
    """RecBole's own trainer would train one full copy per process here: refuse, naming the fix."""
    if world_size() > 1:
        raise RuntimeError(
            f"{model} runs in one process only ({world_size()} were launched): run it with one process, "
            f"`python run_recbole_llm.py --model={model} ...` (no torchrun / accelerate launch)."
        )


def copy_into(target: torch.Tensor, source: torch.Tensor) -> None:
    """``target.copy_(source)`` for a plain or a sharded (DTensor) parameter: a rank keeps its own shard of
    ``source``, which every rank has read in full (no communication)."""
    if torch.distributed.is_available() and type(target).__name__ == "DTensor":
        from torch.distributed.tensor import distribute_tensor

        source = distribute_tensor(
            source.to(target.device), target.device_mesh, target.placements, src_data_rank=None
        )
    target.copy_(source)


__all__ = [
    "barrier",
    "broadcast_from_main",
    "copy_into",
    "is_main_process",
    "main_process_first",
    "process_rank",
    "reduce_sum",
    "single_process_only",
    "start_processes",
    "world_size",
]
