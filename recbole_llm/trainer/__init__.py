"""Trainers: RecBole's trainer with safe checkpoints for baselines, an accelerate trainer for LLMs."""

from recbole_llm.trainer.llm_trainer import LLMTrainer
from recbole_llm.trainer.safe_trainer import SafeTrainer, safe_torch_load

__all__ = ["LLMTrainer", "SafeTrainer", "safe_torch_load"]
