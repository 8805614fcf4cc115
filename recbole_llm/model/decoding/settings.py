"""How a trained LLMGenRec turns prompts into ranked lists: one dataclass, built and validated once.

Its field names are *the* decoding keys of the project: the only keys ``--evaluate`` may change on a
trained run, the keys tuning cannot select on validation loss (they never change it), and the knobs
``compare`` labels rows with. Defaults that depend on the objective (IGD's α, IGD §4.3) come from the
objective class (``Objective.decoding_defaults``), not from a test of its name.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from recbole_llm.model.grounding import GROUNDING_RULES
from recbole_llm.utils.config_access import as_number, config_get

# decoder name -> default length penalty. d3: D3's "no length normalisation" (D3 §3.2); constrained: the
# beam search of BIGRec/CFT with HF's length normalisation; bigrec: free generation, then grounding.
DECODERS: dict[str, float] = {"d3": 0.0, "constrained": 1.0, "bigrec": 0.0}
TRIE_ITEMS = ("all", "train_targets")
MISSING_ENSEMBLE_CHECKPOINT = (
    "ensemble_weight < 1 needs ensemble_checkpoint: the .pth of a SASRec run on the same dataset "
    "(python run_recbole_llm.py --model=SASRec --dataset=...; see results/<dataset>/SASRec-*.json)."
)
FILLS = ("none", "popularity")


@dataclass(frozen=True)
class DecodingSettings:
    """Resolved decoding keys (see ``properties/model/LLMGenRec.yaml`` for each key's documentation)."""

    decoder: str = "d3"
    num_beams: int = 10
    length_penalty: float = 0.0
    ig_alpha: float = 0.0
    decode_batch_size: int = 8
    trie_items: str = "all"
    fill: str = "none"
    ensemble_checkpoint: str | None = None
    ensemble_weight: float = 1.0
    bigrec_generations: int = 10
    bigrec_rank: str = "bigrec"

    @classmethod
    def from_config(cls, config: Any, objective: Any = None) -> DecodingSettings:
        """Read every decoding key once; ``~`` takes the decoder's or the objective's default."""
        defaults = dict(getattr(objective, "decoding_defaults", {}) or {})
        decoder = str(config_get(config, "decoder", "d3"))
        if decoder not in DECODERS:
            raise ValueError(f"Unknown decoder {decoder!r}: choose one of {', '.join(DECODERS)}.")
        num_beams = int(config_get(config, "num_beams", 10))
        penalty = config_get(config, "length_penalty")
        if penalty is None:
            penalty = DECODERS[decoder]
        alpha = config_get(config, "ig_alpha", defaults.get("ig_alpha", 0.0))
        gs = config_get(config, "ensemble_weight", 1.0)
        settings = cls(
            decoder=decoder,
            num_beams=num_beams,
            length_penalty=as_number(penalty, "length_penalty", "d3: 0, constrained: 1"),
            ig_alpha=as_number(alpha, "ig_alpha", "IGD's α in [0, 1]"),
            decode_batch_size=int(config_get(config, "decode_batch_size", 8)),
            trie_items=str(config_get(config, "trie_items", "all")),
            fill=str(config_get(config, "fill", "none")),
            ensemble_checkpoint=config_get(config, "ensemble_checkpoint"),
            ensemble_weight=as_number(gs, "ensemble_weight", "1 = the LLM alone"),
            bigrec_generations=int(config_get(config, "bigrec_generations", num_beams)),
            bigrec_rank=str(config_get(config, "bigrec_rank", "bigrec")),
        )
        settings.validate(topk=max(config_get(config, "topk", [10])))
        return settings

    def validate(self, topk: int) -> None:
        """Every rule in one place, with the fix in the message."""
        if self.decoder != "bigrec" and self.num_beams < topk:
            raise ValueError(
                f"num_beams={self.num_beams} is smaller than the largest K in topk ({topk}): the decoder returns "
                f"one item per beam, so set num_beams >= {topk}."
            )
        if not 0.0 <= self.ig_alpha <= 1.0:
            raise ValueError(
                f"ig_alpha={self.ig_alpha} is outside [0, 1]: the decoding weight 1 - α·IG~ must stay >= 0."
            )
        if self.fill not in FILLS:
            raise ValueError(f"fill={self.fill!r}: use 'none' or 'popularity'.")
        if self.trie_items not in TRIE_ITEMS:
            raise ValueError(f"trie_items={self.trie_items!r}: use 'all' or 'train_targets'.")
        if self.decode_batch_size < 1:
            raise ValueError(f"decode_batch_size={self.decode_batch_size} must be >= 1.")
        if not 0.0 <= self.ensemble_weight <= 1.0:  # any decoder: a value out of range is a typo, not a no-op
            raise ValueError(
                f"ensemble_weight={self.ensemble_weight} must be in [0, 1] (1 = the LLM alone, as without an "
                "ensemble)."
            )
        if self.decoder == "bigrec":
            if self.bigrec_generations < 1:
                raise ValueError(
                    f"bigrec_generations={self.bigrec_generations} must be >= 1: the beams of free generation "
                    "that BIGRec grounds to items (default 10)."
                )
            if self.bigrec_rank not in GROUNDING_RULES:
                raise ValueError(
                    f"bigrec_rank={self.bigrec_rank!r}: choose one of {', '.join(GROUNDING_RULES)}."
                )
            return
        if self.uses_ensemble and not self.ensemble_checkpoint:
            raise ValueError(MISSING_ENSEMBLE_CHECKPOINT)

    @property
    def uses_ensemble(self) -> bool:
        """D3's ensemble (gs < 1) guides the trie search; BIGRec's free generation has no trie to guide."""
        return self.decoder != "bigrec" and self.ensemble_weight < 1.0

    def recorded(self) -> dict[str, Any]:
        """The decoding part of a results JSON's ``hyper_parameters``."""
        return {
            "decoder": self.decoder,
            "num_beams": self.num_beams,
            "length_penalty": self.length_penalty,
            "ig_alpha": self.ig_alpha,
            "trie_items": self.trie_items,
            "ensemble_weight": self.ensemble_weight,
        }


DECODING_KEYS: tuple[str, ...] = tuple(f.name for f in fields(DecodingSettings))
