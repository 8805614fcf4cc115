"""The models: this plugin's, then RecBole's sequential models, looked up by name.

As in RecBole-GNN, a model is a RecBole ``SequentialRecommender`` subclass in a module of this package;
``PLUGIN_MODELS`` maps its name to that module (imported only when the model is asked for, since an LLM
model pulls in transformers). Only sequential models run here: every model of the project reads the same
split of (user, history, target) samples.
"""

from __future__ import annotations

import difflib
import importlib
from pathlib import Path

import recbole

from recbole_llm.utils.errors import UserError

PLUGIN_MODELS: dict[str, str] = {
    "LLMGenRec": "recbole_llm.model.llm_gen_rec",
    "SASRecLLM": "recbole_llm.model.llm_initialised",  # CFT's SASRec* (§4.1.3)
    "GRU4RecLLM": "recbole_llm.model.llm_initialised",  # CFT's GRU4Rec*
}
# The plugin's generative models: trained by LLMTrainer (accelerate, several processes). The others, such as
# SASRecLLM, are RecBole models trained by RecBole's trainer like SASRec.
GENERATIVE_MODELS = frozenset({"LLMGenRec"})


def is_generative(model: object) -> bool:
    """LLMGenRec (and any model that writes item titles) ranks by decoding, not by scoring every item."""
    return hasattr(model, "recommend_histories")


def _classes(module) -> list[str]:
    return [name for name in dir(module) if name[:1].isupper() and isinstance(getattr(module, name), type)]


def _recbole(kind: str):
    # RecBole's model zoo takes seconds to import; code that only needs DECODING_KEYS (reporting) skips it.
    return importlib.import_module(f"recbole.model.{kind}")


def known_models() -> list[str]:
    """Every model name ``--model`` accepts."""
    recbole_sequential = _recbole("sequential_recommender")
    return sorted(PLUGIN_MODELS) + sorted(_classes(recbole_sequential))


def get_model(model_name: str) -> type:
    """The model class named ``model_name``: the plugin's first, then RecBole's sequential models."""
    if model_name in PLUGIN_MODELS:
        return getattr(importlib.import_module(PLUGIN_MODELS[model_name]), model_name)
    recbole_sequential = _recbole("sequential_recommender")
    if model_name in _classes(recbole_sequential):
        return getattr(recbole_sequential, model_name)
    # RecBole's other models, by their YAML files: importing their modules needs lightgbm, xgboost, ...
    recbole_models = {
        file.stem for file in (Path(recbole.__file__).parent / "properties" / "model").glob("*.yaml")
    }
    if model_name in recbole_models:
        raise UserError(
            f"{model_name} is not a sequential model: recbole-llm compares sequential recommenders on one "
            "shared split of (user, history, target) samples. Use SASRec, GRU4Rec, Caser or another "
            "sequential model."
        )
    by_lower = {name.lower(): name for name in known_models()}
    close = [by_lower[n] for n in difflib.get_close_matches(model_name.lower(), by_lower, n=3, cutoff=0.6)]
    hint = f" Did you mean {' or '.join(close)}?" if close else ""
    raise UserError(
        f"Unknown model {model_name!r}.{hint} Use recbole-llm's LLMGenRec or a RecBole sequential model "
        f"such as SASRec, GRU4Rec or Caser (names are case-sensitive). Known: {', '.join(known_models())}."
    )
