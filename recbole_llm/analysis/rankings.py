"""Every metric of a run recomputed from its saved rankings alone (``rankings.jsonl``), by RecBole's classes.

    python -m recbole_llm.analysis metrics results/ml-100k/SASRec-*.json [--k 5 10]
    python -m recbole_llm.analysis metrics saved/LLMGenRec-ml-100k-*/rankings.jsonl

Accuracy (HR, NDCG, MRR, ... @K) needs the file only and equals the run's ``test_result``; the
beyond-accuracy metrics (ItemCoverage, AveragePopularity, GiniIndex, ShannonEntropy, TailPercentage) also
need the catalogue and the items' training counts, read from the run's prepared data (a results JSON,
or a rankings file inside an LLM run folder, names it). Popularity is the count of each item as a target
in the whole prepared train split, the same for every model of a dataset (``train_sample_num`` does not
change it); the padding item never counts (:func:`recbole_llm.trainer.evaluation.beyond_accuracy`).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from recbole_llm.analysis.common import split_target_counts
from recbole_llm.analysis.params import Folder, Runs, Written
from recbole_llm.quick_start import load_run_dataset
from recbole_llm.trainer.evaluation import TOPK_METRICS, beyond_accuracy, evaluate_ranked
from recbole_llm.utils.io import read_json, write_json_atomic
from recbole_llm.utils.rankings import read_rankings
from recbole_llm.utils.runs import find_in_run, resolve_path

# Without a run to read them from (a bare rankings file of a baseline): the project's defaults.
DEFAULT_SETTINGS = {
    "metrics": ["Hit", "NDCG"],
    "topk": [5, 10],
    "metric_decimal_place": 4,
    "tail_ratio": None,
}


def locate(path: str | Path) -> tuple[Path, Path | None, dict[str, Any]]:
    """``(rankings file, run info file or None, run info)`` of a results JSON, a run folder or a rankings file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist: pass a results JSON (results/<dataset>/*.json), an LLM run folder or a "
            "rankings.jsonl file."
        )
    if path.is_dir():
        info_file = find_in_run(path)
        if info_file is None:
            raise FileNotFoundError(
                f"{path} holds no run.json: pass a results JSON or a rankings.jsonl file."
            )
        path = info_file
    if path.suffix == ".jsonl":
        info_file = find_in_run(path.parent)
        return path, info_file, read_json(info_file) if info_file is not None else {}
    info = read_json(path)
    found, tried = resolve_path(info, "rankings", path.parent)
    if found is None:
        where = f"is not at {' or '.join(map(str, tried))}" if tried else "was never written (an older run)"
        raise FileNotFoundError(
            f"The rankings file of {path} {where}: rerun its test with --evaluate={path} to write one."
        )
    return found, path, info


def rankings_tensors(
    rows: Sequence[dict[str, Any]], width: int
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """``(ranked [N, width], targets [N], tokens)``: the file's item tokens as ids ``1..`` (``tokens[id - 1]``),
    ``-1`` padding short lists (never a hit, never an item)."""
    vocab: dict[str, int] = {}
    for row in rows:
        for token in (row["target"], *row["items"]):
            vocab.setdefault(str(token), len(vocab) + 1)
    ranked = torch.full((len(rows), width), -1, dtype=torch.long)
    for n, row in enumerate(rows):
        ids = [vocab[str(token)] for token in row["items"][:width]]
        ranked[n, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    targets = torch.tensor([vocab[str(row["target"])] for row in rows], dtype=torch.long)
    return ranked, targets, list(vocab)


def settings_of(info: dict[str, Any], k: Sequence[int] | None) -> dict[str, Any]:
    """Metrics, topk, decimals and tail ratio the run was scored with (``k`` replaces its topk)."""
    config = info.get("config") or {}
    settings = {key: config.get(key, default) for key, default in DEFAULT_SETTINGS.items()}
    settings["metrics"] = [m for m in settings["metrics"] if m.lower() in TOPK_METRICS] or ["Hit", "NDCG"]
    if k:
        settings["topk"] = sorted(set(int(v) for v in k))
    if min(settings["topk"]) < 1:
        raise ValueError(f"--k={settings['topk']}: every K must be at least 1.")
    return settings


def catalogue(info_file: Path, tokens: list[str]) -> tuple[int, dict[int, int]]:
    """``(number of real items, training count by the file's item ids)`` from the run's prepared data."""
    _, dataset = load_run_dataset(info_file)
    counts = split_target_counts(dataset)
    token2id = dataset.field2token_id[dataset.iid_field]
    by_file_id = {n: int(counts[token2id[t]]) for n, t in enumerate(tokens, 1) if t in token2id}
    return dataset.item_num - 1, by_file_id


def metrics_of(path: str | Path, k: Sequence[int] | None = None) -> dict[str, Any]:
    """``{"rankings", "n_samples", "test_result", "beyond_accuracy"}`` recomputed from one run's rankings."""
    rankings, info_file, info = locate(path)
    settings = settings_of(info, k)
    rows = read_rankings(rankings)
    saved_k = max((info.get("config") or {}).get("topk") or [max((len(r["items"]) for r in rows), default=0)])
    if max(settings["topk"]) > saved_k:
        raise ValueError(
            f"--k={max(settings['topk'])} but {rankings} holds top-{saved_k} lists: give K <= {saved_k} "
            f"(or --evaluate the run with --topk=[..., {max(settings['topk'])}] to save longer lists)."
        )
    ranked, targets, tokens = rankings_tensors(rows, max(settings["topk"]))
    decimals = int(settings["metric_decimal_place"])
    out: dict[str, Any] = {
        "rankings": str(rankings),
        "n_samples": len(rows),
        "test_result": evaluate_ranked(ranked, targets, settings, decimals=decimals),
    }
    if info_file is None:
        print(
            f"[metrics] {rankings}: no run beside it, so no catalogue: accuracy metrics only.",
            file=sys.stderr,
        )
        return out
    num_items, counts = catalogue(info_file, tokens)
    out["beyond_accuracy"] = beyond_accuracy(
        ranked, settings["topk"], num_items, counts, settings["tail_ratio"], decimals
    )
    return out


def run_metrics(runs: Runs, k: Sequence[int] | None = None, output: Folder = None) -> Written:
    """Print each run's recomputed metrics as JSON (one line per run); with ``output``, write them there."""
    results = [metrics_of(path, k) for path in runs]
    for result in results:
        print(json.dumps(result))
    if output is None:
        return {}
    return {"json": write_json_atomic(Path(output) / "metrics.json", results)}


__all__ = ["locate", "metrics_of", "rankings_tensors", "run_metrics", "settings_of"]
