"""IGD: information-gain-based decisiveness, for training and decoding.

IGD §4.3.1 Eq. (7)-(8): tokens whose information gain is zero (the trie node's parent has a single child,
so the token is decided by the ones before) weigh ``β``, the others 1, normalised by the total weight.
IGD §4.3.2: decoding rescales beam scores by ``1 − α·IG~``; the reference setting is α = 0.2. The IGD
README says β = 0.1 "works best in general": the default.
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor

from recbole_llm.model.objectives.base import BetaObjective
from recbole_llm.model.objectives.losses import NORMAL, ig_weights


class IGDObjective(BetaObjective):
    """``w_t = β`` for zero-information-gain tokens, 1 otherwise (``token_ig`` from the title trie)."""

    name = "igd"
    defaults: ClassVar[dict[str, Any]] = {"beta": 0.1}
    decoding_defaults: ClassVar[dict[str, Any]] = {"ig_alpha": 0.2}  # IGD §4.3.2

    def token_weights(
        self, token_pos: Tensor, seq_len: Tensor, token_ig: Tensor | None = None
    ) -> dict[str, Tensor]:
        if token_ig is None:
            raise ValueError(
                "objective 'igd' needs token_ig [T]: the information gain of every target token, "
                "precomputed per item from the title trie (see item_token_weights)."
            )
        return {NORMAL: ig_weights(token_ig, self.beta)}
