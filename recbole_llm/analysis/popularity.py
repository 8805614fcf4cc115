"""Popularity groups of recommended items, with and without the history in the prompt (CFT Fig. 1 and 4).

CFT splits items into popularity groups (higher index = more popular; the reference code uses 5) and
reports the share of each group in the top-K lists, for BIGRec and BIGRec+CFT, with the behaviour
history in the prompt and without it. A model that ignores the history recommends the same mix
either way. Popularity is the number of times an item is a target in the whole training split.
Groups are equal-size slices of the catalogue sorted by popularity (``items``, default) or slices
holding equal shares of the training interactions (``interactions``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from recbole_llm.analysis.common import (
    Run,
    analyse_runs,
    batch_size_for,
    iter_batches,
    select_rows,
    split_target_counts,
)
from recbole_llm.analysis.params import Count
from recbole_llm.analysis.plots import plot_popularity
from recbole_llm.model import is_generative
from recbole_llm.trainer.precision import model_device

GROUPINGS = ("items", "interactions")


def popularity_groups(
    counts: Sequence[float] | np.ndarray | torch.Tensor, n_groups: int = 5, grouping: str = "items"
) -> np.ndarray:
    """Group index (0 = least popular) of every item id; index 0 (padding) gets -1.

    ``items``: items sorted by count (ties by item id) cut into ``n_groups`` slices of equal size
    (sizes differ by at most one). ``interactions``: the same order cut where the cumulative count
    crosses each multiple of total/G, so each group holds about 1/G of the training interactions
    (``ceil(G * cumulative share) - 1``).
    """
    counts = np.asarray(counts, dtype=float)
    if grouping not in GROUPINGS:
        raise ValueError(f"grouping={grouping!r}: choose one of {', '.join(GROUPINGS)}.")
    if n_groups < 1:
        raise ValueError(f"n_groups must be at least 1, got {n_groups}.")
    n_items = len(counts) - 1
    if n_items < n_groups:
        raise ValueError(
            f"{n_items} items cannot fill {n_groups} popularity groups: use --groups {max(1, n_items)} or fewer."
        )
    order = np.argsort(counts[1:], kind="stable") + 1  # ascending popularity, ties by item id
    groups = np.full(len(counts), -1, dtype=np.int64)
    if grouping == "items":
        for g, chunk in enumerate(np.array_split(order, n_groups)):
            groups[chunk] = g
        return groups
    mass = counts[order]
    total = mass.sum()
    if total <= 0:
        raise ValueError(
            "No training interactions: `interactions` grouping needs item counts; use --grouping items."
        )
    # An item belongs to the slice holding its last unit of mass; zero-count items to the first slice.
    upto = np.cumsum(mass) / total * n_groups
    groups[order] = np.clip(np.ceil(upto - 1e-9).astype(np.int64) - 1, 0, n_groups - 1)
    return groups


def group_shares(
    items: torch.Tensor | np.ndarray, groups: np.ndarray, n_groups: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(shares, counts)`` of the given item ids (any shape; ids <= 0 are padding) per group; shares sum to 1."""
    flat = torch.as_tensor(items).reshape(-1).cpu().numpy()
    flat = flat[flat > 0]
    counts = (
        np.bincount(groups[flat], minlength=n_groups)[:n_groups]
        if len(flat)
        else np.zeros(n_groups, np.int64)
    )
    total = counts.sum()
    shares = counts / total if total else np.zeros(n_groups)
    return shares, counts


def group_summary(groups: np.ndarray, counts: np.ndarray | torch.Tensor, n_groups: int) -> pd.DataFrame:
    """What each group holds: number of items, count range, share of training interactions."""
    counts = np.asarray(counts, dtype=float)
    total = counts[1:].sum() or 1.0
    rows = []
    for g in range(n_groups):
        members = np.nonzero(groups == g)[0]
        c = counts[members]
        rows.append(
            {
                "group": g,
                "n_items": len(members),
                "min_count": float(c.min()) if len(c) else np.nan,
                "max_count": float(c.max()) if len(c) else np.nan,
                "interaction_share": float(c.sum() / total),
            }
        )
    return pd.DataFrame(rows)


def _rows(
    method: str, condition: str, shares: np.ndarray, counts: np.ndarray, k: int
) -> list[dict[str, Any]]:
    return [
        {"method": method, "condition": condition, "group": g, "share": float(s), "count": int(c), "k": k}
        for g, (s, c) in enumerate(zip(shares, counts, strict=True))
    ]


def _without_history_shares(run: Run, rows_idx: np.ndarray, k: int, groups: np.ndarray, n_groups: int):
    """Shares of the history-free lists. That prompt is the same for every user, so when two users get the
    same list one decode stands for all; otherwise (e.g. a D3 ensemble that still reads the history)
    every user is decoded."""
    trained, model = run.trained, run.trained.model
    test = trained.test_data.dataset
    device = model_device(model, trained.config)
    probe = test.inter_feat[torch.from_numpy(rows_idx[:2])].to(device)
    lists = run.rank(probe, k, without_history=True)
    if len(lists) < 2 or torch.equal(lists[0], lists[1]):
        shares, counts = group_shares(lists[:1], groups, n_groups)
        return shares, counts * len(rows_idx)
    ranked = [
        run.rank(inter, k, without_history=True)
        for _, inter in iter_batches(
            test, rows_idx, batch_size_for(model, trained.config), device, f"{run.label} no history"
        )
    ]
    return group_shares(torch.cat(ranked), groups, n_groups)


def analyse_run(
    run: Run,
    k: int,
    n_groups: int = 5,
    grouping: str = "items",
    max_users: int | None = None,
    seed: int = 2020,
    counts: torch.Tensor | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Shares per group of one run's top-``k`` test lists (with/without history) and of reference sets.

    Reference rows: ``history_items`` (items in the test histories) and ``test_targets`` (the ground
    truth), the distributions a history-aware recommender should move towards.
    """
    trained, model = run.trained, run.trained.model
    test = trained.test_data.dataset
    if counts is None:
        counts = split_target_counts(test, "train")
    groups = popularity_groups(counts, n_groups, grouping)
    rows_idx = select_rows(len(test), max_users, seed)
    device = model_device(model, trained.config)
    ranked, histories, targets = [], [], []
    seq_field, len_field = model.ITEM_SEQ, model.ITEM_SEQ_LEN
    for _, inter in iter_batches(
        test, rows_idx, batch_size_for(model, trained.config), device, f"{run.label} top-{k}"
    ):
        ranked.append(run.rank(inter, k))
        mask = torch.arange(inter[seq_field].shape[1], device=inter[seq_field].device) < inter[
            len_field
        ].unsqueeze(1)
        histories.append(inter[seq_field][mask].cpu())
        targets.append(inter[model.POS_ITEM_ID].cpu())
    rows = _rows(run.label, "with_history", *group_shares(torch.cat(ranked), groups, n_groups), k)
    if is_generative(model):
        rows += _rows(
            run.label, "without_history", *_without_history_shares(run, rows_idx, k, groups, n_groups), k
        )
    rows += _rows(run.label, "history_items", *group_shares(torch.cat(histories), groups, n_groups), k)
    rows += _rows(run.label, "test_targets", *group_shares(torch.cat(targets), groups, n_groups), k)
    summary = group_summary(groups, counts, n_groups)
    summary.insert(0, "method", run.label)
    return pd.DataFrame(rows), summary


def run_popularity(
    paths: Sequence[str | Path],
    output: str | Path | None = None,
    k: int | None = None,
    n_groups: int = 5,
    grouping: str = "items",
    max_users: int | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """Write ``popularity_groups.csv`` (shares), ``popularity_group_items.csv`` (group contents) and the PNG."""
    used_k: list[int] = []

    def analyse(run: Run, k_used: int, max_users: Count, seed: int):
        used_k.append(k_used)
        return analyse_run(run, k_used, n_groups, grouping, max_users, seed)

    per_run, out = analyse_runs(paths, overrides, output, k, max_users, analyse)
    frames = [frame for frame, _ in per_run]
    summaries = [summary for _, summary in per_run]
    k_used = used_k[-1]
    shares = pd.concat(frames, ignore_index=True)
    files = {
        "csv": out / "popularity_groups.csv",
        "groups_csv": out / "popularity_group_items.csv",
    }
    shares.to_csv(files["csv"], index=False)
    pd.concat(summaries, ignore_index=True).to_csv(files["groups_csv"], index=False)
    plot_frame = shares[shares["condition"].isin(["with_history", "without_history", "test_targets"])]
    files["png"] = plot_popularity(plot_frame, out / "popularity_groups.png", k_used)
    pivot = shares.pivot_table(index=["method", "condition"], columns="group", values="share", sort=False)
    print(pivot.round(4).to_string())
    return files
