"""Decoding: trie-constrained beam search whose beam scores are changed by small composable scorers.

``settings`` (:class:`DecodingSettings`: every decoding key, read and validated once), ``search`` (the beam
search over the title trie), ``scorers`` (one object per change to beam scores: IGD's calibration, D3's
ensemble, the length penalty, and any registered scorer of your own; composed in a list as transformers'
``LogitsProcessor``), ``kv_cache`` (each user's prompt KV shared by its beams) and ``items`` (trie leaves to
ranked item ids). The scorer classes themselves are imported from :mod:`.scorers`.

The names below are loaded on first use (PEP 562): code that only needs the decoding keys (``compare``,
tuning) does not pay for the search's transformers import.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "DECODING_KEYS": "settings",
    "DecodingSettings": "settings",
    "decoding_keys": "scorers",
    "build_scorers": "scorers",
    "configured_scorers": "scorers",
    "scorer_keys": "scorers",
    "constrained_beam_search": "search",
    "fill_by_popularity": "items",
    "history_mask": "items",
    "mask_history_scores": "items",
    "leaves_to_items": "items",
    "ranking_to_scores": "items",
    "ranked_item_scores": "items",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
