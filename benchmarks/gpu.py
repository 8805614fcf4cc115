"""``python -m benchmarks --gpu``: the GPU check of issue 13, ready for the first GPU machine (at most ~8 min).

On one GPU, with the packaged SmolLM2-135M-Instruct (fp32 weights, bf16 autocast: what the trainer's
``mixed_precision: auto`` picks on a bf16 GPU), every objective trains a few optimizer steps and the model
of every objective decodes a few ml-100k test users with every decoder (d3, constrained, bigrec, and IGD's
α-scaled beams). Each cell records its time and its peak GPU memory. With two or more GPUs the real CLI also
runs once with one process and once with two (``torchrun``), and their wall-clock times and exit codes are
recorded. Writes ``benchmarks/results/gpu.json``. Nothing else in the project needs a GPU.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from benchmarks import OBJECTIVES
from benchmarks.training import training_micro_batches
from benchmarks.workload import Timer
from recbole_llm.model.decoding.settings import DecodingSettings
from recbole_llm.model.objectives import weighted_total

# decoder name -> decoding keys: D3 (no length normalisation), BIGRec's normalised constrained search, BIGRec's
# free generation grounded by L2 distance, and IGD's decoding (D3 with beam scores scaled by 1 − α·IG~).
DECODER_CELLS: dict[str, dict[str, Any]] = {
    "d3": {"decoder": "d3", "ig_alpha": 0.0},
    "constrained": {"decoder": "constrained", "ig_alpha": 0.0},
    "bigrec": {"decoder": "bigrec"},
    "igd": {"decoder": "d3", "ig_alpha": 0.2},
}


def peak_mb(device: str) -> float | None:
    """Peak allocated GPU memory since the last reset (None on CPU: no allocator statistics)."""
    if device != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated() / 2**20, 1)


def reset_peak(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def train_cell(model, data, micro: list, device: str, autocast: torch.dtype | None) -> dict[str, Any]:
    """Optimizer steps on ``micro`` micro-batches: median step time and peak memory (AdamW states included).

    The learning rate is 0, so the shared backbone is the same for every objective and decoder after it.
    """
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=0.0)
    ctx = torch.autocast(device_type=device, dtype=autocast) if autocast is not None else nullcontext()
    reset_peak(device)
    seconds = []
    for rows in micro:
        inter = data[rows]
        with Timer(device) as timer:
            dens = model.loss_denominators(inter)
            with ctx:
                loss = weighted_total(model(inter), dens, model.loss_coefficients)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        seconds.append(timer.wall)
    del optimizer
    model.eval()
    steady = seconds[1:] or seconds  # the first step pays for kernel selection and allocations
    return {
        "step_seconds": round(statistics.median(steady), 4),
        "steps": len(seconds),
        "peak_mb": peak_mb(device),
    }


def decode_cell(model, histories: list, keys: dict[str, Any], device: str, autocast) -> dict[str, Any]:
    """Decode ``histories`` with ``keys`` (decoder + α): users/s and peak memory; the settings are restored."""
    saved = model.decoding
    config = {k: v for k, v in dataclasses.asdict(saved).items() if k != "length_penalty"}  # decoder's own
    config.update(bigrec_generations=saved.num_beams, **keys, topk=[10])
    model.decoding = DecodingSettings.from_config(config, model.objective)
    ctx = torch.autocast(device_type=device, dtype=autocast) if autocast is not None else nullcontext()
    reset_peak(device)
    try:
        with Timer(device) as timer, ctx:
            ranked = model.recommend_histories(histories, 10)
    finally:
        model.decoding = saved
    return {
        "users": len(histories),
        "seconds": round(timer.wall, 3),
        "users_per_s": round(len(histories) / max(timer.wall, 1e-9), 3),
        "peak_mb": peak_mb(device),
        "ranked_shape": list(ranked.shape),
    }


def run_matrix(
    workload,
    device: str,
    steps: int = 4,
    micro_batch: int = 8,
    users: int = 32,
    autocast: torch.dtype | None = torch.bfloat16,
    objectives: tuple[str, ...] = OBJECTIVES,
    decoders: dict[str, dict[str, Any]] = DECODER_CELLS,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Every objective x decoder on ``workload``: ``{objective: {"train": ..., "decode": {decoder: ...}}}``."""
    lengths = workload.model("sft").sample_lengths(workload.train)
    micro = training_micro_batches(lengths, micro_batch, steps)
    data = workload.train.inter_feat
    out: dict[str, Any] = {}
    for objective in objectives:
        model = workload.model(objective)
        cell = {"train": train_cell(model, data, micro, device, autocast), "decode": {}}
        histories = model.histories(workload.test.inter_feat[:users])
        for name, keys in decoders.items():
            cell["decode"][name] = decode_cell(model, histories, keys, device, autocast)
        log(
            f"  {objective}: step {cell['train']['step_seconds']:.3f} s, "
            + ", ".join(f"{n} {c['users_per_s']:.1f} users/s" for n, c in cell["decode"].items())
        )
        out[objective] = cell
    return out


def run_cli_processes(data_path: str, timeout: int = 150) -> dict[str, Any]:
    """The real CLI with one process and with two (``torchrun``), a short IGD run each: exit codes, wall times."""
    root = Path(__file__).resolve().parent.parent
    args = [
        "run_recbole_llm.py",
        "--model=LLMGenRec",
        "--objective=igd",
        "--dataset=ml-100k",
        f"--data_path={data_path}",
        "--train_sample_num=512",
        "--eval_sample_num=64",
        "--epochs=1",
        "--mixed_precision=bf16",
        "--show_progress=False",
    ]
    runs = {}
    for procs in (1, 2):
        launcher = [sys.executable] if procs == 1 else [sys.executable, "-m", "torch.distributed.run"]
        if procs > 1:
            launcher += ["--standalone", f"--nproc_per_node={procs}"]
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(
                [*launcher, *args], cwd=root, capture_output=True, text=True, timeout=timeout
            )
            code, tail = proc.returncode, (proc.stdout + proc.stderr)[-1500:]
        except subprocess.TimeoutExpired:
            code, tail = None, f"timed out after {timeout} s"
        runs[f"{procs}_process"] = {
            "command": " ".join([*launcher[1:], *args]),
            "exit_code": code,
            "wall_seconds": round(time.perf_counter() - t0, 1),
            "output_tail": tail if code != 0 else "",
        }
    return runs


def run_gpu(args, log: Callable[[str], None] = print, workload=None) -> dict[str, Any]:
    """The ``--gpu`` run: refuses without CUDA, else the matrix, then the process comparison on 2+ GPUs."""
    from benchmarks.workload import load_workload, machine_info, machine_text

    device = args.device if args.device != "cpu" else "cuda"
    if workload is None and not torch.cuda.is_available():
        raise SystemExit("--gpu: no CUDA device here. Run it on a GPU machine (nothing else needs one).")
    t0 = time.perf_counter()
    users = args.users or 32
    if workload is None:
        log(f"loading {args.dataset} and SmolLM2 on {device} ...")
        workload = load_workload("smollm2", args.dataset, args.data_path, users, device, "fp32")
    info = machine_info(0, device)
    autocast = torch.bfloat16 if device == "cuda" else None
    matrix = run_matrix(
        workload,
        device,
        steps=args.reps or 4,
        micro_batch=args.micro_batch or 8,
        users=users,
        autocast=autocast,
        log=log,
    )
    result: dict[str, Any] = {
        "machine": machine_text(info),
        "machine_details": info,
        "command": " ".join([os.path.basename(sys.executable), "-m", "benchmarks", *sys.argv[1:]]),
        "settings": {
            "backbone": workload.backbone,
            "weights": "fp32",
            "autocast": str(autocast),
            "device": device,
            "dataset": args.dataset,
            "users": users,
            "num_beams": 10,
            "micro_batch": args.micro_batch or 8,
            "steps": args.reps or 4,
        },
        "matrix": matrix,
        "gpus": torch.cuda.device_count() if device == "cuda" else 0,
    }
    if result["gpus"] >= 2:
        log("two GPUs: the CLI with 1 and with 2 processes")
        result["processes"] = run_cli_processes(args.data_path)
    else:
        result["processes"] = "not run: fewer than 2 GPUs"
    result["total_seconds"] = round(time.perf_counter() - t0, 1)
    return result
