"""Token-level training objectives (docs/design.md §3): one class per objective, one file each.

Every objective trains on the same per-target-token logits and differs only in how it weights and combines
token cross-entropies. The model returns each term's *numerator* ``Σ w·ℓ``; the weights depend only on the
targets, so the trainer knows each term's denominator ``Σ w`` over the whole effective batch (all
micro-batches and processes) before the forward pass and divides by it with ``weighted_total`` -- the
gradient does not depend on the micro-batch size. Validation uses the normal term only, as the references.

Importing this package imports every module in it, so a new objective is one new file here whose class
sets ``name``.
"""

from __future__ import annotations

import importlib
import pkgutil

from recbole_llm.model.objectives.base import (
    OBJECTIVES,
    BetaObjective,
    CausalObjective,
    Counterfactual,
    Objective,
    build_objective,
    loss_weight_keys,
    objective_keys,
)
from recbole_llm.model.objectives.cetrec import CETRecObjective
from recbole_llm.model.objectives.cft import CFTObjective
from recbole_llm.model.objectives.igd import IGDObjective
from recbole_llm.model.objectives.losses import (
    CAUSAL,
    NORMAL,
    beta_from_beta_prime,
    causal_loss_terms,
    gather_token_weights,
    ig_weights,
    item_token_weights,
    position_decay_weights,
    token_cross_entropy,
    weighted_loss_sum,
    weighted_total,
)
from recbole_llm.model.objectives.pos import PosObjective
from recbole_llm.model.objectives.sft import SFTObjective

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")

__all__ = [
    "CAUSAL",
    "NORMAL",
    "OBJECTIVES",
    "BetaObjective",
    "CETRecObjective",
    "CFTObjective",
    "CausalObjective",
    "Counterfactual",
    "IGDObjective",
    "Objective",
    "PosObjective",
    "SFTObjective",
    "beta_from_beta_prime",
    "build_objective",
    "loss_weight_keys",
    "objective_keys",
    "causal_loss_terms",
    "gather_token_weights",
    "ig_weights",
    "item_token_weights",
    "position_decay_weights",
    "token_cross_entropy",
    "weighted_loss_sum",
    "weighted_total",
]
