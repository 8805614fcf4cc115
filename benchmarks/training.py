"""Benchmarks 2 and 3: training step time per objective relative to SFT, and padding in training batches.

A *step* here is what the trainer does per micro-batch: build the prompts, forward, the objective's loss
(divided by the precomputed effective-batch denominators) and backward. The optimiser update is left out:
it is the same for every objective and would only pull all ratios towards 1. Every round times each
objective right next to an sft step on the same micro-batch, with process CPU time on CPU (one intra-op
thread: waiting for a core on a shared machine does not count) and wall-clock time on a GPU; the ratio
is the median over rounds of these adjacent pairs. Best-of-n ratios and wall-clock ratios are recorded too.
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
from recbole_llm.model.objectives import weighted_total
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
            loss = weighted_total(terms, dens, model.loss_coefficients)
        loss.backward()
    for p in model.parameters():
        p.grad = None
    return timer


def run_training(
    workload,
    micro_batch: int = 4,
    repetitions: int = 3,
    max_repetitions: int = 6,
    budget_seconds: float = 300.0,
    autocast: torch.dtype | None = None,
    objectives: tuple[str, ...] = OBJECTIVES,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Step seconds of every objective on the same micro-batches; ratios to sft.

    A round uses a new micro-batch and times every objective right next to an sft step on the same
    micro-batch (sft first in odd rounds, second in even ones), so both see the same interference from
    other jobs; the ratio is the median over rounds of these adjacent-pair ratios. At least ``repetitions``
    and at most ``max_repetitions`` rounds; no new round starts after ``budget_seconds`` (wall clock).
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
    others = [name for name in objectives if name != "sft"]
    times: dict[str, list[float]] = {name: [] for name in objectives}
    pairs: dict[str, list[float]] = {name: [] for name in others}
    wall_pairs: dict[str, list[float]] = {name: [] for name in others}
    for name in objectives:  # warm-up: first-call overheads, allocator growth
        _step(models[name], batches[0], autocast, device)
    start = time.perf_counter()
    for r in range(max_repetitions):
        if r >= repetitions and time.perf_counter() - start > budget_seconds:
            break
        batch = batches[1 + r]
        for name in others[r % len(others) :] + others[: r % len(others)]:
            if r % 2 == 0:
                base, step = (
                    _step(models["sft"], batch, autocast, device),
                    _step(models[name], batch, autocast, device),
                )
            else:
                step, base = (
                    _step(models[name], batch, autocast, device),
                    _step(models["sft"], batch, autocast, device),
                )
            times["sft"].append(base.seconds)
            times[name].append(step.seconds)
            pairs[name].append(step.seconds / base.seconds)
            wall_pairs[name].append(step.wall / base.wall)
        log(f"  round {r + 1}: " + ", ".join(f"{k} {pairs[k][-1]:.3f}" for k in others))
    ratios = {name: statistics.median(v) for name, v in pairs.items()}
    best_of = {name: min(times[name]) / min(times["sft"]) for name in others}
    tokens = _token_counts(models, data, micro[1:])
    for m in models.values():
        m.eval()
    return {
        "micro_batch": micro_batch,
        "repetitions": len(pairs[others[0]]),
        "clock": "process CPU time" if device == "cpu" else "wall-clock time",
        "estimator": "median over rounds of t(objective) / t(sft) timed back to back on the same micro-batch",
        "step_seconds": {k: statistics.median(v) for k, v in times.items()},
        "step_seconds_all": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "step_ratio": ratios,
        "step_ratio_all": {k: [round(x, 4) for x in v] for k, v in pairs.items()},
        "step_ratio_best_of": best_of,
        "wall_step_ratio": {k: statistics.median(v) for k, v in wall_pairs.items()},
        "excluded": "the optimiser update (identical for every objective)",
        "tokens_per_micro_batch": tokens,
        "micro_batch_lengths": [int(lengths[m].max()) for m in micro[1:]],
    }


def _token_counts(models, data, micro: list[np.ndarray]) -> dict[str, float]:
    """Mean padded tokens per micro-batch: the factual pass, CFT's counterfactual prompt (padded to its own,
    much shorter, length) and what of it actually runs (the instruction it shares with the factual prompt
    is reused from the factual pass)."""
    sft = models["sft"]
    fact, cf, cf_run = [], [], []
    for idx in micro:
        inter = data.inter_feat[torch.from_numpy(idx)]
        hist, targets = sft.histories(inter), inter[sft.POS_ITEM_ID].tolist()
        batch = sft.prompts.build(hist, targets)
        fact.append(batch.input_ids.numel())
        if "cft" in models:
            cf_ids = models["cft"].prompts.build(hist, targets, counterfactual=True).input_ids
            width = min(batch.input_ids.shape[1], cf_ids.shape[1])
            ids = torch.cat([batch.input_ids[:, :width], cf_ids[:, :width]])
            shared = int((ids == ids[:1]).all(dim=0).long().cumprod(0).sum())
            cf.append(cf_ids.numel())
            cf_run.append(cf_ids[:, shared:].numel())
    out = {"factual": float(np.mean(fact))}
    if cf:
        out["cft_counterfactual"] = float(np.mean(cf))
        out["cft_counterfactual_run"] = float(np.mean(cf_run))
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
