"""CETRec: counterfactual enhanced temporal framework for LLM-based recommendation.

CETRec §4.2.1 Eq. (6): every token of the history item at distance ``k`` from the most recent one gets
the temporal embedding ``p_k`` (``recbole_llm/model/temporal.py``; RoPE, the paper's best variant, by
default). CETRec §4.3: the counterfactual world erases the order, every history item at one temporal
index (``cetrec_cf_index``: ``earliest`` by default, ``latest`` or an int). CETRec §4.4 Eq. (8)-(10):
``L = L_TA + λ L_CT``. Eqs. (8)-(9) write plain sums; we use the token mean (weights 1) so the scale does
not depend on the batch size. The paper does not report its λ (grid {0.01, 0.1, 0.5, 1, 10}): default 0.1.

Eq. (8) sums over every target token, so a sample whose counterfactual input equals the factual one (a
one-item history: every index choice gives that item the index it already has) adds a constant with no
gradient. Under the token mean such samples would only shrink the effective λ, so they get causal weight
0 (``counterfactual_differs``): the mean runs over the tokens Eq. (8)'s gradient depends on. Without a
temporal embedding both passes are identical and L_CT is the constant log|V|: refused (``check_temporal``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from recbole_llm.model.objectives.base import CausalObjective, Counterfactual, read_lambda
from recbole_llm.model.prompt import PromptBatch, PromptBuilder
from recbole_llm.model.temporal import counterfactual_index
from recbole_llm.utils.config_access import config_get


class CETRecObjective(CausalObjective):
    """``L_TA + λ L_CT``, unweighted; counterfactual = the same tokens, every item at one time index."""

    name = "cetrec"
    defaults: ClassVar[dict[str, Any]] = {"lambda": 0.1, "cetrec_cf_index": "earliest"}
    temporal_embedding: ClassVar[str | None] = "rope"
    keys: ClassVar[tuple[str, ...]] = ("lambda", "cetrec_cf_index")

    def __init__(self, lam: float | None = None, cf_index: str | int | None = None) -> None:
        """``None`` takes the paper default (:attr:`defaults`)."""
        super().__init__(self.defaults["lambda"] if lam is None else lam)
        cf_index = self.defaults["cetrec_cf_index"] if cf_index is None else cf_index
        counterfactual_index(torch.zeros(1, 1, dtype=torch.long), 1, cf_index)  # a clear error if invalid
        self.cf_index = cf_index

    @classmethod
    def from_config(cls, config: Any) -> CETRecObjective:
        lam = read_lambda(config, cls.defaults["lambda"])
        mode = config_get(config, "cetrec_cf_index", cls.defaults["cetrec_cf_index"])
        if isinstance(mode, str) and mode.strip().lstrip("-").isdigit():
            mode = int(mode)
        if isinstance(mode, str):
            mode = mode.strip().lower()
        return cls(lam=lam, cf_index=mode)

    def hparams(self) -> dict[str, Any]:
        return {"objective": self.name, "lambda": self.lam, "cetrec_cf_index": self.cf_index}

    def check_temporal(self, kind: str) -> None:
        if kind == "none" and self.needs_counterfactual:
            raise ValueError(
                f"objective 'cetrec' with lambda={self.lam} and temporal_embedding=none: the counterfactual "
                "pass would equal the factual one, so L_CT is the constant log|V| with no gradient. Use "
                "temporal_embedding: rope (the paper's best) or sinpe, or lambda: 0 for CETRec without L_CT."
            )

    def counterfactual_differs(self, history_len: torch.Tensor) -> torch.Tensor:
        """One kept history item: its index is 0, which 'earliest', 'latest' and the int 0 all give it."""
        if isinstance(self.cf_index, int) and self.cf_index != 0:
            return torch.ones(history_len.shape, dtype=torch.bool, device=history_len.device)
        return history_len > 1

    def counterfactual_inputs(
        self, prompts: PromptBuilder, batch: PromptBatch, histories: list[list[int]], targets: list[int]
    ) -> Counterfactual:
        return Counterfactual(batch, counterfactual_index(batch.item_index, batch.history_len, self.cf_index))
