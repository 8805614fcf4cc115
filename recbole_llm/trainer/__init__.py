"""Trainers: RecBole's trainer with safe checkpoints for baselines, an accelerate trainer for LLMs.

``llm_trainer`` is the LLM loop; ``resume`` its resumable state and stop signals, ``precision`` its
numeric settings, ``evaluation`` the scoring of ranked lists, ``ig_loss`` the IGD §4.2.1 loss log.
"""

from __future__ import annotations

from unittest import mock

from recbole_llm.model import GENERATIVE_MODELS
from recbole_llm.trainer.llm_trainer import LLMTrainer, NoTensorBoard
from recbole_llm.trainer.resume import TrainingStopped
from recbole_llm.trainer.safe_trainer import SafeTrainer

__all__ = ["LLMTrainer", "SafeTrainer", "TrainingStopped", "evaluation_trainer", "get_trainer"]


def get_trainer(model_name: str) -> type:
    """LLM models get the accelerate trainer; RecBole's sequential models RecBole's trainer, safe checkpoints."""
    return LLMTrainer if model_name in GENERATIVE_MODELS else SafeTrainer


def evaluation_trainer(config, model):
    """The model's trainer for scoring a finished run only: no ``log_tensorboard/`` folder is created.

    RecBole's ``Trainer.__init__`` always opens a TensorBoard writer in the working folder; re-decoding a
    run (``--evaluate``) trains nothing, so it gets a writer that writes nothing.
    """
    with mock.patch("recbole.trainer.trainer.get_tensorboard", lambda logger: NoTensorBoard()):
        return get_trainer(config["model"])(config, model)
