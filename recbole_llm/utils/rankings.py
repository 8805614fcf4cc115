"""A run's rankings on disk: one JSON line per test sample, so any metric can be recomputed, any two runs
tested sample by sample, and what was recommended read back, without reloading a model.

``rankings.jsonl`` holds one line per test sample, in the test fingerprint's sample order
(:func:`recbole_llm.utils.results.split_fingerprint`)::

    {"user": "196", "target": "242", "items": ["302", "377", ...], "scores": [-1.25, -2.5, ...]}

``user``, ``target`` and ``items`` are the dataset's own tokens; ``items`` is the top-K list (K = max
topk), best first; ``scores`` are the ranker's (full-sort scores for RecBole's models, final beam scores
for LLMGenRec; ``null`` where it gives none: BIGRec's grounding, popularity fill, a ``-inf`` score). A
list shorter than K (a decoder that finds fewer titles) is written shorter: never with the padding item.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from recbole_llm.utils.io import atomic_write

RANKINGS_FILE = "rankings.jsonl"


def _score(value: float) -> float | None:
    """A JSON number, or ``null`` for NaN / ±inf (no score, or a masked item)."""
    return float(value) if math.isfinite(value) else None


def ranking_lines(
    users: np.ndarray, targets: np.ndarray, items: np.ndarray, scores: np.ndarray, keep: np.ndarray
) -> Iterator[str]:
    """JSON lines of token arrays ``users [N]``, ``targets [N]``, ``items [N, K]``, ``scores [N, K]``;
    ``keep [N, K]`` marks the real items (padding dropped, the rest kept in rank order)."""
    for user, target, row, row_scores, row_keep in zip(users, targets, items, scores, keep, strict=True):
        line = {
            "user": str(user),
            "target": str(target),
            "items": [str(item) for item in row[row_keep]],
            "scores": [_score(value) for value in row_scores[row_keep]],
        }
        yield json.dumps(line, ensure_ascii=False) + "\n"


def write_rankings(path: str | os.PathLike, dataset: Any, rankings: Any) -> Path:
    """Write ``rankings`` (``users, targets, items, scores`` of internal ids, ``-1`` padding) as the
    dataset's tokens, atomically. Item 0 (RecBole's padding) and ``-1`` are dropped from the lists."""
    users, targets, items, scores = (t.cpu().numpy() for t in rankings)
    user_tokens = np.asarray(dataset.field2id_token[dataset.uid_field])
    item_tokens = np.asarray(dataset.field2id_token[dataset.iid_field])
    keep = items > 0
    lines = ranking_lines(
        user_tokens[users],
        item_tokens[targets],
        item_tokens[np.where(keep, items, 0)],
        scores.astype(float),
        keep,
    )

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.writelines(lines)

    return atomic_write(path, write)


def read_rankings(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The lines of a rankings file; a malformed line raises an error that names the file and line."""
    path = Path(path)
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(
                    f"{path} line {number} is not valid JSON ({err.msg}): the file is truncated or was edited "
                    "by hand; rerun the evaluation that wrote it (--evaluate=<run>)."
                ) from None
            if not isinstance(row, dict) or not {"user", "target", "items"} <= row.keys():
                raise ValueError(f"{path} line {number} is not a ranking: it needs user, target and items.")
            rows.append(row)
    return rows


__all__ = ["RANKINGS_FILE", "ranking_lines", "read_rankings", "write_rankings"]
