"""Token-level training objectives: SFT, positional decay, CFT, CETRec and IGD.

Every objective trains on the same per-target-token logits (the model computes the LM head only at the
target positions and packs them as ``[T, V]``); objectives differ only in how they weight and combine
token cross-entropies. ``T`` is the number of target tokens in the micro-batch (title tokens + EOS of each
sample's target item), described per token by ``labels [T]``, ``token_pos [T]`` (1-based position ``t``
inside its target), ``seq_len [T]`` (``|y|`` of that target) and, for IGD, ``token_ig [T]``.

Each objective returns named *terms* ``{"normal": LossTerm, "causal": LossTerm}`` (``causal`` only for
CFT/CETRec) and the loss is ``Σ_term coefficient · numerator / denominator`` with
``numerator = Σ w_t ℓ_t`` and ``denominator = Σ w_t`` -- CFT's Eq. (4) and IGD's Eq. (7) normalise by the
total weight ``Ω``. CETRec's Eqs. (8)-(9) write plain sums; we use the token mean (weights 1) so the scale
does not depend on the batch size.

How the trainer must normalise (DESIGN §3: the references divide by the weight total of each micro-batch,
so their loss depends on the micro-batch size):

1. Weights depend only on the targets, never on the model, so before running the forward passes of one
   optimiser step the trainer sums ``objective.weight_totals(...)`` over all its micro-batches and
   all-reduces the sums (``SUM``) over DDP ranks: ``D_term``.
2. For each micro-batch it calls ``terms = objective.combine(...)`` and back-propagates
   ``total_loss(terms, D) * world_size`` (DDP averages gradients over ranks, the factor undoes that).
3. The accumulated gradient then equals the gradient of ``Σ coef · (Σ_all numerators) / D_term``, the loss
   of the whole effective batch, whatever the micro-batch size. (With a single term one may instead
   back-propagate the raw numerator and divide the gradients by ``D`` afterwards; with two terms the
   denominators differ, so they must be known before ``backward``.)

For the validation loss (early stopping) the references use the normal term only (they add ``λ L_c`` only
when ``model.training``); ``combine(..., training=False)`` does the same and needs no counterfactual pass.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = -100
NORMAL = "normal"
CAUSAL = "causal"

# Defaults follow the papers' main setting (see ``DEFAULTS`` and the README of this module's report):
# CFT reference code hard-codes β = 0.25 and λ = 0.1 and weights both L_n and L_c; the IGD README says
# β = 0.1 "works best in general"; CETRec does not report its λ (grid {0.01, 0.1, 0.5, 1, 10}).
DEFAULTS: dict[str, dict[str, Any]] = {
    "sft": {},
    "pos": {"beta": 0.25},
    "cft": {"beta": 0.25, "lambda": 0.1, "cft_weight_normal_loss": True},
    "cetrec": {"lambda": 0.1},
    "igd": {"beta": 0.1},
}


# --------------------------------------------------------------------------------------------------------
# Pure maths
# --------------------------------------------------------------------------------------------------------
def beta_from_beta_prime(beta_prime: float) -> float:
    """CFT's re-parameterisation ``β = 1 − 1/β'`` (paper grid β' ∈ {1.1, …, 25} ≈ β ∈ {0.09, …, 0.96})."""
    bp = float(beta_prime)
    if math.isnan(bp) or bp < 1.0:
        raise ValueError(
            f"beta_prime = {beta_prime!r} must be >= 1 because β = 1 − 1/β' must lie in [0, 1] "
            "(e.g. beta_prime: 1.1 gives β ≈ 0.09, 2 gives 0.5, 25 gives 0.96); or set beta directly."
        )
    return 1.0 - 1.0 / bp


def position_decay_weights(token_pos: Tensor, seq_len: Tensor, beta: float) -> Tensor:
    """Vectorised CFT Eq. (5): ``w_t = 1 − (1−β)(t−1)/(|y|−1)``, and ``w = 1`` when ``|y| = 1``.

    ``token_pos`` is 1-based. Returns float32. Not validated (hot path): positions must lie in ``[1, |y|]``.
    """
    t = token_pos.to(torch.float32)
    denom = (seq_len.to(torch.float32) - 1.0).clamp(min=1.0)  # |y| = 1 ⇒ t − 1 = 0 ⇒ w = 1
    return 1.0 - (1.0 - float(beta)) * (t - 1.0) / denom


def linear_decay_weights(length: int | Tensor, beta: float) -> Tensor:
    """Linear decay weights of one target of ``length`` tokens, or of several packed back to back.

    ``length`` an int → ``[length]``; a 1-D tensor of lengths → ``[sum(lengths)]`` (targets concatenated
    in order, the packing the model uses for ``[T, V]`` logits).
    """
    _check_beta(beta, "beta")
    lengths = torch.as_tensor([length] if isinstance(length, int) else length, dtype=torch.long).reshape(-1)
    if (lengths < 1).any():
        raise ValueError(f"target lengths must be >= 1 (title tokens + EOS), got {lengths.tolist()}")
    seq_len = torch.repeat_interleave(lengths, lengths)
    starts = torch.cumsum(lengths, 0) - lengths
    token_pos = torch.arange(int(lengths.sum())) - torch.repeat_interleave(starts, lengths) + 1
    return position_decay_weights(token_pos, seq_len, beta)


def ig_weights(token_ig: Tensor, beta: float, zero_atol: float = 1e-9) -> Tensor:
    """IGD Eq. (8): ``w_t = β`` where ``IG(y_t) = 0`` else 1 (float32).

    IG is exactly 0 when the trie node's parent has a single child; ``zero_atol`` only absorbs float
    rounding (a real sibling contributes ``−p log p ≥ ~1e-5`` for any item frequency seen in training).
    """
    is_zero = token_ig.abs() <= zero_atol
    return torch.where(is_zero, torch.full_like(token_ig, float(beta), dtype=torch.float32), 1.0).float()


def _upcast(x: Tensor) -> Tensor:
    """float32 for half/bf16 (and float32) logits; float64 stays float64."""
    return x if x.dtype == torch.float64 else x.float()


def token_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Per-token CE ``[T]`` computed in float32 even for bf16 logits; ``-100`` labels give 0."""
    if logits.dim() != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(
            f"expected logits [T, V] and labels [T], got {tuple(logits.shape)} and {tuple(labels.shape)}"
        )
    return F.cross_entropy(_upcast(logits), labels.long(), reduction="none", ignore_index=IGNORE_INDEX)


def weighted_loss_sum(token_losses: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
    """Return ``(Σ w·ℓ, Σ w)`` separately so the caller can normalise over the whole effective batch.

    See the module docstring for how the trainer combines them across gradient accumulation and DDP.
    """
    weights = weights.to(token_losses.dtype)
    return (token_losses * weights).sum(), weights.detach().sum()


def causal_loss_terms(
    logits_f: Tensor, logits_cf: Tensor, labels: Tensor, weights: Tensor
) -> tuple[Tensor, Tensor]:
    """CFT ``L_c`` / CETRec ``L_CT`` parts: weighted CE of ``logits_f − logits_cf`` at the labels.

    Gradients flow through both the factual and the counterfactual logits (as in the CFT reference code).
    """
    if logits_f.shape != logits_cf.shape:
        raise ValueError(
            f"factual and counterfactual logits must have the same shape, got {tuple(logits_f.shape)} "
            f"and {tuple(logits_cf.shape)}: compute the LM head at the same target positions in both passes."
        )
    return weighted_loss_sum(token_cross_entropy(_upcast(logits_f) - _upcast(logits_cf), labels), weights)


def weighted_total(
    values: Mapping[str, Any], denominators: Mapping[str, Any], coefficients: Mapping[str, float]
) -> Any:
    """The loss formula, written once: ``Σ_term coefficient · value / denominator``.

    ``values`` are per-term numerators ``Σ w·ℓ`` (tensors during training, floats in logs);
    ``denominators`` the weight totals ``Σ w`` of the whole effective batch (CFT Eq. 4, IGD Eq. 7 normalise
    by the total weight). A zero denominator means the term had no weighted token; it is clamped so the
    term contributes 0. Used by the model, the trainer's micro-steps, its epoch log and validation loss.
    """
    total: Any = 0
    for name, value in values.items():
        den = denominators[name]
        if isinstance(den, Tensor):
            den = (
                den.clamp_min(1e-12).to(value.device) if isinstance(value, Tensor) else max(float(den), 1e-12)
            )
        else:
            den = max(float(den), 1e-12)
        total = total + coefficients[name] * value / den
    return total


@dataclass(frozen=True)
class LossTerm:
    """One loss term: ``coefficient · numerator / denominator``; numerator carries the gradient."""

    numerator: Tensor
    denominator: Tensor
    coefficient: float


def total_loss(
    terms: Mapping[str, LossTerm], denominators: Mapping[str, Tensor | float] | None = None
) -> Tensor:
    """``Σ coefficient · numerator / denominator``.

    ``denominators`` (per term name) overrides each term's own weight total: pass the weight totals of
    the whole effective batch (summed over micro-batches and DDP ranks) to get a micro-batch-size-free
    loss. A zero denominator means the term had no weighted token (its numerator is 0 too) → contributes 0.
    """
    if not terms:
        raise ValueError("no loss terms to combine")
    loss: Tensor | None = None
    for name, term in terms.items():
        den = term.denominator if denominators is None else denominators[name]
        den = torch.as_tensor(den, dtype=term.numerator.dtype, device=term.numerator.device)
        part = term.coefficient * term.numerator / den.clamp(min=torch.finfo(term.numerator.dtype).tiny)
        loss = part if loss is None else loss + part
    assert loss is not None
    return loss


# --------------------------------------------------------------------------------------------------------
# Objectives
# --------------------------------------------------------------------------------------------------------
class Objective:
    """Weights and combination rule of one training objective (no model code here).

    Attributes: ``needs_counterfactual`` (the model must run the second pass; False when λ = 0 so that
    e.g. CFT "w/o CL" costs one pass), ``counterfactual_kind`` (``"drop_history"`` for CFT,
    ``"same_time_index"`` for CETRec, else None), ``uses_temporal_embedding`` (CETRec adds temporal
    embeddings in every pass, training and inference alike).
    """

    name: ClassVar[str]
    counterfactual_kind: ClassVar[str | None] = None
    # Defaults of decoding keys that belong to this objective's method (read by DecodingSettings).
    decoding_defaults: ClassVar[dict[str, Any]] = {}
    uses_temporal_embedding: ClassVar[bool] = False

    def __init__(self, beta: float = 1.0, lam: float = 0.0, weight_normal_loss: bool = True) -> None:
        _check_beta(beta, "beta")
        if (
            not (isinstance(lam, int | float) and not isinstance(lam, bool))
            or not math.isfinite(lam)
            or lam < 0
        ):
            raise ValueError(
                f"lambda = {lam!r} must be a finite number >= 0 (the weight of the causal loss)."
            )
        self.beta = float(beta)
        self.lam = float(lam)
        self.weight_normal_loss = bool(weight_normal_loss)

    # -- properties -------------------------------------------------------------------------------------
    @property
    def needs_counterfactual(self) -> bool:
        return self.counterfactual_kind is not None and self.lam > 0

    @property
    def term_names(self) -> tuple[str, ...]:
        return (NORMAL, CAUSAL) if self.needs_counterfactual else (NORMAL,)

    @property
    def coefficients(self) -> dict[str, float]:
        return {NORMAL: 1.0, CAUSAL: self.lam}

    def hparams(self) -> dict[str, Any]:
        """Resolved hyper-parameters, for logging and run names."""
        return {"objective": self.name, "beta": self.beta, "lambda": self.lam}

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v}" for k, v in self.hparams().items() if k != "objective")
        return f"{type(self).__name__}({inner})"

    # -- weights ----------------------------------------------------------------------------------------
    def token_weights(
        self, token_pos: Tensor, seq_len: Tensor, token_ig: Tensor | None = None
    ) -> dict[str, Tensor]:
        """Per-token weights ``[T]`` (float32) of each term in ``term_names``."""
        ones = torch.ones(token_pos.shape, dtype=torch.float32, device=token_pos.device)
        return dict.fromkeys(self.term_names, ones)

    def weight_totals(
        self,
        token_pos: Tensor,
        seq_len: Tensor,
        token_ig: Tensor | None = None,
        labels: Tensor | None = None,
        *,
        training: bool = True,
    ) -> dict[str, Tensor]:
        """Denominators ``Σ w`` per term, computable before any forward pass (see module docstring)."""
        weights = self._masked_weights(token_pos, seq_len, token_ig, labels, None)
        return {name: weights[name].sum() for name in self._active_terms(training)}

    # -- loss -------------------------------------------------------------------------------------------
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
    ) -> dict[str, LossTerm]:
        """Numerator/denominator of every term; ``total_loss`` turns them into the scalar loss.

        ``weights`` may carry precomputed per-token weights (``gather_token_weights``); ``training=False``
        returns the normal term only (validation loss, as in the references).
        """
        active = self._active_terms(training)
        if CAUSAL in active and logits_cf is None:
            raise ValueError(
                f"objective {self.name!r} with lambda={self.lam} needs the counterfactual logits "
                f"({self.counterfactual_kind}): pass logits_cf, or set lambda: 0 to train without the causal loss."
            )
        w = self._masked_weights(token_pos, seq_len, token_ig, labels, weights)
        coef = self.coefficients
        num, den = weighted_loss_sum(token_cross_entropy(logits_f, labels), w[NORMAL])
        terms = {NORMAL: LossTerm(num, den, coef[NORMAL])}
        if CAUSAL in active:
            assert logits_cf is not None
            num, den = causal_loss_terms(logits_f, logits_cf, labels, w[CAUSAL])
            terms[CAUSAL] = LossTerm(num, den, coef[CAUSAL])
        return terms

    def loss(self, *args: Any, **kwargs: Any) -> Tensor:
        """Micro-batch-normalised loss (``total_loss(self.combine(...))``), for evaluation and tests."""
        return total_loss(self.combine(*args, **kwargs))

    # -- helpers ----------------------------------------------------------------------------------------
    def _active_terms(self, training: bool) -> tuple[str, ...]:
        return self.term_names if training else (NORMAL,)

    def _masked_weights(
        self,
        token_pos: Tensor,
        seq_len: Tensor,
        token_ig: Tensor | None,
        labels: Tensor | None,
        weights: Mapping[str, Tensor] | None,
    ) -> dict[str, Tensor]:
        w = dict(weights) if weights is not None else self.token_weights(token_pos, seq_len, token_ig)
        missing = [n for n in self.term_names if n not in w]
        if missing:
            raise ValueError(f"precomputed weights lack the term(s) {missing} of objective {self.name!r}")
        if labels is not None:
            keep = (labels != IGNORE_INDEX).to(torch.float32)
            w = {k: v.float() * keep for k, v in w.items()}
        return w


class SFTObjective(Objective):
    """Plain cross-entropy over the target tokens (BIGRec / D3 training)."""

    name = "sft"

    def hparams(self) -> dict[str, Any]:
        return {"objective": self.name}


class PosObjective(Objective):
    """Linear positional decay on the normal loss (CFT "w/o CL": CFT with λ = 0)."""

    name = "pos"

    def token_weights(
        self, token_pos: Tensor, seq_len: Tensor, token_ig: Tensor | None = None
    ) -> dict[str, Tensor]:
        return {NORMAL: position_decay_weights(token_pos, seq_len, self.beta)}

    def hparams(self) -> dict[str, Any]:
        return {"objective": self.name, "beta": self.beta}


class CFTObjective(Objective):
    """CFT: ``L = L_n + λ L_c``; decay weights on ``L_c`` and (``cft_weight_normal_loss``) on ``L_n``.

    Counterfactual input: the history removed from the prompt (``"drop_history"``).
    """

    name = "cft"
    counterfactual_kind = "drop_history"

    def token_weights(
        self, token_pos: Tensor, seq_len: Tensor, token_ig: Tensor | None = None
    ) -> dict[str, Tensor]:
        decay = position_decay_weights(token_pos, seq_len, self.beta)
        normal = decay if self.weight_normal_loss else torch.ones_like(decay)
        out = {NORMAL: normal}
        if self.needs_counterfactual:
            out[CAUSAL] = decay
        return out

    def hparams(self) -> dict[str, Any]:
        return {**super().hparams(), "cft_weight_normal_loss": self.weight_normal_loss}


class CETRecObjective(Objective):
    """CETRec: ``L = L_TA + λ L_CT``, unweighted; counterfactual = every history item at one time index."""

    name = "cetrec"
    counterfactual_kind = "same_time_index"
    uses_temporal_embedding = True

    def hparams(self) -> dict[str, Any]:
        return {"objective": self.name, "lambda": self.lam}


class IGDObjective(Objective):
    """IGD: ``w_t = β`` for zero-information-gain tokens, 1 otherwise (``token_ig`` from the title trie)."""

    name = "igd"
    decoding_defaults: ClassVar[dict[str, Any]] = {
        "ig_alpha": 0.2
    }  # IGD §4.3.2: α = 0.2, the reference setting

    def token_weights(
        self, token_pos: Tensor, seq_len: Tensor, token_ig: Tensor | None = None
    ) -> dict[str, Tensor]:
        if token_ig is None:
            raise ValueError(
                "objective 'igd' needs token_ig [T]: the information gain of every target token, "
                "precomputed per item from the title trie (see item_token_weights)."
            )
        return {NORMAL: ig_weights(token_ig, self.beta)}

    def hparams(self) -> dict[str, Any]:
        return {"objective": self.name, "beta": self.beta}


OBJECTIVES: dict[str, type[Objective]] = {
    cls.name: cls for cls in (SFTObjective, PosObjective, CFTObjective, CETRecObjective, IGDObjective)
}


# --------------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------------
def config_value(config: Any, key: str) -> Any:
    """``config[key]`` or None when absent; works for dicts and RecBole ``Config`` (which has no ``.get``)."""
    if isinstance(config, Mapping):
        return config.get(key)
    return config[key] if key in config else None  # noqa: SIM401 -- RecBole Config lacks .get


def _check_beta(beta: Any, key: str) -> None:
    if isinstance(beta, bool) or not isinstance(beta, int | float) or not (0.0 <= float(beta) <= 1.0):
        raise ValueError(
            f"{key} = {beta!r} is outside [0, 1] (it is the weight of the last / zero-IG tokens). "
            "To give the CFT paper's β' instead, set beta_prime (β = 1 − 1/β', e.g. beta_prime: 2 → β = 0.5)."
        )


def _as_float(value: Any, key: str) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{key} = {value!r} must be a number, not a boolean.")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{key} = {value!r} must be a number (e.g. {key}: 0.1).") from None


def build_objective(config: Any) -> Objective:
    """Build the objective named by ``config["objective"]`` with validated hyper-parameters.

    Keys (RecBole YAML / ``--key=value``; absent or null → the objective's paper default, ``DEFAULTS``):
    ``objective`` (sft|pos|cft|cetrec|igd, default sft), ``beta`` (β ∈ [0, 1]), ``beta_prime`` (β' ≥ 1,
    overrides ``beta`` with β = 1 − 1/β'), ``lambda`` (λ ≥ 0, cft/cetrec), ``cft_weight_normal_loss``
    (bool, cft). Keys that an objective does not use are ignored.
    """
    raw = config_value(config, "objective")
    name = "sft" if raw is None else str(raw).strip().lower()
    if name not in OBJECTIVES:
        raise ValueError(
            f"Unknown objective {raw!r}: choose one of {', '.join(OBJECTIVES)} (key 'objective')."
        )
    defaults = DEFAULTS[name]

    beta = config_value(config, "beta")
    beta = defaults.get("beta", 1.0) if beta is None else _as_float(beta, "beta")
    beta_prime = config_value(config, "beta_prime")
    if beta_prime is not None:
        beta = beta_from_beta_prime(_as_float(beta_prime, "beta_prime"))
    _check_beta(beta, "beta")

    lam = config_value(config, "lambda")
    lam = defaults.get("lambda", 0.0) if lam is None else _as_float(lam, "lambda")
    if not math.isfinite(lam) or lam < 0:
        raise ValueError(
            f"lambda = {lam!r} must be a finite number >= 0 (the weight of the causal loss; 0 disables it)."
        )

    weight_normal = config_value(config, "cft_weight_normal_loss")
    if weight_normal is None:
        weight_normal = defaults.get("cft_weight_normal_loss", True)
    if not isinstance(weight_normal, bool):
        raise ValueError(f"cft_weight_normal_loss = {weight_normal!r} must be true or false.")

    if name == "sft":
        return SFTObjective()
    if name in ("pos", "igd"):
        return OBJECTIVES[name](beta=beta)
    if name == "cetrec":
        return CETRecObjective(lam=lam)
    return CFTObjective(beta=beta, lam=lam, weight_normal_loss=weight_normal)


# --------------------------------------------------------------------------------------------------------
# Per-item precomputation
# --------------------------------------------------------------------------------------------------------
def item_token_weights(
    objective: Objective, item_lengths: Tensor, item_token_ig: Tensor | None = None
) -> dict[str, Tensor]:
    """Per-item weight tables ``{term: [N, L_max]}``, computed once per dataset (0 beyond each length).

    ``item_lengths [N]`` is ``|y|`` of every item's target (title tokens + EOS; 0 for the padding item);
    ``item_token_ig [N, L_max]`` the IG of each of those tokens (IGD only). Look weights up per step with
    ``gather_token_weights``.
    """
    lengths = torch.as_tensor(item_lengths, dtype=torch.long).reshape(-1)
    if (lengths < 0).any():
        raise ValueError("item_lengths must be >= 0")
    width = max(int(lengths.max()) if lengths.numel() else 0, 1)
    if item_token_ig is not None:
        if (
            item_token_ig.dim() != 2
            or item_token_ig.shape[0] != lengths.numel()
            or item_token_ig.shape[1] < width
        ):
            raise ValueError(
                f"item_token_ig must be [N={lengths.numel()}, L_max>={width}], got {tuple(item_token_ig.shape)}"
            )
        item_token_ig = item_token_ig[:, :width]
    pos = torch.arange(1, width + 1).expand(lengths.numel(), width)
    seq = lengths[:, None].expand_as(pos)
    valid = (pos <= seq).float()
    weights = objective.token_weights(
        pos.reshape(-1), seq.reshape(-1), None if item_token_ig is None else item_token_ig.reshape(-1)
    )
    return {k: v.reshape(pos.shape) * valid for k, v in weights.items()}


def gather_token_weights(
    table: Mapping[str, Tensor], item_ids: Tensor, token_pos: Tensor
) -> dict[str, Tensor]:
    """Per-token weights ``[T]`` from ``item_token_weights`` tables (``item_ids`` = target item of each token)."""
    return {k: v.to(item_ids.device)[item_ids, token_pos - 1] for k, v in table.items()}
