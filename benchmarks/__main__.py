"""``python -m benchmarks``: run every benchmark of issue 5, print the table, write the JSON.

Default (about 8-11 minutes on this shared 2-core CPU, one intra-op thread): the packaged
SmolLM2-135M-Instruct in float32 on ml-100k; 16 test users decoded with 10 beams by both decoders; 3 to 5
rounds of training micro-batches of 4 samples, each objective timed next to sft; the padding of one epoch
over all 78,668 training samples; a 41,722-title synthetic catalogue. On CPU the ratios use process CPU
time (robust to other jobs on the machine); wall-clock times are in the JSON too. ``--quick`` is a smoke
run (tiny random model, a few users; its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks import TARGETS
from benchmarks.report import details, lookup, passes, text_table
from benchmarks.workload import (
    BACKBONES,
    DTYPES,
    load_average,
    load_workload,
    machine_info,
    machine_text,
    set_threads,
)

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "latest.json"
GPU_OUT = Path(__file__).resolve().parent / "results" / "gpu.json"
SECTIONS = ("decoder", "training", "padding", "trie", "full_split")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    p.add_argument(
        "--out", type=Path, default=None, help=f"JSON output (default: {DEFAULT_OUT}; --gpu: {GPU_OUT})"
    )
    p.add_argument("--quick", action="store_true", help="smoke run: tiny model, few users, small catalogue")
    p.add_argument(
        "--gpu",
        action="store_true",
        help="the GPU check (issue 13, <= 8 min): every objective x decoder on SmolLM2, bf16; 2 processes on 2+ GPUs",
    )
    p.add_argument(
        "--only", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}"
    )
    p.add_argument("--backbone", choices=BACKBONES, default=None, help="default smollm2 (tiny with --quick)")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="fp32", help="weights dtype (default fp32)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dataset", default="ml-100k")
    p.add_argument("--data-path", default="dataset/")
    p.add_argument("--users", type=int, default=None, help="test users decoded (default 16; 4 with --quick)")
    p.add_argument("--beams", type=int, default=10)
    p.add_argument("--decode-batch", type=int, default=16, help="users decoded together by our decoder")
    p.add_argument("--micro-batch", type=int, default=None, help="training micro-batch (default 4; 2 quick)")
    p.add_argument("--reps", type=int, default=None, help="training rounds, at least (default 3; 1 quick)")
    p.add_argument("--max-reps", type=int, default=5, help="training rounds, at most (default 5)")
    p.add_argument(
        "--train-budget", type=float, default=200.0, help="no new training round after this many seconds"
    )
    p.add_argument(
        "--trie-items", type=int, default=None, help="catalogue size (default 41,722; 2,000 quick)"
    )
    p.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1: shared CPU; 0 = all)")
    p.add_argument(
        "--full-users",
        type=int,
        default=None,
        help="full_split: users decoded by each path (default 64; 4 quick)",
    )
    p.add_argument("--full-batch", type=int, default=32, help="full_split: decode batch of the fast path")
    p.add_argument(
        "--full-processes",
        type=int,
        default=2,
        help="full_split: also N processes x 1 thread (SmolLM2 on CPU; 0 = no)",
    )
    return p


def run(args: argparse.Namespace, log=print, workload=None) -> dict[str, Any]:
    """Run the selected benchmarks; ``workload`` (from :func:`load_workload`) skips loading (tests)."""
    quick = args.quick
    backbone = args.backbone or ("tiny" if quick else "smollm2")
    users = args.users or (4 if quick else 16)
    micro_batch = args.micro_batch or (2 if quick else 4)
    reps = args.reps or (1 if quick else 3)
    trie_items = args.trie_items or (2000 if quick else 41_722)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(only) - set(SECTIONS)
    if unknown:
        raise SystemExit(f"--only: unknown section(s) {sorted(unknown)}; choose from {', '.join(SECTIONS)}.")
    if args.device != "cpu" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: no CUDA device here; use --device cpu.")
    threads = set_threads(args.threads)
    t_start = time.perf_counter()
    info = machine_info(threads, args.device)
    result: dict[str, Any] = {
        "machine": machine_text(info),
        "machine_details": info,
        "command": " ".join([os.path.basename(sys.executable), "-m", "benchmarks", *sys.argv[1:]]),
        "quick": quick,
        "settings": {
            "backbone": backbone,
            "dtype": args.dtype,
            "autocast": None,
            "device": args.device,
            "dataset": args.dataset,
            "users": users,
            "num_beams": args.beams,
            "decode_batch_size": args.decode_batch,
            "length_penalty": 0.0,
            "ig_alpha": 0.0,
            "micro_batch": micro_batch,
            "training_rounds": [reps, reps if quick else max(reps, args.max_reps)],
            "training_budget_seconds": args.train_budget,
            "trie_items": trie_items,
            "threads": threads,
        },
        "targets": {k: list(v) for k, v in TARGETS.items()},
        "load_average": {"start": load_average()},
        "section_seconds": {},
        "gpu": None,
        "gpu_note": "no GPU was lent to the session that ran this; the GPU runs of issue 5 are not done",
    }
    if args.device != "cpu":
        result["gpu_note"] = f"measured on {info.get('gpu_name', args.device)}"

    full_users = args.full_users or (4 if quick else 64)
    if workload is None and {"decoder", "training", "padding", "full_split"} & set(only):
        log(f"loading {args.dataset} and {backbone} ({args.dtype}, {threads} thread(s)) ...")
        samples = max(users, full_users if "full_split" in only else 0)
        workload = load_workload(backbone, args.dataset, args.data_path, samples, args.device, args.dtype)
    if workload is not None:
        result["settings"]["backbone"] = workload.backbone
        result["settings"]["load_seconds"] = round(workload.load_seconds, 1)

    if "decoder" in only:
        from benchmarks.decoder import BF16_SCORE_TOL, SCORE_TOL, run_decoder

        log(f"[1/4] decoder: {users} users, {args.beams} beams")
        t0 = time.perf_counter()
        model = workload.model("sft")
        model.eval()
        prompts = model.prompts.prompt_ids_batch(model.histories(workload.test.inter_feat[:users]))
        dec = run_decoder(
            model,
            prompts,
            num_beams=args.beams,
            batch_size=args.decode_batch,
            assert_identical=False,
            tol=BF16_SCORE_TOL if args.dtype == "bf16" else SCORE_TOL,
            log=log,
        )
        result["decoder"] = dec
        result["decoder_speedup"] = dec["speedup"]
        result["decoder_outputs_identical"] = bool(
            dec["identical"]["identical"] and dec["ours_deterministic"]
        )
        result["section_seconds"]["decoder"] = round(time.perf_counter() - t0, 1)
        result["load_average"]["after_decoder"] = load_average()

    if "training" in only:
        from benchmarks.training import run_training

        max_reps = reps if quick else max(reps, args.max_reps)
        log(f"[2/4] training steps: micro-batch {micro_batch}, {reps}-{max_reps} rounds (+1 warm-up)")
        t0 = time.perf_counter()
        tr = run_training(
            workload,
            micro_batch=micro_batch,
            repetitions=reps,
            max_repetitions=max_reps,
            budget_seconds=args.train_budget,
            log=log,
        )
        result["training"] = tr
        result["step_ratio"] = tr["step_ratio"]
        result["step_seconds"] = tr["step_seconds"]
        result["section_seconds"]["training"] = round(time.perf_counter() - t0, 1)
        result["load_average"]["after_training"] = load_average()

    if "padding" in only:
        from benchmarks.training import run_padding

        log("[3/4] padding share of the length-grouped training batches")
        t0 = time.perf_counter()
        pad = run_padding(workload)
        result["padding"] = pad
        result["padding_share"] = pad["padding_share"]
        result["section_seconds"]["padding"] = round(time.perf_counter() - t0, 1)

    if "trie" in only:
        log(f"[4/4] trie + IG tables: {trie_items} titles (separate process)")
        t0 = time.perf_counter()
        trie = run_trie_child(trie_items, repeats=1 if quick else 3, threads=threads)
        result["trie"] = trie
        result["trie_build_seconds"] = trie["seconds"]
        result["trie_build_peak_mb"] = trie["peak_mb"]
        result["section_seconds"]["trie"] = round(time.perf_counter() - t0, 1)

    if "full_split" in only:
        from benchmarks.full_split import run_full_split

        cores = os.cpu_count() or 1
        log(f"[5/5] full test split: {full_users} users, every path, {cores} thread(s), wall clock")
        t0 = time.perf_counter()
        model = workload.model("sft")
        model.eval()
        prompts = model.prompts.prompt_ids_batch(model.histories(workload.test.inter_feat[:full_users]))
        torch.set_num_threads(cores)  # a run uses every core (cpu_threads: ~)
        try:
            split = None
            if args.full_processes > 1 and workload.backbone == "smollm2" and args.device == "cpu":
                split = {
                    "processes": args.full_processes,
                    "dataset": args.dataset,
                    "data_path": args.data_path,
                }
            full = run_full_split(
                model,
                prompts,
                num_beams=args.beams,
                fast_batch=args.full_batch,
                device=args.device,
                log=log,
                processes=split,
            )
        finally:
            torch.set_num_threads(threads)
        result["full_split"] = full
        result["full_split_minutes"] = full["projected_full_split_minutes"][full["best_path"]]
        result["section_seconds"]["full_split"] = round(time.perf_counter() - t0, 1)
        result["load_average"]["after_full_split"] = load_average()

    result["load_average"]["end"] = load_average()
    result["total_seconds"] = round(time.perf_counter() - t_start, 1)
    result["met"] = {k: passes(k, lookup(result, k)) for k in TARGETS}
    return result


def run_trie_child(items: int, repeats: int, threads: int) -> dict[str, Any]:
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "benchmarks.trie_build", "--items", str(items), "--repeats", str(repeats)]
    cmd += ["--threads", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=root, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"trie benchmark failed ({' '.join(cmd)}):\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout)


# The top-level keys each section writes (besides its entry in section_seconds).
SECTION_KEYS = {
    "decoder": ("decoder", "decoder_speedup", "decoder_outputs_identical"),
    "training": ("training", "step_ratio", "step_seconds"),
    "padding": ("padding", "padding_share"),
    "trie": ("trie", "trie_build_seconds", "trie_build_peak_mb"),
    "full_split": ("full_split", "full_split_minutes"),
}


def keep_other_sections(result: dict[str, Any], out: Path) -> dict[str, Any]:
    """With ``--only``, the sections not run now keep their earlier numbers from ``out`` (and say when
    and where they were measured), so one long section can be rerun alone without losing the others."""
    if not out.is_file():
        return result
    try:
        old = json.loads(out.read_text())
    except (OSError, ValueError):
        return result
    kept = [s for s, keys in SECTION_KEYS.items() if keys[0] not in result and keys[0] in old]
    if not kept:
        return result
    for section in kept:
        for key in SECTION_KEYS[section]:
            if key in old:
                result[key] = old[key]
        if section in old.get("section_seconds", {}):
            result["section_seconds"][section] = old["section_seconds"][section]
    earlier = dict(old.get("kept_sections") or {})
    for section in kept:
        earlier[section] = earlier.get(section) or {
            "machine": old.get("machine"),
            "command": old.get("command"),
        }
    result["kept_sections"] = {s: earlier[s] for s in kept}
    result["met"] = {k: passes(k, lookup(result, k)) for k in TARGETS}
    return result


def write_result(result: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, out)


def main(argv: list[str] | None = None, workload=None) -> int:
    args = build_parser().parse_args(argv)
    if args.gpu:
        from benchmarks.gpu import run_gpu

        result = run_gpu(args, workload=workload)
        write_result(result, args.out or GPU_OUT)
        print(
            f"GPU check on {result['machine']}: {result['total_seconds']:.0f} s; JSON written to {args.out or GPU_OUT}"
        )
        return 0
    args.out = args.out or DEFAULT_OUT
    result = keep_other_sections(run(args, workload=workload), args.out)
    write_result(result, args.out)
    print()
    print(f"Benchmarks on {result['machine']}")
    print(text_table(result))
    print(details(result))
    print(f"total {result['total_seconds']:.0f} s; JSON written to {args.out}")
    if "decoder" in result and not result["decoder_outputs_identical"]:
        first = result["decoder"]["identical"]["first_mismatch"]
        print(f"ERROR: our decoder's ranked titles differ from generate()'s: {first}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
