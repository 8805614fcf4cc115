"""Information-gain statistics of item titles (IGD Table 4, Fig. 1-3) and token loss by IG group (§4.2.1).

Decision view of IGD: items are token paths in a prefix tree; the reference distribution gives each
item ``p_i`` = its share of training targets. A node's entropy is ``S(node) = sum over items under the
node of -p_i log p_i`` (natural log, ``p_i`` normalised over the whole catalogue, as in the reference
code), and a token's information gain is ``IG = S(parent) - S(child)``: exactly 0 when the parent has a
single child, i.e. the token decides nothing.

* Table 4: share of zero-IG tokens among the target tokens of the training samples (and of the catalogue).
* Fig. 1-3: mean entropy of the node reached after each decoding step, for the model's top-K items
  and for the ground-truth items; predictions with higher entropy favour low-IG tokens.
* §4.2.1: mean token loss of zero-, low- and high-IG tokens during training, per epoch: written by the
  trainer (:class:`recbole_llm.trainer.ig_loss.IGLossTracker`); ``ig-loss`` plots what it wrote.
"""

from __future__ import annotations

import math
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
    read_run_info,
    select_rows,
    split_target_counts,
)
from recbole_llm.analysis.params import Count, Folder, Overrides, Runs, Written
from recbole_llm.analysis.plots import plot_entropy_steps, plot_ig_loss
from recbole_llm.config import Config
from recbole_llm.model import is_generative
from recbole_llm.model.trie import TitleTrie
from recbole_llm.quick_start import load_run
from recbole_llm.reporting.labels import labels_for
from recbole_llm.trainer.ig_loss import ZERO_TOL, median_positive_ig
from recbole_llm.trainer.precision import model_device
from recbole_llm.utils.runs import find_in_run


def item_path_entropies(trie, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(S [n, max_depth] float64, valid [n, max_depth])`` after each token of each item's title.

    Read from :class:`~recbole_llm.model.trie.TitleTrie`'s public arrays (``item_leaf``, ``leaf_path``,
    ``node_entropy``), vectorised over items.
    """
    leaf = trie.item_leaf[items]
    if (leaf < 0).any():
        raise ValueError("item_path_entropies: some items are not in the trie (build it over every item).")
    nodes = trie.leaf_path[leaf]
    valid = nodes > 0
    values = torch.where(valid, trie.node_entropy[nodes.clamp_min(0)], torch.zeros((), dtype=torch.float64))
    return values, valid


def zero_ig_statistics(
    token_ig: torch.Tensor,
    valid: torch.Tensor,
    occurrences: torch.Tensor | Sequence[float],
    tol: float = ZERO_TOL,
) -> dict[str, float]:
    """Tokens and zero-IG tokens when item row ``i`` is written ``occurrences[i]`` times (IGD Table 4).

    ``token_ig``/``valid`` are ``[n, depth]`` (one row per item title, ``valid`` masks padding).
    """
    occ = torch.as_tensor(occurrences, dtype=torch.float64).reshape(-1)
    valid = valid.bool()
    zeros = ((token_ig.abs() <= tol) & valid).sum(1).double()
    lengths = valid.sum(1).double()
    tokens = float((occ * lengths).sum())
    zero = float((occ * zeros).sum())
    return {"tokens": tokens, "zero_ig_tokens": zero, "zero_ig_share": zero / tokens if tokens else math.nan}


def entropy_by_step(values: torch.Tensor, valid: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, count)`` per decoding step (column) over the rows that reach that step."""
    valid = valid.bool()
    counts = valid.sum(0)
    sums = torch.where(valid, values.double(), torch.zeros((), dtype=torch.float64)).sum(0)
    means = torch.where(counts > 0, sums / counts.clamp_min(1), torch.full_like(sums, math.nan))
    return means.numpy(), counts.numpy()


# ----------------------------------------------------------------------------- ig-stats command
def item_sequences(model) -> list[list[int]]:
    """Title token sequence of every internal item id (index 0 unused), exactly as trained and decoded."""
    if not is_generative(model) or not hasattr(model, "prompts"):
        raise ValueError(
            f"{type(model).__name__} has no item token sequences: IG statistics need an LLMGenRec run "
            "(titles are tokenised by its tokenizer)."
        )
    return [list(map(int, s)) for s in model.prompts.all_target_sequences()]


def zero_ig_table(model, dataset, label: str):
    """Zero-IG token shares of ``dataset``'s titles (IGD Table 4) with ``model``'s tokenizer.

    Returns the IG trie of all items (weights = whole-training-split target counts), the items' token
    sequences and one row per scope: tokens of the training targets, and tokens of the catalogue.
    Needs no training: IG depends only on the titles, the tokenizer and the target counts.
    """
    sequences = item_sequences(model)
    counts = split_target_counts(dataset, "train")[: len(sequences)].double()
    items = torch.arange(1, len(sequences))
    trie = TitleTrie.build([sequences[i] for i in items.tolist()], items.tolist(), item_weight=counts[items])
    token_ig, ig_valid = trie.item_token_ig(items)
    weights = counts[items].unsqueeze(1).expand_as(token_ig)[ig_valid]
    threshold = median_positive_ig(token_ig[ig_valid], weights)
    rows = [
        {
            "method": label,
            "dataset": dataset.config["dataset"],
            "scope": scope,
            "items": len(items),
            **zero_ig_statistics(token_ig, ig_valid, occ),
            "median_positive_ig": threshold,
        }
        for scope, occ in (
            ("train_target_tokens", counts[items]),
            ("catalogue_tokens", torch.ones(len(items))),
        )
    ]
    return trie, sequences, rows


def run_zero_ig(
    datasets: Sequence[str], output: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> dict[str, Path]:
    """``zero-ig`` command: Table 4 for prepared datasets, with an *untrained* LLMGenRec's tokenizer.

    Writes ``zero_ig_share.csv``; ``llm_path`` (and any other key) comes from ``overrides``.
    """
    rows: list[dict] = []
    out = Path(output) if output else None
    for name in datasets:
        config = Config(model="LLMGenRec", dataset=name, config_dict=dict(overrides or {}))
        _, (train_data, _, _), model, _ = load_run(config, quiet=True, with_trainer=False)
        rows += zero_ig_table(model, train_data.dataset, f"tokenizer of {config['llm_path']}")[2]
        out = out or Path(config["results_dir"] or "results") / name / "analysis"
        del model
    out.mkdir(parents=True, exist_ok=True)
    files = {"csv": out / "zero_ig_share.csv"}
    table = pd.DataFrame(rows)
    table.to_csv(files["csv"], index=False)
    print(table.to_string(index=False))
    return files


def analyse_run(
    run: Run, k: int, max_users: int | None = None, seed: int = 2020
) -> tuple[list[dict], list[dict]]:
    """Zero-IG shares (Table 4) and entropy per decoding step of predicted vs ground-truth items (Fig. 1-3).

    The reference distribution is every item's count as a target in the whole training split, over a
    trie of *all* items (so predicted and ground-truth items are always on it).
    """
    trained, model = run.trained, run.trained.model
    test = trained.test_data.dataset
    trie, sequences, zero_rows = zero_ig_table(model, test, run.label)

    entropy, ent_valid = item_path_entropies(trie, torch.arange(0, len(sequences)).clamp_min(1))
    ent_valid[0] = False  # row 0 (padding item) only makes ids index rows directly

    rows_idx = select_rows(len(test), max_users, seed)
    device = model_device(model, trained.config)
    predicted, truth = [], []
    for _, inter in iter_batches(
        test, rows_idx, batch_size_for(model, trained.config), device, f"{run.label} entropy"
    ):
        ranked = run.rank(inter, k).reshape(-1)
        predicted.append(ranked[ranked > 0])
        truth.append(inter[model.POS_ITEM_ID].cpu())
    pred_ids, true_ids = torch.cat(predicted), torch.cat(truth)
    pred_mean, pred_n = entropy_by_step(entropy[pred_ids], ent_valid[pred_ids])
    true_mean, true_n = entropy_by_step(entropy[true_ids], ent_valid[true_ids])
    step_rows = []
    for source, mean, n in (("predicted", pred_mean, pred_n), ("ground_truth", true_mean, true_n)):
        step_rows += [
            {"method": run.label, "source": source, "step": t + 1, "mean_entropy": float(m), "count": int(c)}
            for t, (m, c) in enumerate(zip(mean, n, strict=True))
            if c > 0
        ]
    for t in range(len(pred_mean)):
        if pred_n[t] > 0 and true_n[t] > 0:
            step_rows.append(
                {
                    "method": run.label,
                    "source": "difference",
                    "step": t + 1,
                    "mean_entropy": float(pred_mean[t] - true_mean[t]),
                    "count": int(min(pred_n[t], true_n[t])),
                }
            )
    return zero_rows, step_rows


def run_ig_stats(
    paths: Runs, output: Folder = None, k: Count = None, max_users: Count = None, overrides: Overrides = None
) -> Written:
    """Write ``ig_zero_share.csv``, ``ig_entropy_steps.csv`` and ``ig_entropy_steps.png``."""
    per_run, out = analyse_runs(paths, overrides, output, k, max_users, analyse_run)
    zero_rows = [row for zero, _ in per_run for row in zero]
    step_rows = [row for _, steps in per_run for row in steps]
    files = {"zero_csv": out / "ig_zero_share.csv", "steps_csv": out / "ig_entropy_steps.csv"}
    zero = pd.DataFrame(zero_rows)
    zero.to_csv(files["zero_csv"], index=False)
    steps = pd.DataFrame(step_rows)
    steps.to_csv(files["steps_csv"], index=False)
    files["png"] = plot_entropy_steps(steps, out / "ig_entropy_steps.png")
    print(zero.to_string(index=False))
    return files


# ----------------------------------------------------------------------------- ig-loss command
def find_ig_loss_csv(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """``ig_loss.csv`` of a run given as the CSV, its run folder, or its results JSON."""
    path = Path(path)
    if path.suffix == ".csv" and path.is_file():
        return path, {"run": path.parent.name}
    info = read_run_info(path)
    folders = [path] if path.is_dir() else []
    if info.get("checkpoint"):
        folders.append(Path(info["checkpoint"]))
    for folder in folders:
        found = find_in_run(folder, "ig_loss.csv")
        if found is not None:
            return found, info
    raise FileNotFoundError(
        f"No ig_loss.csv for {path}: LLMGenRec runs write <run folder>/ig_loss.csv every epoch unless "
        "`log_ig_loss: False` (baselines have no token loss); pass such a run folder or its results JSON."
    )


def run_ig_loss(paths: Sequence[str | Path], output: str | Path | None = None) -> dict[str, Path]:
    """Collect runs' ``ig_loss.csv`` into ``ig_loss_by_run.csv`` and plot ``ig_loss.png``."""
    found = [find_ig_loss_csv(p) for p in paths]
    labels = labels_for([info for _, info in found])
    frames = []
    for (csv_path, _), label in zip(found, labels, strict=True):
        frame = pd.read_csv(csv_path)
        missing = {"epoch", "group", "mean_loss", "tokens"} - set(frame.columns)
        if missing:
            raise ValueError(
                f"{csv_path} lacks columns {sorted(missing)}: it was not written by IGLossTracker."
            )
        frame.insert(0, "run", label)
        frames.append(frame)
    frame = pd.concat(frames, ignore_index=True)
    if output is None:
        info = found[0][1]
        output = (
            Path((info.get("config") or {}).get("results_dir") or "results")
            / str(info["dataset"])
            / "analysis"
            if info.get("dataset")
            else found[0][0].parent
        )
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    files = {"csv": out / "ig_loss_by_run.csv"}
    frame.to_csv(files["csv"], index=False)
    files["png"] = plot_ig_loss(frame, out / "ig_loss.png")
    print(
        frame.pivot_table(index=["run", "epoch"], columns="group", values="mean_loss", sort=False)
        .round(4)
        .to_string()
    )
    return files


__all__ = [
    "entropy_by_step",
    "run_ig_loss",
    "run_ig_stats",
    "zero_ig_statistics",
]
