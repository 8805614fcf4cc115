"""Each change to beam scores is one small object, composed in a list (as transformers' ``LogitsProcessor``).

At every step the search (:mod:`.search`) gathers, for each running beam, the log-probabilities ``log p`` of
the tokens the title trie allows next, and passes them through :meth:`BeamScorer.token_scores` of every
scorer in list order; a beam's score is the sum of its token scores. A finished title's score then goes
through every :meth:`BeamScorer.finished_scores` (length normalisation), and
:meth:`BeamScorer.attainable_scores` bounds what a running beam can still reach (early stopping).

The papers' scorers, in the order :func:`build_scorers` composes them:

* :class:`D3Ensemble` (D3 §3.3): ``gs · log p_LLM + (1 − gs) · log m``, ``m`` the traditional model's (SASRec's)
  probability mass under the token's subtree, normalised over the allowed tokens;
* :class:`IGCalibration` (IGD §4.3.2 Eq. (9)–(10)): ``(1 − α·IG~) · score``, ``IG~`` the token's information
  gain min-max normalised among the allowed tokens; applied last, as the IGD reference's logits processor
  multiplies the already processed scores;
* :class:`LengthPenalty`: transformers' ``sum / len ** lp``, ``len`` the generated length including EOS.
  D3 §3.2 decodes without length normalisation (``lp = 0``: no scorer at all).

Without any scorer a title's score is its log-probability. A scorer that leaves a hook alone inherits the
base class's identity, so composing more scorers costs only what they compute.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import torch

from recbole_llm.model.decoding.settings import DecodingSettings
from recbole_llm.model.trie import TitleTrie

EnsembleSource = torch.Tensor | Callable[[torch.Tensor], torch.Tensor]
"""Per-user item probabilities indexed by item id: ``[U, n_ids]``, or a callable from a LongTensor of prompt
indices to ``[len, n_ids]``."""


# ---------------------------------------------------------------------------------------------- pure maths
def calibrated_step_scores(logp: torch.Tensor, ig_norm: torch.Tensor, alpha: float) -> torch.Tensor:
    """IGD §4.3.2 Eq. (9)–(10): ``(1 − α·IG~) · log p`` (α = 0 leaves the log-probs unchanged)."""
    if alpha == 0.0:
        return logp
    return (1.0 - alpha * ig_norm.to(logp.dtype)) * logp


def ensemble_step_scores(logp: torch.Tensor, marginal: torch.Tensor, gs: float) -> torch.Tensor:
    """D3 §3.3: ``gs · log p_LLM + (1 − gs) · log m`` (``m`` = normalised prefix marginal, > 0)."""
    if gs == 1.0:
        return logp
    return gs * logp + (1.0 - gs) * torch.log(marginal).to(logp.dtype)


# ---------------------------------------------------------------------------------------------- protocol
@dataclass
class BeamStep:
    """One decoding step as scorers see it: one row per running beam, every tensor on the decoding device.

    ``edges [rows, width]`` are the trie edges allowed after each beam's node ``nodes [rows]`` (``valid``
    marks the real ones; padding holds edge 0), ``tokens`` their token ids; ``step`` is the number of title
    tokens generated before this one (0: the first token).
    """

    trie: TitleTrie
    step: int
    nodes: torch.Tensor
    edges: torch.Tensor
    valid: torch.Tensor
    tokens: torch.Tensor
    slot_user: torch.Tensor  # user (row of the batch) of each group of beams, in cache-row order
    beams: int  # running beams per user at this step (1 at the first step)

    @cached_property
    def row_user(self) -> torch.Tensor:
        """``[rows]`` each beam's user within the batch: the row of what :meth:`BeamScorer.for_batch` prepared."""
        return self.slot_user.repeat_interleave(self.beams)


class BeamScorer:
    """One change to beam scores. Override the hooks the change touches; the defaults change nothing."""

    def for_batch(self, users: torch.Tensor, trie: TitleTrie) -> BeamScorer:
        """This scorer for one batch of users (``users``: their prompt indices; ``trie`` on the decoding
        device), e.g. with its per-user tensors gathered once for the batch."""
        return self

    def token_scores(self, scores: torch.Tensor, step: BeamStep) -> torch.Tensor:
        """Scores ``[rows, width]`` of the allowed tokens, given the previous scorers' (first: ``log p``)."""
        return scores

    def finished_scores(self, scores: torch.Tensor, length: int) -> torch.Tensor:
        """The final score of titles finished after ``length`` tokens (EOS included), from their summed scores."""
        return scores

    def attainable_scores(self, scores: torch.Tensor, length: int, longest: int | None) -> torch.Tensor:
        """The best final score a running beam with summed ``scores`` after ``length`` tokens can still reach,
        as transformers' early-stopping heuristic bounds it (``longest``: the maximal length when
        ``early_stopping="never"``, else ``None``)."""
        return self.finished_scores(scores, length)


# ---------------------------------------------------------------------------------------------- the papers'
class IGCalibration(BeamScorer):
    """IGD §4.3.2 Eq. (9)–(10): weight each token's score by ``1 − α·IG~``, so that tokens which decide
    between titles (high IG) count more than tokens every continuation shares."""

    def __init__(self, alpha: float):
        self.alpha = float(alpha)

    def token_scores(self, scores: torch.Tensor, step: BeamStep) -> torch.Tensor:
        return calibrated_step_scores(scores, step.trie.edge_ig_norm[step.edges], self.alpha)


def _check_ensemble_weight(weight: float) -> None:
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"ensemble_weight (gs) must be in [0, 1], got {weight}.")


class D3Ensemble(BeamScorer):
    """D3 §3.3: mix the LLM's token log-probability with a traditional model's next-item probabilities,
    summed over the items under each allowed token's subtree (the prefix marginal), with weight ``gs``."""

    def __init__(self, probs: EnsembleSource, weight: float):
        _check_ensemble_weight(weight)
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


# ---------------------------------------------------------------------------------------------- composing
def compose_scorers(
    length_penalty: float = 0.0,
    ig_alpha: float = 0.0,
    ensemble: EnsembleSource | None = None,
    ensemble_weight: float = 1.0,
) -> list[BeamScorer]:
    """The papers' scorers for these knobs, in the order they apply; knobs at their neutral value add none."""
    _check_ensemble_weight(ensemble_weight)
    scorers: list[BeamScorer] = []
    if ensemble is not None and ensemble_weight < 1.0:
        scorers.append(D3Ensemble(ensemble, ensemble_weight))
    if ig_alpha != 0.0:
        scorers.append(IGCalibration(ig_alpha))
    if length_penalty != 0.0:
        scorers.append(LengthPenalty(length_penalty))
    return scorers


def build_scorers(settings: DecodingSettings, ensemble: EnsembleSource | None = None) -> list[BeamScorer]:
    """The scorers of a model's decoding ``settings``; ``ensemble``: the traditional model's item
    probabilities for the users being decoded, needed when ``settings.uses_ensemble`` (D3's gs < 1)."""
    if settings.uses_ensemble and ensemble is None:
        raise ValueError(
            "ensemble_weight < 1: pass the traditional model's item probabilities (ensemble=...)."
        )
    return compose_scorers(
        settings.length_penalty,
        settings.ig_alpha,
        ensemble if settings.uses_ensemble else None,
        settings.ensemble_weight,
    )
