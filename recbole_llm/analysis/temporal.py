"""Temporal sensitivity (CETRec Fig. 4): test metrics with every history reversed.

Reversing a history changes both the absolute and the relative order of its items while keeping the
same items, so a model that uses order information changes its recommendations. We report, per
method, HR/NDCG@K on the original and on the reversed test histories, the paper's *performance change
rate* ``(reversed - original) / original``, and the share of users whose top-K list (order or set)
changes. Histories of one item cannot change and are counted in ``reversible_share``.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
import torch

from recbole_llm.analysis.common import (
    Run,
    analyse_runs,
    batch_size_for,
    evaluate_ranked,
    iter_batches,
    select_rows,
)
from recbole_llm.analysis.params import Count, Folder, Overrides, Runs, Written
from recbole_llm.analysis.plots import plot_temporal
from recbole_llm.trainer.precision import model_device


def reverse_histories(item_seq: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse ``item_seq[i, :lengths[i]]`` for every row; padding after the history stays in place."""
    width = item_seq.shape[1]
    pos = torch.arange(width, device=item_seq.device).unsqueeze(0)
    lengths = lengths.view(-1, 1).to(item_seq.device)
    source = torch.where(pos < lengths, lengths - 1 - pos, pos)
    return torch.gather(item_seq, 1, source)


def reversed_interaction(interaction, seq_field: str, len_field: str):
    """A copy of a RecBole ``Interaction`` whose histories are reversed (other fields shared)."""
    from recbole.data.interaction import Interaction

    fields = dict(interaction.interaction)
    fields[seq_field] = reverse_histories(interaction[seq_field], interaction[len_field])
    return Interaction(fields)


def list_change_rates(original: torch.Tensor, reversed_: torch.Tensor) -> dict[str, float]:
    """Share of rows whose ranked list differs (``list_changed``) and whose item set differs (``set_changed``)."""
    if original.shape != reversed_.shape:
        raise ValueError(
            f"Ranked lists differ in shape: {tuple(original.shape)} vs {tuple(reversed_.shape)}."
        )
    if len(original) == 0:
        return {"list_changed": math.nan, "set_changed": math.nan}
    order_changed = (original != reversed_).any(dim=1)
    set_changed = (original.sort(dim=1).values != reversed_.sort(dim=1).values).any(dim=1)
    return {
        "list_changed": float(order_changed.float().mean()),
        "set_changed": float(set_changed.float().mean()),
    }


def change_rate(original: float, reversed_: float) -> float:
    """The paper's performance change rate ``(reversed - original) / original`` (NaN when original is 0)."""
    if original == 0 or math.isnan(original) or math.isnan(reversed_):
        return math.nan
    return (reversed_ - original) / original


def temporal_rows(
    method: str,
    original: dict[str, float],
    reversed_: dict[str, float],
    lists: dict[str, float],
    k: int,
    reversible: float,
    n_users: int,
) -> list[dict[str, Any]]:
    """CSV rows: one per metric (original, reversed, change rate), then the list-change shares."""
    rows = [
        {
            "method": method,
            "metric": m,
            "original": original[m],
            "reversed": reversed_[m],
            "change_rate": change_rate(original[m], reversed_[m]),
        }
        for m in original
    ]
    for name, value in lists.items():
        rows.append(
            {
                "method": method,
                "metric": f"{name}@{k}",
                "original": math.nan,
                "reversed": math.nan,
                "change_rate": value,
            }
        )
    for row in rows:
        row.update({"k": k, "n_users": n_users, "reversible_share": reversible})
    return rows


def analyse_run(run: Run, k: int, max_users: int | None = None, seed: int = 2020) -> list[dict[str, Any]]:
    """Rank every (sampled) test user's original and reversed history; score both with RecBole's metrics."""
    trained, model = run.trained, run.trained.model
    test = trained.test_data.dataset
    rows_idx = select_rows(len(test), max_users, seed)
    device = model_device(model, trained.config)
    seq_field, len_field = model.ITEM_SEQ, model.ITEM_SEQ_LEN
    width = max(k, max(trained.config["topk"]))
    orig, rev, targets, lengths = [], [], [], []
    for _, inter in iter_batches(
        test, rows_idx, batch_size_for(model, trained.config), device, f"{run.label} reversed"
    ):
        orig.append(run.rank(inter, width))
        rev.append(run.rank(reversed_interaction(inter, seq_field, len_field), width))
        targets.append(inter[model.POS_ITEM_ID].cpu())
        lengths.append(inter[len_field].cpu())
    original, reversed_ = torch.cat(orig), torch.cat(rev)
    target = torch.cat(targets)
    metrics_orig = evaluate_ranked(original, target, trained.config)
    metrics_rev = evaluate_ranked(reversed_, target, trained.config)
    lists = list_change_rates(original[:, :k], reversed_[:, :k])
    reversible = float((torch.cat(lengths) > 1).float().mean()) if len(rows_idx) else math.nan
    return temporal_rows(run.label, metrics_orig, metrics_rev, lists, k, reversible, len(rows_idx))


def run_temporal(
    paths: Runs, output: Folder = None, k: Count = None, max_users: Count = None, overrides: Overrides = None
) -> Written:
    """Write ``temporal.csv`` and ``temporal.png`` for each run in ``paths``."""
    per_run, out = analyse_runs(paths, overrides, output, k, max_users, analyse_run)
    frame = pd.DataFrame([row for rows in per_run for row in rows])
    files = {"csv": out / "temporal.csv"}
    frame.to_csv(files["csv"], index=False)
    files["png"] = plot_temporal(frame, out / "temporal.png")
    print(frame[["method", "metric", "original", "reversed", "change_rate"]].round(4).to_string(index=False))
    return files


__all__ = [
    "analyse_run",
    "change_rate",
    "list_change_rates",
    "reverse_histories",
    "reversed_interaction",
    "run_temporal",
    "temporal_rows",
]
