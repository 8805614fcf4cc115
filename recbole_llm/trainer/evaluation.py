"""Ranked item lists scored by RecBole's own metric classes: the trainer's test and every analysis alike.

A generative model returns ranked item ids, not scores over the catalogue; RecBole's metrics read
``rec.topk`` rows (a hit flag per rank, then the number of positives), so ranked lists become such rows
and are scored exactly like SASRec's full-sort rankings.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from recbole.config import Config as RecBoleConfig
from recbole.evaluator import Evaluator
from recbole.evaluator.collector import DataStruct

# Metrics that RecBole computes from ``rec.topk`` alone (what a ranked list can feed).
TOPK_METRICS = {"hit", "ndcg", "mrr", "recall", "precision", "map"}


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


__all__ = ["TOPK_METRICS", "evaluate_ranked", "ranked_to_topk", "score_ranked"]
