"""Linear weights cast to the autocast dtype once per decode, instead of at every beam step.

Under ``torch.autocast`` every ``nn.Linear`` call casts its fp32 weight to bf16/fp16. autocast caches that
cast only for weights that require grad and only until its context exits, so frozen weights (LoRA's base
layers, a model loaded for analysis) are cast again at every one of the ~30 steps of every decode batch,
and trainable ones once per autocast context (per evaluation batch). :func:`linear_weights_cast_once`
casts them once for a whole decode. The cast is the one autocast performs (``Tensor.to``, round to
nearest) and autocast leaves an already-low-precision weight as it is, so every logit, score and ranked
list is bit-identical (``tests/test_decoding.py``); norms, embeddings and the residual stream stay fp32 as
autocast keeps them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


def _is_plain(tensor: torch.Tensor | None) -> bool:
    """A local fp32 tensor (not a sharded DTensor, whose FSDP hooks own the module's parameters)."""
    return tensor is not None and type(tensor.data) is torch.Tensor and tensor.dtype == torch.float32


@contextmanager
def linear_weights_cast_once(model: torch.nn.Module, device_type: str) -> Iterator[int]:
    """While active, each fp32 ``nn.Linear`` of ``model`` holds a copy of its weight (and bias) in autocast's
    dtype; yields how many layers were swapped (0 when autocast is off on ``device_type``).

    The original parameters are put back on exit, also after an error, so optimizers and checkpoints keep
    referring to the same objects. A tied output layer gets its own copy: the input embedding stays fp32.
    """
    if not torch.is_autocast_enabled(device_type):
        yield 0
        return
    dtype = torch.get_autocast_dtype(device_type)
    swapped: list[tuple[torch.nn.Module, str, torch.nn.Parameter]] = []
    copies: dict[int, torch.nn.Parameter] = {}  # one copy per shared weight
    try:
        for module in model.modules():
            if not isinstance(module, torch.nn.Linear):
                continue
            for name in ("weight", "bias"):
                param = module._parameters.get(name)
                if not _is_plain(param):
                    continue
                if id(param) not in copies:
                    copies[id(param)] = torch.nn.Parameter(param.detach().to(dtype), requires_grad=False)
                swapped.append((module, name, param))
                module._parameters[name] = copies[id(param)]
        yield len({id(m) for m, _, _ in swapped})
    finally:
        for module, name, param in reversed(swapped):
            module._parameters[name] = param
