"""Decoding: trie-constrained beam search whose beam scores are changed by small composable scorers.

``settings`` (:class:`DecodingSettings`: every decoding key, read and validated once), ``search`` (the beam
search over the title trie), ``scorers`` (one object per change to beam scores: IGD's calibration, D3's
ensemble, the length penalty, and any registered scorer of your own; composed in a list as transformers'
``LogitsProcessor``), ``kv_cache`` (each user's prompt KV shared by its beams) and ``items`` (trie leaves to
ranked item ids). The scorer classes themselves are imported from :mod:`.scorers`.
"""

from recbole_llm.model.decoding.items import fill_by_popularity, leaves_to_items
from recbole_llm.model.decoding.scorers import build_scorers, configured_scorers, scorer_keys
from recbole_llm.model.decoding.search import constrained_beam_search
from recbole_llm.model.decoding.settings import DECODING_KEYS, DecodingSettings

__all__ = [
    "DECODING_KEYS",
    "DecodingSettings",
    "build_scorers",
    "configured_scorers",
    "constrained_beam_search",
    "fill_by_popularity",
    "leaves_to_items",
    "scorer_keys",
]
