"""Each change to beam scores is one small object, composed in a list (as transformers' ``LogitsProcessor``).

At every step the search (:mod:`.search`) gathers, for each running beam, the log-probabilities ``log p`` of
the tokens the title trie allows next, and passes them through :meth:`BeamScorer.token_scores` of every
scorer in list order; a beam's score is the sum of its token scores. A finished title's score then goes
through every :meth:`BeamScorer.finished_scores` (length normalisation), and
:meth:`BeamScorer.attainable_scores` bounds what a running beam can still reach (early stopping).

The papers' scorers, in the order :func:`build_scorers` composes them:

* :class:`D3Ensemble` (D3 §3.3): ``gs · log p_LLM + (1 − gs) · log m``, ``m`` the traditional model's (SASRec's)
  probability mass under the token's subtree, normalised over the allowed tokens;
* :class:`IGCalibration` (IGD §4.3.2 Eq. (9)–(10)): ``(1 − α·IG~) · score``, ``IG~`` the token's information
  gain min-max normalised among the allowed tokens; applied last of the papers' scorers, as the IGD reference's logits processor
  multiplies the already processed scores;
* :class:`LengthPenalty`: transformers' ``sum / len ** lp``, ``len`` the generated length including EOS.
  D3 §3.2 decodes without length normalisation (``lp = 0``: no scorer at all).

A scorer of your own is one class in one new file of this package (importing the package imports every
module in it): see :class:`BeamScorer` and the README's *Extending* section.

Without any scorer a title's score is its log-probability. A scorer that leaves a hook alone inherits the
base class's identity, so composing more scorers costs only what they compute.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from recbole_llm.model.decoding.scorers.base import SCORERS, BeamScorer, BeamStep, EnsembleSource
from recbole_llm.model.decoding.scorers.d3_ensemble import (
    D3Ensemble,
    check_ensemble_weight,
    ensemble_step_scores,
)
from recbole_llm.model.decoding.scorers.ig_calibration import IGCalibration, calibrated_step_scores
from recbole_llm.model.decoding.scorers.length_penalty import LengthPenalty
from recbole_llm.model.decoding.settings import DECODING_KEYS, DecodingSettings

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")


def compose_scorers(
    length_penalty: float = 0.0,
    ig_alpha: float = 0.0,
    ensemble: EnsembleSource | None = None,
    ensemble_weight: float = 1.0,
) -> list[BeamScorer]:
    """The papers' scorers for these knobs, in the order they apply; knobs at their neutral value add none."""
    check_ensemble_weight(ensemble_weight)
    scorers: list[BeamScorer] = []
    if ensemble is not None and ensemble_weight < 1.0:
        scorers.append(D3Ensemble(ensemble, ensemble_weight))
    if ig_alpha != 0.0:
        scorers.append(IGCalibration(ig_alpha))
    if length_penalty != 0.0:
        scorers.append(LengthPenalty(length_penalty))
    return scorers


def build_scorers(
    settings: DecodingSettings,
    ensemble: EnsembleSource | None = None,
    configured: list[BeamScorer] | tuple[BeamScorer, ...] = (),
) -> list[BeamScorer]:
    """The scorers of a model's decoding ``settings``, then the ``configured`` ones
    (:func:`configured_scorers`); ``ensemble``: the traditional model's item probabilities for the users
    being decoded, needed when ``settings.uses_ensemble`` (D3's gs < 1)."""
    if settings.uses_ensemble and ensemble is None:
        raise ValueError(
            "ensemble_weight < 1: pass the traditional model's item probabilities (ensemble=...)."
        )
    papers = compose_scorers(
        settings.length_penalty,
        settings.ig_alpha,
        ensemble if settings.uses_ensemble else None,
        settings.ensemble_weight,
    )
    return [*papers, *configured]


def configured_scorers(config: Any) -> list[BeamScorer]:
    """Every registered scorer (:data:`SCORERS`) that ``config`` switches on, in registration order."""
    built = (cls.from_config(config) for cls in SCORERS.values())
    return [scorer for scorer in built if scorer is not None]


def decoding_keys() -> tuple[str, ...]:
    """Every decoding key: :class:`DecodingSettings`' fields, then the registered scorers' keys. The one list
    ``--evaluate`` may change, tuning refuses to select on validation loss, and ``compare`` labels by."""
    return (*DECODING_KEYS, *sorted(scorer_keys() - set(DECODING_KEYS)))


def scorer_keys() -> frozenset[str]:
    """The YAML keys of every registered scorer (decoding keys: ``--evaluate`` may change them)."""
    return frozenset(key for cls in SCORERS.values() for key in cls.keys)


__all__ = [
    "SCORERS",
    "BeamScorer",
    "BeamStep",
    "D3Ensemble",
    "EnsembleSource",
    "IGCalibration",
    "LengthPenalty",
    "build_scorers",
    "calibrated_step_scores",
    "compose_scorers",
    "configured_scorers",
    "decoding_keys",
    "ensemble_step_scores",
    "scorer_keys",
]
