"""CFT: counterfactual fine-tuning with position-decayed token weights.

CFT §3.2.1 Eq. (3)-(4): ``L = L_n + λ L_c``, where ``L_c`` is the cross-entropy of
``logits(with history) − logits(without history)``, both normalised by the total weight ``Ω``;
CFT §3.2.2 Eq. (5): the weights decay linearly along the title, ``w_t = 1 − (1−β)(t−1)/(|y|−1)``.
Keys: ``beta`` / ``beta_prime``, ``lambda``, ``cft_weight_normal_loss`` (also weight ``L_n``). Defaults
follow the CFT reference code, which hard-codes β = 0.25 and λ = 0.1 and weights both terms. Its
early-stopping (validation) loss is the plain, unweighted cross-entropy of the factual pass, so ours is
too (``validation_weights``): β and ``cft_weight_normal_loss`` do not change the validation loss.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from recbole_llm.model.objectives.base import (
    CausalObjective,
    Counterfactual,
    check_beta,
    read_beta,
    read_lambda,
)
from recbole_llm.model.objectives.losses import CAUSAL, NORMAL, position_decay_weights
from recbole_llm.model.prompt import PromptBatch, PromptBuilder
from recbole_llm.utils.config_access import config_get


class CFTObjective(CausalObjective):
    """Decay weights on ``L_c`` and (``cft_weight_normal_loss``) on ``L_n``; counterfactual = no history."""

    name = "cft"
    defaults: ClassVar[dict[str, Any]] = {"beta": 0.25, "lambda": 0.1, "cft_weight_normal_loss": True}
    # cft_counterfactual / cft_placeholder shape the counterfactual prompt (read by the prompt builder).
    keys: ClassVar[tuple[str, ...]] = (
        "beta",
        "beta_prime",
        "lambda",
        "cft_weight_normal_loss",
        "cft_counterfactual",
    )
    loss_weight_keys: ClassVar[tuple[str, ...]] = ()  # validation loss = plain CE (validation_weights)

    def __init__(
        self, beta: float | None = None, lam: float | None = None, weight_normal_loss: bool | None = None
    ) -> None:
        """``None`` takes the paper default (:attr:`defaults`)."""
        beta = self.defaults["beta"] if beta is None else beta
        check_beta(beta)
        super().__init__(self.defaults["lambda"] if lam is None else lam)
        self.beta = float(beta)
        if weight_normal_loss is None:
            weight_normal_loss = self.defaults["cft_weight_normal_loss"]
        self.weight_normal_loss = bool(weight_normal_loss)

    @classmethod
    def from_config(cls, config: Any) -> CFTObjective:
        beta = read_beta(config, cls.defaults["beta"])
        lam = read_lambda(config, cls.defaults["lambda"])
        weight_normal = config_get(config, "cft_weight_normal_loss", cls.defaults["cft_weight_normal_loss"])
        if not isinstance(weight_normal, bool):
            raise ValueError(f"cft_weight_normal_loss = {weight_normal!r} must be true or false.")
        return cls(beta=beta, lam=lam, weight_normal_loss=weight_normal)

    def hparams(self) -> dict[str, Any]:
        return {
            "objective": self.name,
            "beta": self.beta,
            "lambda": self.lam,
            "cft_weight_normal_loss": self.weight_normal_loss,
        }

    def token_weights(
        self, token_pos: Tensor, seq_len: Tensor, token_ig: Tensor | None = None
    ) -> dict[str, Tensor]:
        decay = position_decay_weights(token_pos, seq_len, self.beta)
        out = {NORMAL: decay if self.weight_normal_loss else torch.ones_like(decay)}
        if self.needs_counterfactual:
            out[CAUSAL] = decay
        return out

    def validation_weights(
        self, token_pos: Tensor, seq_len: Tensor, token_ig: Tensor | None = None
    ) -> dict[str, Tensor]:
        """Weights 1: the CFT reference stops early on plain cross-entropy, not on the decayed loss."""
        return {NORMAL: torch.ones(token_pos.shape, dtype=torch.float32, device=token_pos.device)}

    def counterfactual_inputs(
        self, prompts: PromptBuilder, batch: PromptBatch, histories: list[list[int]], targets: list[int]
    ) -> Counterfactual:
        """The prompt without the history (``cft_counterfactual``: placeholder or dropped), padded to its
        own, much shorter length."""
        return Counterfactual(prompts.build(histories, targets, counterfactual=True))
