"""Ranked item lists scored by RecBole's own metric classes: the trainer's test and every analysis alike.

A generative model returns ranked item ids, not scores over the catalogue; RecBole's metrics read
``rec.topk`` rows (a hit flag per rank, then the number of positives), so ranked lists become such rows
and are scored exactly like SASRec's full-sort rankings.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np
import torch
from recbole.config import Config as RecBoleConfig
from recbole.evaluator import Evaluator
from recbole.evaluator.collector import DataStruct
from recbole.evaluator.metrics import (
    AveragePopularity,
    GiniIndex,
    ItemCoverage,
    ShannonEntropy,
    TailPercentage,
)

# Metrics that RecBole computes from ``rec.topk`` alone (what a ranked list can feed).
TOPK_METRICS = {"hit", "ndcg", "mrr", "recall", "precision", "map"}


class Rankings(NamedTuple):
    """What one evaluation ranked, in the dataloader's sample order (internal ids; ``-1`` pads short lists).

    Kept by the trainers (``last_rankings``) so the run can write its rankings file
    (:func:`recbole_llm.utils.rankings.write_rankings`).
    """

    users: torch.Tensor  # [N] user ids
    targets: torch.Tensor  # [N] target item ids
    items: torch.Tensor  # [N, K] ranked item ids, best first
    scores: torch.Tensor  # [N, K] their scores (NaN: the ranker gave none)


def top_scored(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(item ids, scores)`` of the top ``k`` full-sort scores: the same ``torch.topk`` call as RecBole's
    Collector, so the saved list is the one RecBole scored (ties included)."""
    values, items = torch.topk(scores, k, dim=-1)
    return items, values


def ranked_to_topk(ranked: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """RecBole's ``rec.topk`` rows from ranked item lists: hit flags per rank, then the number of positives.

    ``ranked`` is ``[B, K]`` item ids, ``-1`` where a list is shorter than K (never a hit), so short
    lists are scored as short lists and no arbitrary ``torch.topk`` tie order enters the metrics.
    """
    hits = (ranked == targets.view(-1, 1)).int()
    return torch.cat([hits, torch.ones_like(hits[:, :1])], dim=1)


def score_ranked(
    evaluator: Evaluator, struct: DataStruct, topk: torch.Tensor, ranked: torch.Tensor | None = None
) -> dict[str, Any]:
    """RecBole's metrics of ``rec.topk`` rows (and the ranked ids ``rec.items``, ``-1`` padding as 0)."""
    struct.set("rec.topk", topk)
    if ranked is not None:
        struct.set("rec.items", ranked.clamp_min(0))
    return evaluator.evaluate(struct)


def evaluate_ranked(
    ranked: torch.Tensor, targets: torch.Tensor, config: Mapping[str, Any], decimals: int = 6
) -> dict[str, float]:
    """HR@K, NDCG@K, ... of ranked lists, computed by RecBole's own metric classes.

    ``config`` gives ``metrics`` and ``topk`` (a RecBole ``Config`` or a plain dict); metrics that need
    more than ``rec.topk`` (coverage, popularity) are skipped. Lists shorter than max(topk) are padded
    with ``-1`` (never a hit).
    """
    if not hasattr(np, "float"):
        # RecBole's metric classes use np.float; its Config installs these aliases, a plain dict does not.
        RecBoleConfig.compatibility_settings(None)
    topk = list(config["topk"])
    metrics = [m for m in config["metrics"] if m.lower() in TOPK_METRICS]
    if not metrics:
        raise ValueError(
            f"No ranking metric in metrics={config['metrics']}: use Hit, NDCG, MRR, Recall or Precision."
        )
    width = max(topk)
    if ranked.shape[1] < width:
        pad = torch.full((ranked.shape[0], width - ranked.shape[1]), -1, dtype=ranked.dtype)
        ranked = torch.cat([ranked, pad], dim=1)
    evaluator = Evaluator({"metrics": metrics, "topk": topk, "metric_decimal_place": decimals})
    rows = ranked_to_topk(ranked[:, :width].cpu(), targets.cpu())
    return {k: float(v) for k, v in score_ranked(evaluator, DataStruct(), rows).items()}


def _per_list(values: np.ndarray, lengths: np.ndarray) -> float:
    """The mean over lists of each list's mean value over its own ``lengths`` items (empty lists left out);
    ``values [N, K]`` is 0 at padding."""
    rows = lengths > 0
    return float((values[rows].sum(axis=1) / lengths[rows]).mean()) if rows.any() else 0.0


# RecBole's beyond-accuracy metrics (IGD and CFT claim more diverse, less popularity-biased lists).
BEYOND_ACCURACY_METRICS = (
    "ItemCoverage",
    "AveragePopularity",
    "GiniIndex",
    "ShannonEntropy",
    "TailPercentage",
)


def beyond_accuracy(
    ranked: torch.Tensor,
    topk: list[int],
    num_items: int,
    counts: Mapping[int, int],
    tail_ratio: float | None = None,
    decimals: int = 4,
) -> dict[str, float]:
    """ItemCoverage, AveragePopularity, GiniIndex, ShannonEntropy, TailPercentage @K of ranked lists, by
    RecBole's own metric classes, over the items present: the padding never counts.

    ``ranked [N, K]`` holds item ids (``<= 0``: padding of a short list); ``num_items`` the real catalogue
    (RecBole's ``item_num`` less its padding item); ``counts`` each item's training count (RecBole's
    ``item_counter``). RecBole reads a rectangular ``rec.items`` (the trainer clamps ``-1`` to item 0,
    which it then counts as an item), so here the catalogue-level metrics (coverage, Gini, entropy) get
    the one row of every item present in the top-K lists, and the per-list ones (popularity, tail share)
    average each list over its own items (lists with no item are left out). With no short list every
    value equals RecBole's on the same lists.
    """
    if not hasattr(np, "float"):
        RecBoleConfig.compatibility_settings(None)
    config = {"topk": list(topk), "metric_decimal_place": decimals, "tail_ratio": tail_ratio}
    counts = {int(item): int(n) for item, n in counts.items()}
    matrix = ranked.cpu().numpy()
    out: dict[str, float] = {}
    for k in config["topk"]:
        items = np.where(matrix[:, :k] > 0, matrix[:, :k], 0)
        present = items[items > 0][None, :]
        lengths = (items > 0).sum(axis=1)

        empty = present.size == 0
        out[f"itemcoverage@{k}"] = 0.0 if empty else ItemCoverage(config).get_coverage(present, num_items)
        out[f"averagepopularity@{k}"] = _per_list(AveragePopularity(config).get_pop(items, counts), lengths)
        out[f"giniindex@{k}"] = 0.0 if empty else float(GiniIndex(config).get_gini(present, num_items))
        out[f"shannonentropy@{k}"] = 0.0 if empty else float(ShannonEntropy(config).get_entropy(present))
        out[f"tailpercentage@{k}"] = _per_list(TailPercentage(config).get_tail(items, counts), lengths)
    return {name: round(float(value), decimals) for name, value in sorted(out.items())}


__all__ = [
    "BEYOND_ACCURACY_METRICS",
    "TOPK_METRICS",
    "Rankings",
    "beyond_accuracy",
    "evaluate_ranked",
    "ranked_to_topk",
    "score_ranked",
    "top_scored",
]
