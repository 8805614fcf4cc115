"""Decoding: trie-constrained beam search whose beam scores are changed by small composable scorers.

``settings`` (:class:`DecodingSettings`: every decoding key, read and validated once), ``search`` (the beam
search over the title trie), ``scorers`` (one object per change to beam scores: IGD's calibration, D3's
ensemble, the length penalty; composed in a list as transformers' ``LogitsProcessor``), ``kv_cache`` (each
user's prompt KV shared by its beams) and ``items`` (trie leaves to ranked item ids).
"""

from recbole_llm.model.decoding.items import fill_by_popularity, leaves_to_items
from recbole_llm.model.decoding.scorers import (
    BeamScorer,
    BeamStep,
    D3Ensemble,
    EnsembleSource,
    IGCalibration,
    LengthPenalty,
    build_scorers,
    calibrated_step_scores,
    compose_scorers,
    configured_scorers,
    ensemble_step_scores,
    scorer_keys,
)
from recbole_llm.model.decoding.search import constrained_beam_search
from recbole_llm.model.decoding.settings import DECODING_KEYS, DecodingSettings

__all__ = [
    "DECODING_KEYS",
    "BeamScorer",
    "BeamStep",
    "D3Ensemble",
    "DecodingSettings",
    "EnsembleSource",
    "IGCalibration",
    "LengthPenalty",
    "build_scorers",
    "calibrated_step_scores",
    "compose_scorers",
    "configured_scorers",
    "constrained_beam_search",
    "ensemble_step_scores",
    "fill_by_popularity",
    "leaves_to_items",
    "scorer_keys",
]
