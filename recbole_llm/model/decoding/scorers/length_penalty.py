"""Length normalisation of finished titles, as transformers' beam search (D3 §3.2: none)."""

from __future__ import annotations

import torch

from recbole_llm.model.decoding.scorers.base import BeamScorer


class LengthPenalty(BeamScorer):
    """transformers' beam-search normalisation ``sum / len ** lp`` (lp > 0 favours longer titles)."""

    def __init__(self, penalty: float):
        self.penalty = float(penalty)

    def finished_scores(self, scores: torch.Tensor, length: int) -> torch.Tensor:
        return scores / float(length) ** self.penalty

    def attainable_scores(self, scores: torch.Tensor, length: int, longest: int | None) -> torch.Tensor:
        # A longer title divides by more: with lp > 0 the exact bound takes the longest possible length.
        if longest is not None and self.penalty > 0.0:
            length = longest
        return scores / float(length) ** self.penalty
