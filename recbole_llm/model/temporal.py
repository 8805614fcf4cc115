"""CETRec temporal embeddings (item-level time indices added at the LLM input).

Paper facts (CETRec §4.2-4.3) and our reading of them:

* Every token of the history item at distance ``k`` from the most recent item (``k = 0`` most recent,
  "(p_9, …, p_2, p_1, p_0)") gets the same temporal embedding ``p_k`` on top of the token embedding and
  the LLM's own positional encoding: ``I_t = x_t + p_t + p_k`` (Eq. 6). Tokens outside history items
  (instruction, separators, quotes, the target and generated tokens) get nothing ("p_k is set to null").
  Only the title tokens of an item count as the item (the §4.2.1 example indexes the 5 tokens of
  "Shawshank Redemption"); ``temporal_scope: piece`` also indexes the separator and quotes around it
  (the behaviour before issue 12). The prompt builder decides this (``PromptBatch.item_index``).
* SinPE: the fixed Transformer table of Eq. (3), ``p_{k,2i} = sin(k / 10000^{2i/d})``,
  ``p_{k,2i+1} = cos(k / 10000^{2i/d})`` -- no learnable parameters and no scale in the paper. We expose
  ``scale`` (default 1.0 = paper) because an un-scaled table has norm ``sqrt(d/2)`` (≈ 21 for d = 896),
  far larger than typical LLM token embeddings.
* RoPE: the paper gives only Eqs. (4)-(5) (``R^d_{Θ,m}``, a block-diagonal matrix of d/2 2×2 rotations)
  and says that earlier items get "larger rotation angles and greater deviation from their original
  representations", applied "at the input layer". We therefore rotate the input embedding of every
  history token by ``R^d_{Θ,k}``: pairs ``(2i, 2i+1)`` rotated by angle ``k·θ_i``, ``θ_i = 10000^{-2i/d}``.
  Index 0 (the most recent item) is the identity; norms are preserved. This is our interpretation.
* RoPE, the attention reading (``rope_attention``): §3.2 explains RoPE's gain by Eq. (5), a score that
  depends on ``n − m`` only, which holds for rotated queries and keys, not for a rotated input embedding.
  This variant adds each history token's index ``k`` to its position id, so the LLM's own rotary
  embedding turns its queries and keys by an extra ``R_{Θ,k}`` in every layer: the score of two tokens
  depends on ``(n + k_n) − (m + k_m)`` only. Other tokens (and generated ones) keep their positions,
  so generation continues at the prompt's length. It uses the LLM's ``rope_theta`` (not
  ``temporal_base``) and needs a RoPE backbone (Llama, Qwen2, SmolLM2).
* Counterfactual (§4.3): every history item gets the same index. The paper says both "the earliest time
  step" and "the temporal embedding of the first item i_0, denoted p_0" while p_0 is the most recent
  item's index in §4.2; ``cetrec_cf_index`` chooses: ``"earliest"`` (default: index
  ``history_len − 1`` of the sample), ``"latest"`` (index 0, the literal p_0) or a fixed int.

Both modules have no parameters and no state (tables are recomputed in float32 on every call, a few
kernels, so a bf16 ``model.to(dtype)`` cannot degrade them); checkpoints need nothing from them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from recbole_llm.utils.config_access import config_get

TEMPORAL_KINDS = ("none", "sinpe", "rope", "rope_attention")
CF_INDEX_MODES = ("earliest", "latest")


# --------------------------------------------------------------------------------------------------------
# Temporal indices
# --------------------------------------------------------------------------------------------------------
def prompt_item_index(piece_lengths: Sequence[int], piece_item_ordinal: Sequence[int | None]) -> list[int]:
    """Per-token temporal index of one prompt built from pre-tokenised pieces.

    ``piece_item_ordinal[j]`` is the chronological ordinal (0 = earliest) of the history item whose title
    piece ``j`` is, or None for any other piece. Returns ``k = n − 1 − ordinal`` for item tokens
    (n = number of history items) and −1 elsewhere.
    """
    if len(piece_lengths) != len(piece_item_ordinal):
        raise ValueError("piece_lengths and piece_item_ordinal must have one entry per prompt piece")
    ordinals = [o for o in piece_item_ordinal if o is not None]
    n = max(ordinals) + 1 if ordinals else 0
    out: list[int] = []
    for length, ordinal in zip(piece_lengths, piece_item_ordinal):
        if ordinal is not None and ordinal < 0:
            raise ValueError(f"item ordinals must be >= 0, got {ordinal}")
        out.extend([-1 if ordinal is None else n - 1 - ordinal] * int(length))
    return out


def counterfactual_index(
    item_index: Tensor, history_len: Tensor | int | None = None, mode: str | int = "earliest"
) -> Tensor:
    """Give every history token the same temporal index (CETRec's erased-order world); −1 stays −1.

    ``mode``: ``"earliest"`` → ``history_len − 1`` of each sample (default ``max index + 1``),
    ``"latest"`` → 0, an int ``c >= 0`` → ``c``.
    """
    if isinstance(mode, bool) or not isinstance(mode, str | int):
        raise ValueError(f"cetrec_cf_index = {mode!r}: use 'earliest', 'latest' or a non-negative integer")
    if isinstance(mode, str):
        if mode not in CF_INDEX_MODES:
            raise ValueError(
                f"cetrec_cf_index = {mode!r}: use 'earliest', 'latest' or a non-negative integer"
            )
        target = (
            _history_len(item_index, history_len) - 1 if mode == "earliest" else torch.zeros_like(item_index)
        )
    else:
        if mode < 0:
            raise ValueError(f"cetrec_cf_index = {mode} must be >= 0 (0 is the most recent item's index)")
        target = torch.full_like(item_index, mode)
    return torch.where(item_index >= 0, target.expand_as(item_index), torch.full_like(item_index, -1))


def _history_len(index: Tensor, history_len: Tensor | int | None) -> Tensor:
    if history_len is None:
        return index.max(dim=-1, keepdim=True).values.clamp(min=-1) + 1
    n = torch.as_tensor(history_len, dtype=index.dtype, device=index.device)
    return n.reshape(-1, *([1] * (index.dim() - 1))) if n.dim() > 0 else n


# --------------------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------------------
def _inverse_frequencies(n_pairs: int, dim: int, base: float, device: torch.device) -> Tensor:
    """``θ_i = base^{-2i/d}`` for i = 0..n_pairs−1, float32."""
    i = torch.arange(n_pairs, device=device, dtype=torch.float32)
    return torch.pow(torch.tensor(float(base), device=device), -2.0 * i / dim)


def sinusoidal_table(indices: Tensor, dim: int, base: float = 10000.0) -> Tensor:
    """Eq. (3) rows ``p_k`` for ``indices`` (any shape) → ``[..., dim]`` float32, interleaved sin/cos."""
    n_pairs = (dim + 1) // 2
    angles = indices.to(torch.float32)[..., None] * _inverse_frequencies(n_pairs, dim, base, indices.device)
    table = torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)  # [..., 2*n_pairs]
    return table[..., :dim]


class TemporalEmbedding(nn.Module):
    """Base class: ``forward(inputs_embeds [B, L, H], item_index [B, L]) -> [B, L, H]``.

    ``kind`` is the ``temporal_embedding`` value that builds the subclass (recorded in results files).
    """

    kind: str

    def __init__(self, hidden_size: int, max_items: int | None = None, base: float = 10000.0) -> None:
        super().__init__()
        if hidden_size < 1:
            raise ValueError(f"hidden_size must be >= 1, got {hidden_size}")
        self.hidden_size = int(hidden_size)
        self.max_items = max_items
        self.base = float(base)

    def _check(self, inputs_embeds: Tensor, item_index: Tensor) -> None:
        if inputs_embeds.shape[:-1] != item_index.shape or inputs_embeds.shape[-1] != self.hidden_size:
            raise ValueError(
                f"inputs_embeds {tuple(inputs_embeds.shape)} and item_index {tuple(item_index.shape)} do not match "
                f"(expected [B, L, {self.hidden_size}] and [B, L])"
            )
        # One host sync; only when a bound was asked for (a clear error beats silently extrapolating).
        if self.max_items is not None and item_index.numel() and int(item_index.max()) >= self.max_items:
            raise ValueError(
                f"temporal index {int(item_index.max())} >= temporal_max_items={self.max_items}: "
                "raise temporal_max_items or shorten the histories."
            )

    def position_offset(self, item_index: Tensor) -> Tensor | None:
        """What to add to each token's position id (None: positions are the LLM's own)."""
        return None

    def extra_repr(self) -> str:
        return f"hidden_size={self.hidden_size}, max_items={self.max_items}, base={self.base}"


class SinusoidalTemporalEmbedding(TemporalEmbedding):
    """CETRec SinPE: add ``scale · p_k`` (fixed Eq. 3 table) to every token of history item k."""

    kind = "sinpe"

    def __init__(
        self, hidden_size: int, max_items: int | None = None, scale: float = 1.0, base: float = 10000.0
    ):
        super().__init__(hidden_size, max_items, base)
        self.scale = float(scale)

    def forward(self, inputs_embeds: Tensor, item_index: Tensor) -> Tensor:
        self._check(inputs_embeds, item_index)
        is_item = (item_index >= 0)[..., None]
        pe = sinusoidal_table(item_index.clamp(min=0), self.hidden_size, self.base) * self.scale
        pe = torch.where(is_item, pe, torch.zeros((), dtype=pe.dtype, device=pe.device))
        return inputs_embeds + pe.to(inputs_embeds.dtype)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, scale={self.scale}"


class RotaryTemporalEmbedding(TemporalEmbedding):
    """CETRec RoPE (our reading): rotate each history token's input embedding by ``R^d_{Θ,k}``.

    Pairs ``(2i, 2i+1)`` turn by ``k·θ_i`` with ``θ_i = base^{-2i/d}`` (Eq. 4's block-diagonal matrix).
    """

    kind = "rope"

    def __init__(self, hidden_size: int, max_items: int | None = None, base: float = 10000.0):
        if hidden_size % 2:
            raise ValueError(
                f"RoPE temporal embedding needs an even hidden_size, got {hidden_size}; use sinpe."
            )
        super().__init__(hidden_size, max_items, base)

    def forward(self, inputs_embeds: Tensor, item_index: Tensor) -> Tensor:
        self._check(inputs_embeds, item_index)
        d = self.hidden_size
        angles = item_index.clamp(min=0).to(torch.float32)[..., None] * _inverse_frequencies(
            d // 2, d, self.base, item_index.device
        )
        cos, sin = angles.cos(), angles.sin()
        x = inputs_embeds.float().unflatten(-1, (d // 2, 2))
        x_even, x_odd = x[..., 0], x[..., 1]
        rotated = torch.stack((x_even * cos - x_odd * sin, x_even * sin + x_odd * cos), dim=-1).flatten(-2)
        return torch.where((item_index >= 0)[..., None], rotated.to(inputs_embeds.dtype), inputs_embeds)


class AttentionRotaryTemporal(TemporalEmbedding):
    """CETRec RoPE, attention reading: history token of item k is at position ``t + k`` (module docstring).

    The input embeddings are left alone; the backbone's rotary embedding applies ``R_{Θ,t+k}`` to its
    queries and keys.
    """

    kind = "rope_attention"

    def forward(self, inputs_embeds: Tensor, item_index: Tensor) -> Tensor:
        self._check(inputs_embeds, item_index)
        return inputs_embeds

    def position_offset(self, item_index: Tensor) -> Tensor:
        return item_index.clamp(min=0)


def temporal_kind(config: Any, default: str | None = None) -> str:
    """The validated ``temporal_embedding`` (absent -> ``default``, the objective's own, else ``none``)."""
    kind = config_get(config, "temporal_embedding")
    kind = str(default or "none" if kind is None else kind).strip().lower()
    if kind not in TEMPORAL_KINDS:
        raise ValueError(f"temporal_embedding = {kind!r}: choose one of {', '.join(TEMPORAL_KINDS)}")
    return kind


def build_temporal_module(
    config: Any, hidden_size: int, default: str | None = None
) -> TemporalEmbedding | None:
    """Temporal module from config keys ``temporal_embedding`` (none|sinpe|rope|rope_attention; absent -> ``default``,
    the objective's ``temporal_embedding``, e.g. rope for cetrec -- the paper's best variant -- else none),
    ``temporal_scale`` (sinpe, default 1.0), ``temporal_max_items`` (optional bound on the index, default
    none) and ``temporal_base`` (10000).
    """

    def get(key: str) -> Any:
        return config_get(config, key)

    kind = temporal_kind(config, default)
    if kind == "none":
        return None
    max_items = get("temporal_max_items")
    if max_items is not None and (
        isinstance(max_items, bool) or not isinstance(max_items, int) or max_items < 1
    ):
        raise ValueError(f"temporal_max_items = {max_items!r} must be a positive integer or null")
    base = get("temporal_base")
    base = 10000.0 if base is None else float(base)
    if base <= 1.0:
        raise ValueError(f"temporal_base = {base} must be > 1 (10000 in the paper's Eq. 3)")
    if kind == "rope":
        return RotaryTemporalEmbedding(hidden_size, max_items=max_items, base=base)
    if kind == "rope_attention":
        return AttentionRotaryTemporal(hidden_size, max_items=max_items, base=base)
    scale = get("temporal_scale")
    scale = 1.0 if scale is None else float(scale)
    return SinusoidalTemporalEmbedding(hidden_size, max_items=max_items, scale=scale, base=base)
