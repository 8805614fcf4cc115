"""IGD's decoding calibration (IGD §4.3.2 Eq. (9)–(10))."""

from __future__ import annotations

import torch

from recbole_llm.model.decoding.scorers.base import BeamScorer, BeamStep


def calibrated_step_scores(logp: torch.Tensor, ig_norm: torch.Tensor, alpha: float) -> torch.Tensor:
    """IGD §4.3.2 Eq. (9)–(10): ``(1 − α·IG~) · log p`` (α = 0 leaves the log-probs unchanged)."""
    if alpha == 0.0:
        return logp
    return (1.0 - alpha * ig_norm.to(logp.dtype)) * logp


class IGCalibration(BeamScorer):
    """IGD §4.3.2 Eq. (9)–(10): weight each token's score by ``1 − α·IG~``, so that tokens which decide
    between titles (high IG) count more than tokens every continuation shares."""

    def __init__(self, alpha: float):
        self.alpha = float(alpha)

    def token_scores(self, scores: torch.Tensor, step: BeamStep) -> torch.Tensor:
        return calibrated_step_scores(scores, step.trie.edge_ig_norm[step.edges], self.alpha)
