"""The ``Objective`` base class, its registry and the one builder, ``build_objective``.

An objective class says everything that differs between training methods: its paper defaults
(``defaults``), how it reads and validates its own config keys (``from_config``), its per-token weights
(``token_weights``), how its terms combine (``combine``, numerators only), whether it needs a
counterfactual pass and how that pass's input is built (``counterfactual_inputs``), the temporal
embedding it uses by default and its decoding defaults. Defining a subclass with a ``name`` registers
it (docs/design.md §3), so the model asks its objective instead of testing the objective's name.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from recbole_llm.model.objectives.losses import (
    CAUSAL,
    NORMAL,
    beta_from_beta_prime,
    causal_loss_terms,
    token_cross_entropy,
    weighted_loss_sum,
)
from recbole_llm.model.prompt import PromptBatch, PromptBuilder
from recbole_llm.utils.config_access import as_number, config_get

# name -> class, filled by ``Objective.__init_subclass__``; listed (errors, docs) in the papers' order,
# then any other objective in the order it was defined.
OBJECTIVES: dict[str, type[Objective]] = {}
LISTING_ORDER = ("sft", "pos", "cft", "cetrec", "igd")


def _register(cls: type[Objective]) -> None:
    known = OBJECTIVES.get(cls.name)
    if known is not None and (known.__module__, known.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ValueError(
            f"objective name {cls.name!r} is already taken by {known.__module__}.{known.__qualname__}"
        )
    OBJECTIVES[cls.name] = cls
    rank = {name: i for i, name in enumerate(LISTING_ORDER)}
    ordered = sorted(OBJECTIVES.items(), key=lambda item: rank.get(item[0], len(rank)))  # stable
    OBJECTIVES.clear()
    OBJECTIVES.update(ordered)


@dataclass(frozen=True)
class Counterfactual:
    """Input of the counterfactual pass: a prompt batch and, if not the batch's own, its temporal index."""

    batch: PromptBatch
    item_index: Tensor | None = None


class Objective:
    """Weights and combination rule of one training objective (no model code here).

    Subclasses set ``name`` (registers the class), ``defaults`` (paper defaults of the keys they read),
    and override what differs. The base class is plain cross-entropy over the target tokens.
    """

    name: ClassVar[str]
    # Paper defaults of this objective's own config keys (absent or null in the config -> these).
    defaults: ClassVar[dict[str, Any]] = {}
    # Defaults of decoding keys that belong to this objective's method (read by DecodingSettings).
    decoding_defaults: ClassVar[dict[str, Any]] = {}
    # Temporal embedding used when the config sets no ``temporal_embedding`` (None: no embedding).
    temporal_embedding: ClassVar[str | None] = None
    # The config keys ``from_config`` reads (``compare`` labels runs by them), and those of them that
    # re-weight the tokens of the validation loss (tuning warns: losses under them are not comparable).
    keys: ClassVar[tuple[str, ...]] = ()
    loss_weight_keys: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:  # else an intermediate base class, not an objective of its own
            _register(cls)

    @classmethod
    def from_config(cls, config: Any) -> Objective:
        """Read and validate this objective's own keys (and only those); others are ignored."""
        return cls()

    # -- properties -------------------------------------------------------------------------------------
    @property
    def needs_counterfactual(self) -> bool:
        """Whether training runs a second, counterfactual pass (``counterfactual_inputs``)."""
        return False

    @property
    def term_names(self) -> tuple[str, ...]:
        return (NORMAL, CAUSAL) if self.needs_counterfactual else (NORMAL,)

    def active_terms(self, training: bool) -> tuple[str, ...]:
        """The terms of the loss; validation uses the normal term only, as in the references."""
        return self.term_names if training else (NORMAL,)

    @property
    def coefficients(self) -> dict[str, float]:
        return {NORMAL: 1.0}

    def hparams(self) -> dict[str, Any]:
        """Resolved hyper-parameters, for logging, results files and run names."""
        return {"objective": self.name}

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v}" for k, v in self.hparams().items() if k != "objective")
        return f"{type(self).__name__}({inner})"

    # -- weights and loss -------------------------------------------------------------------------------
    def token_weights(
        self, token_pos: Tensor, seq_len: Tensor, token_ig: Tensor | None = None
    ) -> dict[str, Tensor]:
        """Per-token weights ``[T]`` (float32) of each term in ``term_names``."""
        ones = torch.ones(token_pos.shape, dtype=torch.float32, device=token_pos.device)
        return dict.fromkeys(self.term_names, ones)

    def validation_weights(
        self, token_pos: Tensor, seq_len: Tensor, token_ig: Tensor | None = None
    ) -> dict[str, Tensor]:
        """Per-token weights ``{NORMAL: [T]}`` of the validation (early-stopping) loss: by default the
        training weights of the normal term; an objective whose reference stops on plain CE overrides it."""
        return {NORMAL: self.token_weights(token_pos, seq_len, token_ig)[NORMAL]}

    def combine(
        self,
        logits_f: Tensor,
        labels: Tensor,
        token_pos: Tensor,
        seq_len: Tensor,
        *,
        logits_cf: Tensor | None = None,
        token_ig: Tensor | None = None,
        weights: Mapping[str, Tensor] | None = None,
        training: bool = True,
    ) -> dict[str, Tensor]:
        """Numerator ``Σ w·ℓ`` of every active term; ``weighted_total`` divides by the batch's ``Σ w``.

        ``weights`` may carry precomputed per-token weights (``gather_token_weights``); ``training=False``
        returns the normal term only (validation loss, weighted by ``validation_weights``). Ignored labels (-100) have zero loss. The causal
        term is the weighted cross-entropy of ``logits_f − logits_cf`` (CFT Eq. (3), CETRec Eq. (9)).
        """
        active = self.active_terms(training)
        if CAUSAL in active and logits_cf is None:
            raise ValueError(
                f"objective {self.name!r} with lambda={self.coefficients[CAUSAL]} needs the counterfactual "
                "logits: pass logits_cf, or set lambda: 0 to train without the causal loss."
            )
        w = self._weights(token_pos, seq_len, token_ig, weights, training)
        terms = {NORMAL: weighted_loss_sum(token_cross_entropy(logits_f, labels), w[NORMAL])[0]}
        if CAUSAL in active:
            assert logits_cf is not None
            terms[CAUSAL] = causal_loss_terms(logits_f, logits_cf, labels, w[CAUSAL])[0]
        return terms

    def check_temporal(self, kind: str) -> None:
        """Raise if this objective cannot train with temporal embedding ``kind`` (none|sinpe|rope...)."""

    def counterfactual_differs(self, history_len: Tensor) -> Tensor:
        """Per sample (``history_len`` = history items kept in its prompt): whether its counterfactual input
        differs from the factual one. Samples where it does not get causal weight 0, so they leave the
        causal term's normaliser (their ``L_c`` is the constant log|V| with no gradient)."""
        return torch.ones(history_len.shape, dtype=torch.bool, device=history_len.device)

    def counterfactual_inputs(
        self, prompts: PromptBuilder, batch: PromptBatch, histories: list[list[int]], targets: list[int]
    ) -> Counterfactual:
        """The counterfactual pass's input for the factual ``batch`` (only when ``needs_counterfactual``)."""
        raise ValueError(f"objective {self.name!r} has no counterfactual pass")

    def _weights(
        self,
        token_pos: Tensor,
        seq_len: Tensor,
        token_ig: Tensor | None,
        weights: Mapping[str, Tensor] | None,
        training: bool = True,
    ) -> dict[str, Tensor]:
        if weights is not None:
            w = dict(weights)
        elif training:
            w = self.token_weights(token_pos, seq_len, token_ig)
        else:
            w = self.validation_weights(token_pos, seq_len, token_ig)
        missing = [n for n in self.active_terms(training) if n not in w]
        if missing:
            raise ValueError(f"precomputed weights lack the term(s) {missing} of objective {self.name!r}")
        return w


class CausalObjective(Objective):
    """``L = L_n + λ L_c``: a normal term plus a causal term on ``logits_f − logits_cf`` (CFT, CETRec).

    With λ = 0 there is no counterfactual pass, so e.g. CFT "w/o CL" costs one pass.
    """

    keys: ClassVar[tuple[str, ...]] = ("lambda",)  # λ: training only (validation uses L_n alone)

    def __init__(self, lam: float) -> None:
        check_lambda(lam)
        self.lam = float(lam)

    @property
    def needs_counterfactual(self) -> bool:
        return self.lam > 0

    @property
    def coefficients(self) -> dict[str, float]:
        return {NORMAL: 1.0, CAUSAL: self.lam}

    def hparams(self) -> dict[str, Any]:
        return {"objective": self.name, "lambda": self.lam}


class BetaObjective(Objective):
    """An objective with one token weight β ∈ [0, 1] (``beta``, or CFT's ``beta_prime``): pos, igd."""

    keys: ClassVar[tuple[str, ...]] = ("beta", "beta_prime")
    loss_weight_keys: ClassVar[tuple[str, ...]] = ("beta", "beta_prime")

    def __init__(self, beta: float | None = None) -> None:
        beta = self.defaults["beta"] if beta is None else beta
        check_beta(beta)
        self.beta = float(beta)

    @classmethod
    def from_config(cls, config: Any) -> BetaObjective:
        return cls(beta=read_beta(config, cls.defaults["beta"]))

    def hparams(self) -> dict[str, Any]:
        return {"objective": self.name, "beta": self.beta}


# --------------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------------
def objective_keys() -> tuple[str, ...]:
    """Every config key a registered objective reads, in listing order, each once."""
    return tuple(dict.fromkeys(key for cls in OBJECTIVES.values() for key in cls.keys))


def loss_weight_keys() -> frozenset[str]:
    """The keys that change the token weights of some objective's validation loss."""
    return frozenset(key for cls in OBJECTIVES.values() for key in cls.loss_weight_keys)


def check_beta(beta: Any, key: str = "beta") -> None:
    if isinstance(beta, bool) or not isinstance(beta, int | float) or not (0.0 <= float(beta) <= 1.0):
        raise ValueError(
            f"{key} = {beta!r} is outside [0, 1] (it is the weight of the last / zero-IG tokens). "
            "To give the CFT paper's β' instead, set beta_prime (β = 1 − 1/β', e.g. beta_prime: 2 → β = 0.5)."
        )


def check_lambda(lam: Any) -> None:
    if isinstance(lam, bool) or not isinstance(lam, int | float) or not math.isfinite(lam) or lam < 0:
        raise ValueError(
            f"lambda = {lam!r} must be a finite number >= 0 (the weight of the causal loss; 0 disables it)."
        )


def read_beta(config: Any, default: float) -> float:
    """``beta`` (β ∈ [0, 1]) or ``beta_prime`` (β' ≥ 1, overrides it with CFT's β = 1 − 1/β')."""
    beta = config_get(config, "beta")
    beta = default if beta is None else as_number(beta, "beta", "e.g. beta: 0.1")
    beta_prime = config_get(config, "beta_prime")
    if beta_prime is not None:
        beta = beta_from_beta_prime(as_number(beta_prime, "beta_prime", "e.g. beta_prime: 2"))
    check_beta(beta)
    return float(beta)


def read_lambda(config: Any, default: float) -> float:
    """``lambda`` (λ ≥ 0, the weight of the causal loss)."""
    lam = config_get(config, "lambda")
    lam = default if lam is None else as_number(lam, "lambda", "e.g. lambda: 0.1")
    check_lambda(lam)
    return float(lam)


def build_objective(config: Any) -> Objective:
    """The objective named by ``config["objective"]`` (default sft), built by its own ``from_config``."""
    raw = config_get(config, "objective")
    name = "sft" if raw is None else str(raw).strip().lower()
    if name not in OBJECTIVES:
        raise ValueError(
            f"Unknown objective {raw!r}: choose one of {', '.join(OBJECTIVES)} (key 'objective')."
        )
    return OBJECTIVES[name].from_config(config)
