"""Benchmark 5: can the whole ml-100k test split (9,834 samples) be decoded in 35 minutes on this CPU?

The same users are decoded, wall clock, with every core (what a run does), by

* ``today``: the decoder as the CPU default ran it before this benchmark existed (bf16 autocast where the
  CPU runs bf16 fast, ``decode_batch_size`` 8, linear weights re-cast by autocast);
* ``fast``: the same decoder with the linear weights cast once (:mod:`recbole_llm.model.decoding.weights`)
  and larger decode batches;
* ``generate``: ``model.generate`` + ``prefix_allowed_tokens_fn`` one user at a time (the references' path),
  under the same autocast.

Rankings: in fp32 (where the search is exact up to float rounding, :data:`~benchmarks.decoder.SCORE_TOL`)
``fast``'s batching must give ``today``'s ranked titles for every user, and under bf16 the share of users
whose lists agree is reported beside ``today`` vs ``generate`` (bf16 keeps ~3 digits: a different batch
shape moves scores by ~0.1 and can swap close titles, in every implementation).

The compute floor: the multiply-adds the decode really ran (tokens through the transformer blocks and rows
through the output layer, counted with hooks; attention's own products left out) at the throughput of a
large bf16 (or fp32) matmul measured here, i.e. what the decode would cost with no overhead at all.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from benchmarks.decoder import BF16_SCORE_TOL, SCORE_TOL, compare_rankings
from benchmarks.hf_reference import generate_reference
from recbole_llm.model.decoding import constrained_beam_search
from recbole_llm.trainer.precision import cpu_has_fast_bf16

FULL_SPLIT_USERS = 9_834  # ml-100k's test split (D3 global-time split)
TARGET_MINUTES = 35.0


def _autocast(device: str, bf16: bool) -> contextlib.AbstractContextManager:
    return torch.autocast(device, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


@contextlib.contextmanager
def count_work(llm: torch.nn.Module) -> Iterator[dict[str, int]]:
    """Tokens through the first transformer block and rows through the output layer, while active."""
    counts = {"block_tokens": 0, "head_rows": 0}
    blocks = llm.get_decoder().layers
    head = llm.get_output_embeddings()

    def on_block(_module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        counts["block_tokens"] += hidden.shape[0] * hidden.shape[1]

    def on_head(_module, args):
        counts["head_rows"] += args[0].reshape(-1, args[0].shape[-1]).shape[0]

    hooks = [
        blocks[0].register_forward_pre_hook(on_block, with_kwargs=True),
        head.register_forward_pre_hook(on_head),
    ]
    try:
        yield counts
    finally:
        for hook in hooks:
            hook.remove()


def _block_params(llm: torch.nn.Module) -> tuple[int, int, int]:
    """(parameters of all transformer blocks, hidden size, vocabulary size)."""
    blocks = llm.get_decoder().layers
    per_block = sum(p.numel() for p in blocks.parameters() if p.dim() > 1)
    head = llm.get_output_embeddings().weight
    return per_block, head.shape[1], head.shape[0]


def matmul_gflops(bf16: bool, size: tuple[int, int, int] = (2048, 576, 1536), repeats: int = 20) -> float:
    """Throughput of one large matmul (SmolLM2's MLP shape with 2,048 rows) in GFLOP/s."""
    dtype = torch.bfloat16 if bf16 else torch.float32
    m, k, n = size
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    for _ in range(3):
        a @ b
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * m * k * n * repeats / (time.perf_counter() - t0) / 1e9


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def run_full_split(
    model,
    prompts: list[list[int]],
    num_beams: int = 10,
    fast_batch: int = 32,
    today_batch: int = 8,
    device: str = "cpu",
    bf16: bool | None = None,
    reference: bool = True,
    log: Callable[[str], None] = print,
    processes: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Users/s of ``today``, ``fast`` and ``generate`` on ``prompts``, the fp32 ranking check, the projection
    to the full split and the compute floor (see the module docstring). ``processes`` (``{"processes": 2,
    "dataset": ..., "data_path": ...}``) adds :func:`run_processes` on the same users."""
    llm, trie, pad = model.llm, model.trie, model.prompts.pad_token_id
    bf16 = cpu_has_fast_bf16() if bf16 is None else bf16
    threads = torch.get_num_threads()
    n = len(prompts)

    def ours(batch: int, cast_once: bool, low_precision: bool, users: list[list[int]] = prompts):
        with _autocast(device, low_precision):
            return constrained_beam_search(
                llm,
                users,
                trie,
                num_beams=num_beams,
                pad_token_id=pad,
                batch_size=batch,
                cast_weights_once=cast_once,
            )

    ours(2, True, bf16, prompts[:2])  # warm-up: first-call kernel set-up
    runs: dict[str, Any] = {}
    today, runs["today"] = _timed(lambda: ours(today_batch, False, bf16))
    log(f"  today    {n} users, batch {today_batch}: {runs['today']:7.1f} s wall")
    with count_work(llm) as work:
        fast, runs["fast"] = _timed(lambda: ours(fast_batch, True, bf16))
    log(f"  fast     {n} users, batch {fast_batch}: {runs['fast']:7.1f} s wall")
    ref = None
    if reference:
        with _autocast(device, bf16):
            ref, runs["generate"] = _timed(
                lambda: generate_reference(llm, prompts, trie, num_beams=num_beams, pad_token_id=pad)
            )
        log(f"  generate {n} users, one at a time: {runs['generate']:7.1f} s wall")
    fp32_today, fp32_today_s = _timed(lambda: ours(today_batch, False, False))
    fp32_fast, fp32_fast_s = _timed(lambda: ours(fast_batch, True, False))
    log(f"  fp32     today {fp32_today_s:.1f} s, fast {fp32_fast_s:.1f} s (ranking check)")

    # Frozen weights (LoRA's base layers): autocast re-casts them at every step unless cast once.
    frozen_users = prompts[: min(n, 16)]
    grads = [p.requires_grad for p in llm.parameters()]
    llm.requires_grad_(False)
    try:
        _, frozen_recast = _timed(lambda: ours(fast_batch, False, bf16, frozen_users))
        _, frozen_once = _timed(lambda: ours(fast_batch, True, bf16, frozen_users))
    finally:
        for p, g in zip(llm.parameters(), grads, strict=True):
            p.requires_grad_(g)
    log(f"  frozen   {len(frozen_users)} users: re-cast {frozen_recast:.1f} s, cast once {frozen_once:.1f} s")

    split = None
    if processes:
        split = run_processes(
            n, processes["dataset"], processes["data_path"], today_batch, processes["processes"]
        )
        leaves = torch.full_like(fast[0], -1)
        scores = torch.full_like(fast[1], -math.inf)
        for part in split.pop("rankings"):
            leaves[part["users"]] = torch.tensor(part["leaves"])
            scores[part["users"]] = torch.tensor(
                [[-math.inf if v is None else v for v in row] for row in part["scores"]]
            )
        split["equals_today_exactly"] = compare_rankings((leaves, scores), today, tol=0.0)
        runs["processes"] = split["decode_seconds"]
        log(f"  {split['processes']} processes x 1 thread: {split['decode_seconds']:.1f} s wall")

    per_block, hidden, vocab = _block_params(llm)
    flops = 2 * (work["block_tokens"] * per_block + work["head_rows"] * hidden * vocab)
    gflops = matmul_gflops(bf16)
    floor_s = flops / (gflops * 1e9)
    users_per_s = {name: n / seconds for name, seconds in runs.items()}
    best = max(("fast", "processes"), key=lambda k: users_per_s.get(k, 0.0))
    projected_min = FULL_SPLIT_USERS / users_per_s[best] / 60
    result = {
        "users": n,
        "num_beams": num_beams,
        "threads": threads,
        "precision": "bf16 autocast" if bf16 else "fp32",
        "batch": {"today": today_batch, "fast": fast_batch},
        "seconds": {name: round(s, 2) for name, s in runs.items()},
        "users_per_s": users_per_s,
        "speedup_fast_vs_today": runs["today"] / runs["fast"],
        "speedup_fast_vs_generate": (runs["generate"] / runs["fast"]) if "generate" in runs else None,
        "fp32_seconds": {"today": round(fp32_today_s, 2), "fast": round(fp32_fast_s, 2)},
        "fp32_fast_equals_today": compare_rankings(fp32_fast, fp32_today, SCORE_TOL),
        "bf16_fast_vs_today": compare_rankings(fast, today, BF16_SCORE_TOL) if bf16 else None,
        "bf16_today_vs_generate": compare_rankings(today, ref, BF16_SCORE_TOL) if bf16 and ref else None,
        "full_split_users": FULL_SPLIT_USERS,
        "projected_full_split_minutes": {
            name: FULL_SPLIT_USERS / ups / 60 for name, ups in users_per_s.items()
        },
        "best_path": best,
        "processes": split,
        "target_minutes": TARGET_MINUTES,
        "target_met": projected_min <= TARGET_MINUTES,
        "floor": {
            "block_tokens": work["block_tokens"],
            "head_rows": work["head_rows"],
            "gflop_per_user": flops / n / 1e9,
            "matmul_gflops": gflops,
            "floor_seconds_per_user": floor_s / n,
            "floor_full_split_minutes": FULL_SPLIT_USERS * floor_s / n / 60,
            "fast_share_of_floor": floor_s / runs["fast"],
        },
        "frozen_weights": {
            "users": len(frozen_users),
            "recast_seconds": round(frozen_recast, 2),
            "cast_once_seconds": round(frozen_once, 2),
            "speedup": frozen_recast / frozen_once,
        },
        "cpu_count": os.cpu_count(),
    }
    if math.isfinite(projected_min):
        log(
            f"  projected full split: {projected_min:.1f} min (target {TARGET_MINUTES:.0f}); compute floor "
            f"{result['floor']['floor_full_split_minutes']:.1f} min at {gflops:.0f} GFLOP/s"
        )
    return result


# ------------------------------------------------------------------------------ 2 processes x 1 thread
def run_processes(
    n_users: int,
    dataset: str,
    data_path: str,
    batch: int,
    processes: int = 2,
    beams: int = 10,
    backbone: str = "smollm2",
) -> dict[str, Any]:
    """Users/s of ``processes`` decoders with one thread each, side by side, as ``torchrun
    --nproc_per_node=2 ... --cpu_threads=1`` evaluates: the one-process decode batches (``batch`` users) are
    dealt out in turn, so each batch is decoded as in one process (``equals_today_exactly`` checks it).
    Each child loads the model itself; the decode time spans from the later start to the later end."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(root))
    cmd = [sys.executable, "-m", "benchmarks.full_split", "--users", str(n_users), "--dataset", dataset]
    cmd += ["--data-path", data_path, "--batch", str(batch), "--beams", str(beams), "--world", str(processes)]
    cmd += ["--backbone", backbone]
    children = [
        subprocess.Popen([*cmd, "--rank", str(r)], stdout=subprocess.PIPE, text=True, env=env, cwd=root)
        for r in range(processes)
    ]
    outs = [json.loads(child.communicate()[0].strip().splitlines()[-1]) for child in children]
    if any(child.returncode for child in children):
        raise RuntimeError(f"a decoding child failed: {cmd}")
    start, end = max(o["start"] for o in outs), max(o["end"] for o in outs)
    return {
        "processes": processes,
        "threads_per_process": 1,
        "users": sum(o["users"] for o in outs),
        "decode_seconds": round(end - start, 2),
        "users_per_s": sum(o["users"] for o in outs) / (end - start),
        "per_child_seconds": [round(o["end"] - o["start"], 2) for o in outs],
        "rankings": [{"users": o["user_index"], "leaves": o["leaves"], "scores": o["scores"]} for o in outs],
    }


def _child(argv: list[str] | None = None) -> None:
    import argparse
    import json

    from benchmarks.workload import load_workload, set_threads

    p = argparse.ArgumentParser()
    for flag, kind in (
        ("--users", int),
        ("--batch", int),
        ("--beams", int),
        ("--world", int),
        ("--rank", int),
    ):
        p.add_argument(flag, type=kind, required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--data-path", required=True)
    p.add_argument("--backbone", default="smollm2")
    args = p.parse_args(argv)
    set_threads(1)
    workload = load_workload(args.backbone, args.dataset, args.data_path, args.users, "cpu", "fp32")
    model = workload.model("sft")
    model.eval()
    prompts = model.prompts.prompt_ids_batch(model.histories(workload.test.inter_feat[: args.users]))
    # The single process's batches (users sorted by prompt length, cut every ``batch``), dealt out in turn
    # as the trainer's ranks take evaluation batches: each batch is decoded exactly as one process would.
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    batches = [order[b : b + args.batch] for b in range(0, len(order), args.batch)]
    mine = [u for batch in batches[args.rank :: args.world] for u in batch]
    bf16 = cpu_has_fast_bf16()
    with _autocast("cpu", bf16):  # warm-up, then the timed decode
        constrained_beam_search(
            model.llm, [prompts[mine[0]]], model.trie, num_beams=args.beams, max_new_tokens=2
        )
    start = time.time()
    with _autocast("cpu", bf16):
        leaves, scores = constrained_beam_search(
            model.llm,
            [prompts[i] for i in mine],
            model.trie,
            num_beams=args.beams,
            pad_token_id=model.prompts.pad_token_id,
            batch_size=args.batch,
        )
    end = time.time()
    print(
        json.dumps(
            {
                "users": len(mine),
                "user_index": mine,
                "start": start,
                "end": end,
                "leaves": leaves.tolist(),
                "scores": [[s if math.isfinite(s) else None for s in row] for row in scores.tolist()],
            }
        )
    )


if __name__ == "__main__":
    _child()
