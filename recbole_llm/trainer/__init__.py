"""Trainers: RecBole's trainer with safe checkpoints for baselines, an accelerate trainer for LLMs.

``llm_trainer`` is the LLM loop; ``resume`` its resumable state and stop signals, ``precision`` its
numeric settings, ``evaluation`` the scoring of ranked lists, ``ig_loss`` the IGD §4.2.1 loss log.
"""

from __future__ import annotations

from recbole_llm.model import PLUGIN_MODELS
from recbole_llm.trainer.llm_trainer import LLMTrainer
from recbole_llm.trainer.resume import TrainingStopped
from recbole_llm.trainer.safe_trainer import SafeTrainer

__all__ = ["LLMTrainer", "SafeTrainer", "TrainingStopped", "get_trainer"]


def get_trainer(model_name: str) -> type:
    """LLM models get the accelerate trainer; RecBole's sequential models RecBole's trainer, safe checkpoints."""
    return LLMTrainer if model_name in PLUGIN_MODELS else SafeTrainer
