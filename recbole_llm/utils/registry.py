"""Model and trainer lookup: the plugin first, then RecBole (RecBole's own lookup only sees recbole)."""

from __future__ import annotations

import importlib

from recbole.utils import ModelType
from recbole.utils import get_model as recbole_get_model

PLUGIN_MODELS = {"LLMGenRec": "recbole_llm.model.llm_gen_rec"}


def get_model(model_name: str) -> type:
    """Return the model class named ``model_name`` from recbole-llm or, failing that, from RecBole."""
    if model_name in PLUGIN_MODELS:
        return getattr(importlib.import_module(PLUGIN_MODELS[model_name]), model_name)
    try:
        return recbole_get_model(model_name)
    except (ValueError, AttributeError):
        known = ", ".join(sorted(PLUGIN_MODELS))
        raise ValueError(
            f"Unknown model {model_name!r}: use one of recbole-llm's models ({known}) or any RecBole model "
            "name such as SASRec, GRU4Rec or Caser (names are case-sensitive)."
        ) from None


def get_trainer(model_type: ModelType, model_name: str) -> type:
    """LLM models get the accelerate-based trainer; RecBole models get RecBole's trainer with safe checkpoints."""
    from recbole_llm import trainer

    if model_name in PLUGIN_MODELS:
        return trainer.LLMTrainer
    if model_type == ModelType.SEQUENTIAL:
        return trainer.SafeTrainer
    raise ValueError(
        f"{model_name} is not a sequential model: recbole-llm compares sequential recommenders on one shared "
        "split of (user, history, target) samples. Use SASRec, GRU4Rec, Caser or another sequential model."
    )
