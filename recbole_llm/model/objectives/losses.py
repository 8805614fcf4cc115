"""The loss maths every objective shares: token weights, token cross-entropy, the causal loss, Σ coef·num/den.

Objectives train on the per-target-token logits ``[T, V]`` (the model computes the LM head only at the
target positions). ``T`` target tokens (title tokens + EOS of each sample's target item) are described by
``labels [T]``, ``token_pos [T]`` (1-based position ``t`` inside its target), ``seq_len [T]`` (``|y|``) and,
for IGD, ``token_ig [T]``. Small pure functions, each checked on hand-computed numbers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from recbole_llm.model.prompt import IGNORE_INDEX

NORMAL = "normal"
CAUSAL = "causal"


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
    """Return ``(Σ w·ℓ, Σ w)`` separately so the caller can normalise over the whole effective batch."""
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


class _WeightsTokens(Protocol):
    def token_weights(
        self, token_pos: Tensor, seq_len: Tensor, token_ig: Tensor | None = None
    ) -> dict[str, Tensor]: ...

    def validation_weights(
        self, token_pos: Tensor, seq_len: Tensor, token_ig: Tensor | None = None
    ) -> dict[str, Tensor]: ...


def item_token_weights(
    objective: _WeightsTokens,
    item_lengths: Tensor,
    item_token_ig: Tensor | None = None,
    validation: bool = False,
) -> dict[str, Tensor]:
    """Per-item weight tables ``{term: [N, L_max]}``, computed once per dataset (0 beyond each length).

    ``item_lengths [N]`` is ``|y|`` of every item's target (title tokens + EOS; 0 for the padding item);
    ``item_token_ig [N, L_max]`` the IG of each of those tokens (IGD only). Weights depend only on the
    targets, so their row sums are the loss denominators, known before any forward pass. Look weights up
    per step with ``gather_token_weights``. ``validation`` tabulates the validation loss's weights instead.
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
    weigh = objective.validation_weights if validation else objective.token_weights
    weights = weigh(
        pos.reshape(-1), seq.reshape(-1), None if item_token_ig is None else item_token_ig.reshape(-1)
    )
    return {k: v.reshape(pos.shape) * valid for k, v in weights.items()}


def gather_token_weights(
    table: Mapping[str, Tensor], item_ids: Tensor, token_pos: Tensor
) -> dict[str, Tensor]:
    """Per-token weights ``[T]`` from ``item_token_weights`` tables (``item_ids`` = target item of each token)."""
    return {k: v.to(item_ids.device)[item_ids, token_pos - 1] for k, v in table.items()}
