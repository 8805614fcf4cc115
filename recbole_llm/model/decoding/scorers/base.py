"""The protocol every beam scorer follows: the step it sees (:class:`BeamStep`) and its hooks (:class:`BeamScorer`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar

import torch

from recbole_llm.model.trie import TitleTrie

EnsembleSource = torch.Tensor | Callable[[torch.Tensor], torch.Tensor]
"""Per-user item probabilities indexed by item id: ``[U, n_ids]``, or a callable from a LongTensor of prompt
indices to ``[len, n_ids]``."""

# name -> class of every scorer a config can switch on (filled by ``BeamScorer.__init_subclass__``).
SCORERS: dict[str, type[BeamScorer]] = {}


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
    """One change to beam scores. Override the hooks the change touches; the defaults change nothing.

    The papers' scorers are built from :class:`DecodingSettings` (:func:`build_scorers`). A new scorer that a
    config switches on sets ``name``, lists its YAML ``keys`` and returns itself from :meth:`from_config`
    (or ``None`` when its keys leave it off); defining the class registers it, and :func:`configured_scorers`
    builds every registered one a config asks for, after the papers' scorers.
    """

    name: ClassVar[str | None] = None
    keys: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("name"):
            known = SCORERS.get(cls.name)
            if known is not None and known.__qualname__ != cls.__qualname__:
                raise ValueError(
                    f"scorer name {cls.name!r} is already taken by {known.__module__}.{known.__qualname__}"
                )
            SCORERS[cls.name] = cls

    @classmethod
    def from_config(cls, config: Any) -> BeamScorer | None:
        """This scorer as ``config`` sets it (validated here, once), or ``None`` when it is off."""
        return None

    def recorded(self) -> dict[str, Any]:
        """What a results JSON's ``hyper_parameters`` records of this scorer (its resolved keys)."""
        return {}

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
