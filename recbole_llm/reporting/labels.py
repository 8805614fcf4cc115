"""Names in tables and plots: the papers' metric names and the labels that tell same-named runs apart.

A row's label is its run name (``SASRec``, ``LLMGenRec-igd-d3``) plus the hyper-parameters that differ
among runs of that name (``LLMGenRec-cft-d3 (lambda=0.1)``). The knobs checked are the registered
objectives' own keys (``Objective.keys``) and every decoding key (``decoding_keys()``: DecodingSettings'
fields and registered scorers' keys), so a new objective or scorer labels its runs without an edit here.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from typing import Any

from recbole_llm.model.decoding import decoding_keys
from recbole_llm.model.objectives import objective_keys
from recbole_llm.reporting.results import result_run_name, result_value

DEFAULT_METRICS = ("hit@5", "ndcg@5", "hit@10", "ndcg@10")
METRIC_NAMES = {
    "hit": "HR",
    "ndcg": "NDCG",
    "recall": "Recall",
    "mrr": "MRR",
    "precision": "Precision",
    "map": "MAP",
}

# Decoding keys that never tell two runs of one name apart: the decoder is part of the run name
# (``LLMGenRec-igd-d3``) and the batch size does not change the ranked lists.
_UNLABELLED_DECODING_KEYS = {"decoder", "decode_batch_size"}


def label_keys() -> tuple[str, ...]:
    """Hyper-parameters always checked when runs share a name: the objectives' knobs, the model's, then
    decoding's (in this order in labels)."""
    model_keys = ("temporal_embedding", "temporal_scope", "tuning", "llm_path", "prompt_template")
    # The protocol changes every model's numbers (masked history items, another split), baselines too.
    protocol = ("exclude_history", "split_protocol")
    decoding = (key for key in decoding_keys() if key not in _UNLABELLED_DECODING_KEYS)
    return tuple(dict.fromkeys((*objective_keys(), *protocol, *model_keys, *decoding)))


# Keys that never change what a run computes (paths, logging, batching that is normalised away).
IGNORED_KEYS = {
    "model",
    "cpu_threads",
    "log_ig_loss",
    "dataset",
    "objective",
    "data_path",
    "data_root",
    "results_dir",
    "checkpoint_dir",
    "llm_cache_dir",
    "state",
    "show_progress",
    "resume",
    "evaluate",
    "gpu_id",
    "use_gpu",
    "device",
    "worker",
    "log_wandb",
    "wandb_project",
    "micro_batch_size",
    "eval_batch_size",
    "checkpoint_steps",
    "mixed_precision",
    "gradient_checkpointing",
    "config_files",
    "benchmark_filename",
    *_UNLABELLED_DECODING_KEYS,
}


def metric_title(metric: str) -> str:
    """``hit@10`` -> ``HR@10`` (the papers' names)."""
    name, _, k = metric.partition("@")
    return f"{METRIC_NAMES.get(name.lower(), name)}@{k}" if k else METRIC_NAMES.get(name.lower(), name)


def _fmt_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return ",".join(_fmt_value(v) for v in value)
    return str(value)


def distinguishing_keys(group: Sequence[dict[str, Any]], ignore: Collection[str] = ()) -> list[str]:
    """Hyper-parameters whose values differ among runs that share one run name (paper knobs first).

    ``ignore`` leaves more keys out (``compare`` passes ``seed`` to group repeated seeds into one row).
    """
    if len(group) < 2:
        return []
    ordered = label_keys()
    candidates = set(ordered)
    for result in group:
        candidates.update((result.get("overrides") or {}).keys())
    candidates -= IGNORED_KEYS | set(ignore)
    varying = [
        key
        for key in candidates
        if len({json.dumps(result_value(r, key), sort_keys=True, default=str) for r in group}) > 1
    ]
    order = {key: i for i, key in enumerate(ordered)}
    return sorted(varying, key=lambda k: (order.get(k, len(order)), k))


def labels_for(results: Sequence[dict[str, Any]], ignore: Collection[str] = ()) -> list[str]:
    """One label per result: run name plus the hyper-parameters (but ``ignore``) that tell same-named runs apart."""
    groups: dict[tuple[str, str], list[int]] = {}
    for i, r in enumerate(results):
        groups.setdefault((str(r.get("dataset")), result_run_name(r)), []).append(i)
    labels = [""] * len(results)
    for (_, run), members in groups.items():
        keys = distinguishing_keys([results[i] for i in members], ignore)
        for i in members:
            suffix = ", ".join(f"{k}={_fmt_value(result_value(results[i], k))}" for k in keys)
            labels[i] = f"{run} ({suffix})" if suffix else run
    return labels
