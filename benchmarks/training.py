"""Benchmarks 2 and 3: training step time per objective relative to SFT, and padding in training batches.

A *step* here is what the trainer does per micro-batch: build the prompts, forward, the objective's loss
(divided by the precomputed effective-batch denominators) and backward. The optimiser update is left out:
it is the same for every objective and would only pull all ratios towards 1. Every round times all
objectives on the same micro-batch (in a rotated order), with process CPU time on CPU (one intra-op
thread: waiting for a core on a shared machine does not count) and wall-clock time on a GPU. The ratio is
best-of-n (timeit's estimator: interference only ever adds time); the median of the per-round ratios and
the wall-clock ratios are recorded too.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch

from benchmarks import OBJECTIVES
from benchmarks.workload import Timer
from recbole_llm.trainer.batching import padding_share, plan_epoch


def training_micro_batches(
    lengths: np.ndarray, micro_batch: int, count: int, seed: int = 0
) -> list[np.ndarray]:
    """The first ``count`` full micro-batches of an epoch plan (length-grouped, as the trainer cuts them)."""
    plan = plan_epoch(lengths, max(64, micro_batch), micro_batch, seed=seed, epoch=0)
    full = [m for mbs in plan for m in mbs if len(m) == micro_batch]
    if len(full) < count:
        raise ValueError(f"only {len(full)} micro-batches of {micro_batch} samples; use fewer repetitions.")
    return full[:count]


def _step(model, inter, autocast: torch.dtype | None, device: str) -> Timer:
    dens = model.loss_denominators(inter)
    ctx = torch.autocast(device_type=device, dtype=autocast) if autocast is not None else nullcontext()
    with Timer(device) as timer:
        with ctx:
            terms = model(inter)
            loss = sum(
                model.loss_coefficients[k] * v / dens[k].clamp_min(1e-12).to(v.device)
                for k, v in terms.items()
            )
        loss.backward()
    for p in model.parameters():
        p.grad = None
    return timer


def run_training(
    workload,
    micro_batch: int = 4,
    repetitions: int = 3,
    max_repetitions: int = 6,
    budget_seconds: float = 240.0,
    autocast: torch.dtype | None = None,
    objectives: tuple[str, ...] = OBJECTIVES,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Step seconds of every objective on the same micro-batches; ratios to sft.

    At least ``repetitions`` and at most ``max_repetitions`` rounds (each on a new micro-batch, all objectives
    in a rotated order); rounds stop once ``budget_seconds`` of wall-clock time have passed. The ratio is
    best-of-n: ``min t(objective) / min t(sft)`` (noise on a shared CPU only adds time); the median of the
    per-round ratios is reported next to it.
    """
    device = next(workload.llm.parameters()).device.type
    models = {name: workload.model(name) for name in objectives}
    for m in models.values():
        m.train()
    data = workload.train
    lengths = models["sft"].sample_lengths(data)
    max_repetitions = max(repetitions, max_repetitions)
    micro = training_micro_batches(lengths, micro_batch, max_repetitions + 1)
    batches = [data.inter_feat[torch.from_numpy(idx)].to(device) for idx in micro]
    times: dict[str, list[float]] = {name: [] for name in objectives}
    walls: dict[str, list[float]] = {name: [] for name in objectives}
    for name in objectives:  # warm-up: first-call overheads, allocator growth
        _step(models[name], batches[0], autocast, device)
    start = time.perf_counter()
    for r in range(max_repetitions):
        if r >= repetitions and time.perf_counter() - start > budget_seconds:
            break
        order = objectives[r % len(objectives) :] + objectives[: r % len(objectives)]
        for name in order:
            timer = _step(models[name], batches[1 + r], autocast, device)
            times[name].append(timer.seconds)
            walls[name].append(timer.wall)
        log(f"  round {r + 1}: " + ", ".join(f"{k} {times[k][-1]:.2f}s" for k in objectives))
    done = len(times["sft"])
    ratios = {name: min(times[name]) / min(times["sft"]) for name in objectives}
    paired = {
        name: statistics.median(a / b for a, b in zip(times[name], times["sft"], strict=True))
        for name in objectives
    }
    wall_ratios = {
        name: statistics.median(a / b for a, b in zip(walls[name], walls["sft"], strict=True))
        for name in objectives
    }
    tokens = _token_counts(models, data, micro[1:])
    for m in models.values():
        m.eval()
    return {
        "micro_batch": micro_batch,
        "repetitions": done,
        "clock": "process CPU time" if device == "cpu" else "wall-clock time",
        "estimator": "min over rounds of t(objective) / min over rounds of t(sft)",
        "step_seconds": {k: min(v) for k, v in times.items()},
        "step_seconds_all": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "step_ratio": {k: v for k, v in ratios.items() if k != "sft"},
        "step_ratio_median_of_rounds": {k: v for k, v in paired.items() if k != "sft"},
        "wall_seconds_all": {k: [round(x, 3) for x in v] for k, v in walls.items()},
        "wall_step_ratio_median_of_rounds": {k: v for k, v in wall_ratios.items() if k != "sft"},
        "excluded": "the optimiser update (identical for every objective)",
        "tokens_per_micro_batch": tokens,
        "micro_batch_lengths": [int(lengths[m].max()) for m in micro[1:]],
    }


def _token_counts(models, data, micro: list[np.ndarray]) -> dict[str, float]:
    """Mean padded tokens per micro-batch of the factual pass and of CFT's counterfactual pass (which is
    padded to its own, much shorter, length)."""
    sft = models["sft"]
    fact, cf = [], []
    for idx in micro:
        inter = data.inter_feat[torch.from_numpy(idx)]
        hist, targets = sft._histories(inter), inter[sft.POS_ITEM_ID].tolist()
        fact.append(sft.prompts.build(hist, targets).input_ids.numel())
        if "cft" in models:
            cf.append(models["cft"].prompts.build(hist, targets, counterfactual=True).input_ids.numel())
    out = {"factual": float(np.mean(fact))}
    if cf:
        out["cft_counterfactual"] = float(np.mean(cf))
    return out


def run_padding(workload, batch_size: int | None = None, micro_batch: int | None = None) -> dict[str, Any]:
    """Padding share of one epoch of length-grouped micro-batches over *all* training samples, next to the
    same effective batches cut in random order, and of CFT's counterfactual micro-batches."""
    cfg = workload.config
    batch_size = int(batch_size or cfg["train_batch_size"])
    micro_batch = int(micro_batch or cfg["micro_batch_size"] or batch_size)
    model = workload.model("sft")
    data = workload.train
    t0 = time.perf_counter()
    lengths = model.sample_lengths(data)
    seconds_lengths = time.perf_counter() - t0
    seed = int(cfg["seed"])
    plan = plan_epoch(lengths, batch_size, micro_batch, seed=seed, epoch=0)
    rng = np.random.default_rng(seed)
    unsorted = [np.array_split(rng.permutation(np.concatenate(mbs)), len(mbs)) for mbs in plan]
    # The counterfactual prompt is the same for every sample; only the target piece varies.
    cf_prompt = len(model.prompts.prompt_ids([], counterfactual=True))
    targets = data.inter_feat[model.POS_ITEM_ID].numpy()
    cf_lengths = cf_prompt + model.item_lengths.numpy()[targets]
    return {
        "samples": int(len(lengths)),
        "batch_size": batch_size,
        "micro_batch_size": micro_batch,
        "padding_share": padding_share(lengths, plan),
        "padding_share_unsorted": padding_share(lengths, unsorted),
        "padding_share_cft_counterfactual": padding_share(cf_lengths, plan),
        "prompt_tokens_mean": float(lengths.mean()),
        "cft_counterfactual_tokens_mean": float(cf_lengths.mean()),
        "lengths_seconds": seconds_lengths,
    }
