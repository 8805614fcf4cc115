"""SFT: plain cross-entropy over the target title tokens and EOS (BIGRec §3, D3 §3 training)."""

from __future__ import annotations

from recbole_llm.model.objectives.base import Objective


class SFTObjective(Objective):
    """Every target token weighs 1; no counterfactual pass. No config keys of its own."""

    name = "sft"
