"""Benchmark 1: our constrained beam search vs ``model.generate`` + ``prefix_allowed_tokens_fn``.

Both decode the same prompts with the same trie, beams and length penalty. The reference runs one user at
a time (as the D3 / IGD / BIGRec code), ours batches users. Times are process CPU time on CPU (what a
single-threaded process spends computing, whatever else runs on the machine; wall-clock time is recorded
too) and wall-clock time on a GPU. Timing order is ours, reference, ours again: the mean of the two runs of
ours brackets the reference, so drifts during the long reference run affect both sides alike. The ranked
titles must be identical (up to ties, see :data:`SCORE_TOL`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from benchmarks.hf_reference import generate_reference
from benchmarks.workload import Timer
from recbole_llm.model.decoding import constrained_beam_search

# Two titles whose scores differ by less than this are a tie: the per-title score is a sum of ~15 float32
# log-probabilities, and the same sum computed with other batch shapes (users batched, beams sharing the
# prompt KV) differs by up to a few 1e-4 on SmolLM2, so closer titles may legitimately swap ranks.
SCORE_TOL = 1e-3
BF16_SCORE_TOL = 0.1  # bfloat16 keeps ~3 significant digits: ties are much wider


def compare_rankings(
    fast: tuple[torch.Tensor, torch.Tensor], ref: tuple[torch.Tensor, torch.Tensor], tol: float = SCORE_TOL
) -> dict[str, Any]:
    """Do two decoders return the same ranked titles? ``(leaf_ids [U, K], scores [U, K])`` each.

    Identical means, per user: the same number of titles, scores equal within ``tol`` rank by rank, and the
    same title at every rank except where the two titles swapped there have scores within ``tol`` of each
    other (a tie, whose order is arbitrary in both implementations).
    """
    (fl, fs), (rl, rs) = fast, ref
    if fl.shape != rl.shape:
        return {"identical": False, "users": int(fl.shape[0]), "first_mismatch": "different shapes"}
    n_users, exact, ties, max_diff, first = fl.shape[0], 0, 0, 0.0, None
    for u in range(n_users):
        a = [(int(x), float(s)) for x, s in zip(fl[u].tolist(), fs[u].tolist()) if x >= 0]
        b = [(int(x), float(s)) for x, s in zip(rl[u].tolist(), rs[u].tolist()) if x >= 0]
        problem = None
        if len(a) != len(b):
            problem = f"{len(a)} vs {len(b)} titles"
        else:
            diffs = [abs(sa - sb) for (_, sa), (_, sb) in zip(a, b)]
            max_diff = max([max_diff, *diffs])
            score_a = dict(a)
            swapped = [(xa, xb) for (xa, _), (xb, _) in zip(a, b) if xa != xb]
            if not swapped:
                exact += 1
            elif all(xb in score_a and abs(score_a[xb] - score_a[xa]) <= tol for xa, xb in swapped):
                ties += 1
            else:
                ranks = [i for i, (p, q) in enumerate(zip(a, b)) if p[0] != q[0]]
                problem = f"different titles at ranks {ranks}"
            if problem is None and any(d > tol for d in diffs):
                problem = f"scores differ by {max(diffs):.3g} > {tol}"
        if problem and first is None:
            first = f"user {u}: {problem}"
    return {
        "identical": first is None,
        "users": int(n_users),
        "users_same_order": exact,
        "users_tie_swaps": ties,
        "max_score_diff": max_diff,
        "score_tolerance": tol,
        "first_mismatch": first,
    }


def run_decoder(
    model,
    prompts: list[list[int]],
    num_beams: int = 10,
    batch_size: int = 16,
    length_penalty: float = 0.0,
    assert_identical: bool = True,
    tol: float = SCORE_TOL,
    fast_fn: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Users/s of both paths on ``prompts`` with ``model`` (an LLMGenRec: its backbone, trie and pad id).

    ``fast_fn`` replaces our decoder (tests use it to check that a wrong decoder is caught)."""
    llm, trie, pad = model.llm, model.trie, model.prompts.pad_token_id
    fast_fn = fast_fn or constrained_beam_search
    n = len(prompts)

    device = next(llm.parameters()).device.type

    def fast() -> tuple[tuple[torch.Tensor, torch.Tensor], Timer]:
        with Timer(device) as timer:
            out = fast_fn(
                llm,
                prompts,
                trie,
                num_beams=num_beams,
                length_penalty=length_penalty,
                pad_token_id=pad,
                batch_size=batch_size,
            )
        return out, timer

    # Warm-up of both paths (first-call overheads), two decoding steps only.
    fast_fn(llm, prompts[:2], trie, num_beams=num_beams, max_new_tokens=2, pad_token_id=pad, batch_size=2)
    generate_reference(llm, prompts[:1], trie, num_beams=num_beams, max_new_tokens=2, pad_token_id=pad)

    out1, t1 = fast()
    log(f"  ours      {n} users: {t1.seconds:7.1f} s ({t1.wall:.1f} s wall)")
    with Timer(device) as tr:
        ref = generate_reference(
            llm, prompts, trie, num_beams=num_beams, length_penalty=length_penalty, pad_token_id=pad
        )
    log(f"  generate  {n} users: {tr.seconds:7.1f} s ({tr.wall:.1f} s wall)")
    out2, t2 = fast()
    log(f"  ours      {n} users: {t2.seconds:7.1f} s ({t2.wall:.1f} s wall, again)")
    t_fast = (t1.seconds + t2.seconds) / 2
    t_ref = tr.seconds
    check = compare_rankings(out1, ref, tol)
    repeat = compare_rankings(out2, out1, tol=0.0)
    result = {
        "users": n,
        "num_beams": num_beams,
        "batch_size": batch_size,
        "length_penalty": length_penalty,
        "max_new_tokens": int(trie.max_depth),
        "prompt_tokens": _stats([len(p) for p in prompts]),
        "catalogue": {"items": trie.num_items, "titles": trie.num_leaves, "trie_nodes": trie.num_nodes},
        "clock": "process CPU time" if device == "cpu" else "wall-clock time",
        "ours_seconds": [round(t1.seconds, 3), round(t2.seconds, 3)],
        "reference_seconds": round(t_ref, 3),
        "ours_users_per_s": n / t_fast,
        "reference_users_per_s": n / t_ref,
        "speedup": t_ref / t_fast,
        "ours_wall_seconds": [round(t1.wall, 3), round(t2.wall, 3)],
        "reference_wall_seconds": round(tr.wall, 3),
        "wall_speedup": tr.wall / ((t1.wall + t2.wall) / 2),
        "identical": check,
        "ours_deterministic": repeat["identical"],
    }
    if assert_identical and not (check["identical"] and repeat["identical"]):
        raise AssertionError(
            f"decoder outputs differ from generate(): {check['first_mismatch'] or repeat['first_mismatch']}"
        )
    return result


def _stats(values: list[int]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    return {"mean": float(a.mean()), "min": float(a.min()), "max": float(a.max())} if a.size else {}


__all__ = ["BF16_SCORE_TOL", "SCORE_TOL", "compare_rankings", "run_decoder"]
