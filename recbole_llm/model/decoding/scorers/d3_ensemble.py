"""D3's ensemble with a traditional recommender (D3 §3.3)."""

from __future__ import annotations

import copy

import torch

from recbole_llm.model.decoding.scorers.base import BeamScorer, BeamStep, EnsembleSource
from recbole_llm.model.trie import TitleTrie


def ensemble_step_scores(logp: torch.Tensor, marginal: torch.Tensor, gs: float) -> torch.Tensor:
    """D3 §3.3: ``gs · log p_LLM + (1 − gs) · log m`` (``m`` = normalised prefix marginal, > 0)."""
    if gs == 1.0:
        return logp
    return gs * logp + (1.0 - gs) * torch.log(marginal).to(logp.dtype)


def check_ensemble_weight(weight: float) -> None:
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"ensemble_weight (gs) must be in [0, 1], got {weight}.")


class D3Ensemble(BeamScorer):
    """D3 §3.3: mix the LLM's token log-probability with a traditional model's next-item probabilities,
    summed over the items under each allowed token's subtree (the prefix marginal), with weight ``gs``."""

    def __init__(self, probs: EnsembleSource, weight: float):
        check_ensemble_weight(weight)
        self.probs, self.weight = probs, float(weight)
        self.cumsum: torch.Tensor | None = None

    def for_batch(self, users: torch.Tensor, trie: TitleTrie) -> D3Ensemble:
        probs = self.probs(users) if callable(self.probs) else self.probs[users]
        bound = copy.copy(self)
        bound.cumsum = trie.item_score_cumsum(probs.to(trie.device))
        return bound

    def token_scores(self, scores: torch.Tensor, step: BeamStep) -> torch.Tensor:
        if self.cumsum is None:
            raise RuntimeError("D3Ensemble scores one batch of users: call for_batch(users, trie) first.")
        marginal = step.trie.edge_marginal(self.cumsum, step.row_user, step.nodes, step.edges)
        return ensemble_step_scores(scores, marginal, self.weight)
