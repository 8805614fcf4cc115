"""Benchmark 4: time and peak memory to build the title trie + IG tables of a Books-sized catalogue.

Runs in a fresh process (``python -m benchmarks.trie_build``, JSON on stdout) so that the memory figure is
the build's own: the process's resident-set high-water mark is reset right before the build (Linux
``/proc/self/clear_refs``) and the peak minus the resident set before the build is reported. That counts
everything the build touches (numpy, torch, Python objects). tracemalloc's peak (numpy and Python
allocations only) is reported next to it. "IG tables" = what LLMGenRec precomputes per item: the trie with
its edge IG and sibling-normalised IG, then every item's per-token IG (``item_token_ig``).
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

import torch

from benchmarks.catalogue import BOOKS_ITEMS, synthetic_titles
from recbole_llm.model.trie import TitleTrie


def _status_kb(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def build_tables(seqs: list[list[int]], weights) -> tuple[TitleTrie, torch.Tensor]:
    items = list(range(1, len(seqs) + 1))
    trie = TitleTrie.build(seqs, items, item_weight=weights)
    ig, _ = trie.item_token_ig(torch.tensor(items))
    return trie, ig


def measure(n_items: int = BOOKS_ITEMS, repeats: int = 3, seed: int = 0) -> dict:
    seqs, weights = synthetic_titles(n_items, seed=seed)
    gc.collect()
    # Memory: one build after resetting the high-water mark.
    rss_before = _status_kb("VmRSS")
    peak_reset = _reset_peak()
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    trie, ig = build_tables(seqs, weights)
    hwm = _status_kb("VmHWM")
    maxrss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if peak_reset and hwm is not None and rss_before is not None:
        peak_mb, how = (
            (hwm - rss_before) / 1024,
            "RSS high-water mark (reset via /proc/self/clear_refs) - RSS before",
        )
    else:  # no /proc: growth of the process's lifetime peak (an under-estimate if setup peaked higher)
        peak_mb, how = (maxrss_after - maxrss_before) / 1024, "growth of getrusage ru_maxrss"
    stats = {
        "titles": trie.num_leaves,
        "items": trie.num_items,
        "nodes": trie.num_nodes,
        "max_tokens": trie.max_depth,
        "mean_tokens": float(sum(len(s) for s in seqs) / len(seqs)),
        "zero_ig_token_share": trie.zero_ig_share(),
        "item_token_ig_shape": list(ig.shape),
    }
    del trie, ig
    gc.collect()
    # tracemalloc peak (numpy + Python heap only), separate run: tracing slows Python allocations down.
    tracemalloc.start()
    build_tables(seqs, weights)
    traced_peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    gc.collect()
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = build_tables(seqs, weights)
        seconds.append(time.perf_counter() - t0)
        del out
        gc.collect()
    return {
        "n_items": n_items,
        "seconds": statistics.median(seconds),
        "seconds_all": [round(s, 3) for s in seconds],
        "peak_mb": peak_mb,
        "peak_mb_method": how,
        "tracemalloc_peak_mb": traced_peak,
        "threads": torch.get_num_threads(),
        **stats,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.trie_build", description=__doc__)
    parser.add_argument("--items", type=int, default=BOOKS_ITEMS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    json.dump(measure(args.items, args.repeats), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
