"""Training batch plans: effective batches, length-grouped micro-batches, sharding across processes.

A plan is a pure function of (sample lengths, seed, epoch), so a resumed run replays exactly the
batches of an uninterrupted one and every DDP process knows the whole effective batch (and hence
the loss denominator) without communication.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def plan_epoch(
    lengths: Sequence[int] | np.ndarray,
    batch_size: int,
    micro_batch_size: int,
    seed: int,
    epoch: int,
    shuffle: bool = True,
    world_size: int = 1,
) -> list[list[np.ndarray]]:
    """Split one epoch into effective batches of ``batch_size`` samples, each a list of micro-batches.

    Samples are shuffled (seeded by ``seed`` and ``epoch``) into effective batches, so the optimisation
    sees random batches; *inside* an effective batch, samples are sorted by length before being cut
    into micro-batches, so padding stays low (the gradient does not depend on how an effective batch
    is cut, because losses are normalised over the whole effective batch). The number of micro-batches
    of every effective batch is a multiple of ``world_size`` so that each process gets the same count.
    """
    if batch_size <= 0 or micro_batch_size <= 0:
        raise ValueError(
            f"train_batch_size ({batch_size}) and micro_batch_size ({micro_batch_size}) must be > 0."
        )
    lengths = np.asarray(lengths)
    n = len(lengths)
    order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
    plan = []
    for start in range(0, n, batch_size):
        chunk = order[start : start + batch_size]
        if len(chunk) < world_size:
            continue  # too small to give every process a sample; at most world_size - 1 samples skipped
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        n_micro = math.ceil(len(chunk) / micro_batch_size)
        n_micro = world_size * math.ceil(n_micro / world_size)
        if n_micro > len(chunk):  # tiny last batch: fewer, non-empty micro-batches, still a multiple
            n_micro = len(chunk) - len(chunk) % world_size
        plan.append(np.array_split(chunk, n_micro))
    return plan


def shard(micro_batches: list[np.ndarray], rank: int, world_size: int) -> list[np.ndarray]:
    """The micro-batches of one effective batch that process ``rank`` computes."""
    return micro_batches[rank::world_size]


def padding_share(lengths: np.ndarray, plan: list[list[np.ndarray]]) -> float:
    """Share of padding tokens over all micro-batches of a plan (right padding to the micro-batch maximum)."""
    padded = real = 0
    for micro_batches in plan:
        for micro in micro_batches:
            ls = lengths[micro]
            padded += int(ls.max()) * len(ls)
            real += int(ls.sum())
    return 0.0 if padded == 0 else 1.0 - real / padded
