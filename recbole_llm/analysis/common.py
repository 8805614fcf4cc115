"""What every paper analysis shares: reloading runs, ranking items the same way for the generative model
and RecBole's baselines, and one loop over runs. Ranked lists are scored by the trainer's own scoring
(:mod:`recbole_llm.trainer.evaluation`, RecBole's metric classes), so an analysis's metrics are the run's.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch

from recbole_llm.analysis.params import Count, Folder, Overrides, Runs
from recbole_llm.data.dataset import histories_of
from recbole_llm.model import is_generative
from recbole_llm.model.decoding.items import mask_history_scores
from recbole_llm.quick_start import load_trained
from recbole_llm.reporting.labels import labels_for
from recbole_llm.trainer.evaluation import evaluate_ranked
from recbole_llm.trainer.precision import decoding_precision, model_device
from recbole_llm.utils.config_access import check_exclude_history
from recbole_llm.utils.runs import find_run


class Run(NamedTuple):
    """A reloaded run with the label it gets in tables and plots."""

    label: str
    info: dict[str, Any]
    trained: Any  # recbole_llm.quick_start.Trained

    def rank(self, interaction, k: int, without_history: bool = False) -> torch.Tensor:
        """:func:`rank_items` under the run's own ``exclude_history``, so an analysis ranks as the run's test
        did (a baseline is masked here; LLMGenRec reads the key itself)."""
        exclude = check_exclude_history(self.trained.config["exclude_history"])
        return rank_items(self.trained.model, interaction, k, without_history, exclude_history=exclude)


@torch.no_grad()
def rank_items(
    model, interaction, k: int, without_history: bool = False, exclude_history: bool = False
) -> torch.Tensor:
    """Top-``k`` internal item ids ``[B, k]`` (CPU, ``-1`` pads short lists) for any sequential model.

    LLMGenRec decodes (``recommend_histories``) under the run's own autocast (:func:`decoding_precision`);
    RecBole baselines score the catalogue with
    ``full_sort_predict`` and take the top-k with the padding item 0 excluded, exactly as RecBole's
    full-sort evaluation does (and, with ``exclude_history``, the sample's history items too, as the
    trainer's evaluation; LLMGenRec reads its own ``exclude_history`` from the run's config).
    """
    if is_generative(model):
        histories = histories_of(interaction, model.ITEM_SEQ, model.ITEM_SEQ_LEN)
        with decoding_precision(model):
            if without_history:
                ranked = model.recommend_histories(histories, k, without_history=True)
            else:
                ranked = model.recommend_histories(histories, k)
        return ranked.cpu().long()
    if without_history:
        raise ValueError(
            f"{type(model).__name__} has no history-free input: recommendations without the history are only "
            "defined for generative models (LLMGenRec), whose prompt can drop the history section."
        )
    scores = model.full_sort_predict(interaction).float().view(len(interaction[model.ITEM_SEQ]), -1).clone()
    scores[:, 0] = float("-inf")
    if exclude_history:
        scores = mask_history_scores(scores, interaction[model.ITEM_SEQ])
    k_eff = min(k, scores.shape[1] - 1)
    top = torch.topk(
        scores, k_eff, dim=1
    )  # a masked item never fills a short list: -1 pads it, as LLMGenRec's
    ranked = top.indices.cpu().masked_fill(torch.isneginf(top.values).cpu(), -1)
    if k_eff < k:
        ranked = torch.cat([ranked, torch.full((ranked.shape[0], k - k_eff), -1, dtype=ranked.dtype)], dim=1)
    return ranked


def select_rows(n_rows: int, max_rows: int | None, seed: int) -> np.ndarray:
    """A seeded, order-preserving subset of ``max_rows`` samples (all when ``None``); CPU runs need it."""
    if max_rows is None or max_rows >= n_rows:
        return np.arange(n_rows)
    if max_rows <= 0:
        raise ValueError(f"--max-users must be positive, got {max_rows}: omit it to use every test sample.")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_rows, size=max_rows, replace=False))


def iter_batches(
    dataset, rows: np.ndarray, batch_size: int, device, desc: str
) -> Iterator[tuple[np.ndarray, Any]]:
    """Yield ``(row_indices, Interaction on device)`` over ``rows`` of ``dataset.inter_feat``, with a progress bar."""
    from tqdm.auto import tqdm

    batch_size = max(1, int(batch_size))
    starts = range(0, len(rows), batch_size)
    for start in tqdm(starts, desc=desc, total=len(starts), ncols=100, leave=False):
        idx = rows[start : start + batch_size]
        yield idx, dataset.inter_feat[torch.from_numpy(idx)].to(device)


def batch_size_for(model, config) -> int:
    """Users decoded together for the LLM (``decode_batch_size``), RecBole's ``eval_batch_size`` otherwise."""
    if is_generative(model):
        return int(config["decode_batch_size"] or 8)
    return int(config["eval_batch_size"] or 256)


def split_target_counts(dataset, split: str = "train") -> torch.Tensor:
    """How often each internal item id is a target in the *whole* prepared ``split`` file.

    Read from ``<name>.<split>.inter`` rather than the loaded split because ``train_sample_num`` may
    have sub-sampled it (LLMGenRec trains on 1024 samples by default), and popularity groups and IG
    statistics must be the same for every model of a dataset. Falls back to the loaded split when the
    file is missing.
    """
    config = dataset.config
    iid = dataset.iid_field
    path = Path(config["data_path"]) / f"{config['dataset']}.{split}.inter"
    n_items = dataset.item_num
    if not path.is_file():
        print(
            f"[analysis] {path} not found: popularity from the loaded {split} split instead.", file=sys.stderr
        )
        return torch.bincount(dataset.inter_feat[iid].cpu(), minlength=n_items)[:n_items].float()
    column = f"{iid}:token"
    frame = pd.read_csv(
        path, sep="\t", usecols=[column], dtype=str, keep_default_na=False, quoting=csv.QUOTE_NONE
    )
    token2id = dataset.field2token_id[iid]
    ids = [token2id.get(tok, -1) for tok in frame[column].tolist()]
    ids = torch.tensor([i for i in ids if i > 0], dtype=torch.long)
    return torch.bincount(ids, minlength=n_items)[:n_items].float()


def read_run_info(path: str | Path) -> dict[str, Any]:
    """The results JSON of a run (or a run folder's ``run.json``): used for labels, never for weights."""
    info, _ = find_run(path)
    if Path(path).is_dir():
        info.setdefault("run", Path(path).name)
    return info


def load_runs(paths: Sequence[str | Path], overrides: dict[str, Any] | None = None) -> Iterator[Run]:
    """Reload each finished run (one at a time, to keep one model in memory) with a unique label."""
    infos = [read_run_info(p) for p in paths]
    labels = labels_for(infos)
    for path, info, label in zip(paths, infos, labels, strict=True):
        trained = load_trained(path, config_dict=dict(overrides or {}))
        yield Run(label, info, trained)


def default_output(trained) -> Path:
    """``<results_dir>/<dataset>/analysis`` (next to the results JSONs, which are not searched recursively)."""
    return Path(trained.config["results_dir"] or "results") / trained.config["dataset"] / "analysis"


def analyse_runs(
    paths: Runs,
    overrides: Overrides,
    output: Folder,
    k: Count,
    max_users: Count,
    analyse: Callable[[Run, int, Count, int], Any],
) -> tuple[list[Any], Path]:
    """``analyse(run, k, max_users, seed)`` for every run, one run in memory at a time; returns the results
    and the (created) output folder: ``output``, else the first run's :func:`default_output`.

    ``k`` defaults to each run's largest ``topk``; ``seed`` is the run's own, so analyses sample alike.
    """
    results: list[Any] = []
    out = Path(output) if output else None
    for run in load_runs(paths, overrides):
        config = run.trained.config
        results.append(analyse(run, k or max(config["topk"]), max_users, int(config["seed"])))
        out = out or default_output(run.trained)
        del run  # free this model before the next one is loaded
    if out is None:
        raise ValueError("no run to analyse: pass at least one results JSON or run folder.")
    out.mkdir(parents=True, exist_ok=True)
    return results, out


__all__ = [
    "Run",
    "analyse_runs",
    "batch_size_for",
    "decoding_precision",
    "default_output",
    "evaluate_ranked",
    "is_generative",
    "iter_batches",
    "load_runs",
    "model_device",
    "rank_items",
    "read_run_info",
    "select_rows",
    "split_target_counts",
]
