"""Positional decay alone: CFT §3.2.2 Eq. (5) on the normal loss (CFT's "w/o CL" ablation, λ = 0).

Key: ``beta`` (β ∈ [0, 1], weight of the last token) or ``beta_prime`` (β = 1 − 1/β'); default β = 0.25,
the value the CFT reference code hard-codes.
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor

from recbole_llm.model.objectives.base import BetaObjective
from recbole_llm.model.objectives.losses import NORMAL, position_decay_weights


class PosObjective(BetaObjective):
    """Linear decay ``w_t = 1 − (1−β)(t−1)/(|y|−1)`` over each target, normalised by ``Σ w``."""

    name = "pos"
    defaults: ClassVar[dict[str, Any]] = {"beta": 0.25}

    def token_weights(
        self, token_pos: Tensor, seq_len: Tensor, token_ig: Tensor | None = None
    ) -> dict[str, Tensor]:
        return {NORMAL: position_decay_weights(token_pos, seq_len, self.beta)}
