"""Recommend with a trained run: titles in, ranked titles and item ids out, no retraining.

    python -m recbole_llm.recommend results/ml-100k/LLMGenRec-sft-d3-....json \
        --history "Toy Story (1995)" "Heat (1995)" --k 10

From Python::

    from recbole_llm.recommend import Recommender
    rec = Recommender.load("saved/LLMGenRec-ml-100k-.../")
    rec.recommend(["Toy Story (1995)", "Heat (1995)"], k=10)
"""

from __future__ import annotations

import argparse
import difflib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from recbole_llm.model import is_generative
from recbole_llm.quick_start import Trained, load_trained
from recbole_llm.trainer.precision import decoding_precision
from recbole_llm.utils.errors import UserError, run_cli


class Recommender:
    """A reloaded run that maps titles to items and back."""

    def __init__(self, trained: Trained):
        self.trained = trained
        self.model = trained.model
        dataset = trained.train_data.dataset
        self.titles = dataset.item_titles(trained.config["title_field"] or "title")
        self.item_tokens = dataset.field2id_token[dataset.iid_field]
        self._by_title: dict[str, int] = {}
        for item in range(1, len(self.titles)):
            self._by_title.setdefault(self.titles[item], item)  # duplicate titles: the lowest item id

    @classmethod
    def load(cls, path: str | Path) -> Recommender:
        return cls(load_trained(path))

    def list_length(self) -> int:
        """The longest list this run gives: one item per beam (generative), else every item."""
        decoding = getattr(self.model, "decoding", None)
        if is_generative(self.model) and decoding is not None:
            return int(decoding.num_beams)
        return len(self.titles) - 1

    def item_of(self, title: str) -> int:
        """Internal item id of a title; a clear error with close matches when the title is unknown."""
        if title in self._by_title:
            return self._by_title[title]
        close = difflib.get_close_matches(title, self._by_title.keys(), n=3)
        hint = f" Did you mean: {', '.join(repr(c) for c in close)}?" if close else ""
        raise KeyError(f"Unknown title {title!r}: titles must match the dataset's .item file exactly.{hint}")

    def recommend(self, history: Sequence[str], k: int = 10) -> list[dict[str, Any]]:
        """Top-``k`` items for a history given as titles (oldest first)."""
        if not history:
            raise ValueError("The history is empty: give at least one title the user interacted with.")
        check_k(k, self.list_length())
        items = [self.item_of(t) for t in history]
        if is_generative(self.model):
            with decoding_precision(self.model):  # the run's own autocast: the same lists as its test
                ranked = self.model.recommend_histories([items], k)[0].tolist()
        else:
            ranked = _rank_with_scores(self.model, self.trained, items, k)
        return [
            {"rank": r + 1, "item_id": str(self.item_tokens[i]), "title": self.titles[i]}
            for r, i in enumerate(ranked)
            if i > 0
        ]


def check_k(k: int, longest: int) -> None:
    """``--k`` between 1 and the run's list length: 0 or -1 printed nothing or 9 items, 50 printed 10."""
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= longest:
        raise UserError(f"--k={k!r} must be between 1 and {longest} (this run's list length).")


def _rank_with_scores(model, trained: Trained, items: list[int], k: int) -> list[int]:
    """Baselines (SASRec, ...): RecBole's full-sort scores for one history."""
    import torch
    from recbole.data.interaction import Interaction

    from recbole_llm.model.decoding.items import mask_history_scores  # deferred: torch-free CLI start

    config = trained.config
    width = config["MAX_ITEM_LIST_LENGTH"]
    items = items[-width:]
    seq = torch.zeros((1, width), dtype=torch.long)
    seq[0, : len(items)] = torch.tensor(items)
    inter = Interaction(
        {
            model.ITEM_SEQ: seq,
            model.ITEM_SEQ_LEN: torch.tensor([len(items)]),
            config["USER_ID_FIELD"]: torch.zeros(1, dtype=torch.long),
        }
    ).to(config["device"])
    with torch.no_grad():
        scores = model.full_sort_predict(inter).view(1, -1)
    scores[:, 0] = -float("inf")
    if config["exclude_history"]:
        scores = mask_history_scores(scores, seq.to(scores.device))
    return torch.topk(scores, k, dim=1).indices[0].tolist()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run", help="a results JSON or a run folder under saved/")
    parser.add_argument("--history", nargs="+", required=True, help="titles, oldest first")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    # deferred: the config module imports RecBole, which --help does not need
    from recbole_llm.config import command_line_ignored

    with command_line_ignored():  # the run's path and --history are no run settings
        recs = Recommender.load(args.run).recommend(args.history, args.k)
    if args.json:
        print(json.dumps(recs, indent=2, ensure_ascii=False))
        return
    for rec in recs:
        print(f"{rec['rank']:>3}  {rec['item_id']:>10}  {rec['title']}")


if __name__ == "__main__":
    run_cli(main)
