"""Beam search's KV cache: each user's prompt keys/values stored once and shared by all its beams.

With ``DynamicCache`` every beam holds its own copy of the prompt KV, and transformers copies the whole
cache (prompt included) twice per step (``torch.cat`` in ``DynamicLayer.update`` and ``index_select`` in
``reorder_cache``). Here the prompt KV is stored once per user and never copied per beam; a registered
attention function (:func:`shared_prompt_attention`) attends to it with all beams and query heads of a KV
head as the rows of one matmul; reordering beams only gathers the few generated positions
(:class:`SharedPromptLayer`), and new tokens are written in place (no ``cat``).
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
from transformers import AttentionInterface
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward

SHARED_PROMPT_ATTENTION = "recbole_llm_shared_prompt"


class SharedPromptLayer(DynamicLayer):
    """One layer's cache for beam search: the prompt KV once per *user*, the generated KV per *beam*.

    ``update`` writes the step's keys into a preallocated ``[users * beams, heads, max_new, dim]`` buffer and
    returns the generated part only; :func:`shared_prompt_attention` attends to the user's prompt KV and to
    the beam's own generated KV under one softmax. The prompt KV is never copied per beam (for 16 users x 10
    beams x 200 prompt tokens that copy alone was 1.6 GB and a quarter of SmolLM2's decoding time on CPU),
    and reordering beams only moves the few generated positions.
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, beams: int, max_new: int):
        super().__init__()
        users, heads, length, dim = keys.shape
        self.prompt_keys, self.prompt_values = keys, values
        self.gen_keys = keys.new_empty(users * beams, heads, max_new, dim)
        self.gen_values = values.new_empty(users * beams, heads, max_new, values.shape[-1])
        self.prompt_len, self.generated = length, 0
        self.dtype, self.device = keys.dtype, keys.device
        self.is_initialized = True
        self._sync_views()

    def _sync_views(self) -> None:
        self.keys = self.gen_keys[:, :, : self.generated]
        self.values = self.gen_values[:, :, : self.generated]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        q = key_states.shape[-2]
        if self.generated + q > self.gen_keys.shape[2]:
            raise RuntimeError("shared-prompt cache is full: more decoding steps than max_new_tokens.")
        self.gen_keys[:, :, self.generated : self.generated + q] = key_states
        self.gen_values[:, :, self.generated : self.generated + q] = value_states
        self.generated += q
        self._sync_views()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.prompt_len + self.generated

    def reorder_generated(self, src_rows: torch.Tensor) -> None:
        """New row r takes the generated KV of row ``src_rows[r]`` (same user, so same prompt KV)."""
        g = self.generated
        if g:
            self.gen_keys[:, :, :g] = self.gen_keys[src_rows, :, :g]
            self.gen_values[:, :, :g] = self.gen_values[src_rows, :, :g]

    def select(self, users: torch.Tensor, rows: torch.Tensor) -> None:
        """Keep only ``users`` (prompt rows) and their beams ``rows``."""
        self.prompt_keys = self.prompt_keys.index_select(0, users)
        self.prompt_values = self.prompt_values.index_select(0, users)
        self.gen_keys = self.gen_keys.index_select(0, rows)
        self.gen_values = self.gen_values.index_select(0, rows)
        self._sync_views()


class SharedPrompt:
    """What :func:`shared_prompt_attention` needs besides the step's own keys: the per-user prompt KV of every
    layer and an additive ``[users, prompt_len]`` bias (0, or -inf on the left padding)."""

    def __init__(self, layers: list[SharedPromptLayer], prompt_mask: torch.Tensor):
        self.layers = layers
        self.cache = Cache(layers=layers)
        self.set_mask(prompt_mask)

    @classmethod
    def from_cache(cls, cache: Cache, prompt_mask: torch.Tensor, beams: int, max_new: int) -> SharedPrompt:
        """Take over the prompt KV of ``cache`` (one row per user) for ``beams`` beams per user."""
        return cls(
            [SharedPromptLayer(layer.keys, layer.values, beams, max_new) for layer in cache.layers],
            prompt_mask,
        )

    def set_mask(self, prompt_mask: torch.Tensor) -> None:
        zero = torch.zeros((), device=prompt_mask.device)
        self.bias = torch.where(prompt_mask.bool(), zero, torch.tensor(-math.inf, device=prompt_mask.device))
        self.mask = prompt_mask

    def reorder_generated(self, src_rows: torch.Tensor) -> None:
        for layer in self.layers:
            layer.reorder_generated(src_rows)

    def select(self, users: torch.Tensor, rows: torch.Tensor) -> None:
        for layer in self.layers:
            layer.select(users, rows)
        self.set_mask(self.mask.index_select(0, users))


def shared_prompt_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Attention of one new token per beam over (its user's prompt KV) + (its own generated KV).

    Registered in transformers' ``AttentionInterface``; :func:`constrained_beam_search` switches a model to
    it only for its decoding steps and passes the :class:`SharedPrompt` as the ``shared_prompt`` keyword
    (transformers forwards extra model kwargs to the attention function). The prompt part is one matmul per
    user and KV head with all ``beams x query heads`` of that head as rows (GQA without ``repeat_kv``), so the
    prompt KV is read once per user instead of once per beam. Anything else falls back to SDPA.
    """
    ctx = kwargs.pop("shared_prompt", None)
    if ctx is None or query.shape[2] != 1:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    layer = ctx.layers[module.layer_idx]
    pk, pv = layer.prompt_keys, layer.prompt_values
    users, kv_heads, plen, dim = pk.shape
    rows, heads = query.shape[:2]
    beams, rep, gen = rows // users, heads // kv_heads, key.shape[2]
    scale = dim**-0.5 if scaling is None else scaling
    q_user = query.reshape(users, beams, kv_heads, rep, dim).transpose(1, 2).reshape(users, kv_heads, -1, dim)
    s_prompt = torch.matmul(q_user, pk.transpose(-1, -2))  # [users, kv_heads, beams * rep, plen]
    s_gen = torch.matmul(
        query.reshape(rows, kv_heads, rep, dim), key.transpose(-1, -2)
    )  # [rows, kvh, rep, gen]
    s_gen = s_gen.reshape(users, beams, kv_heads, rep, gen).transpose(1, 2).reshape(users, kv_heads, -1, gen)
    scores = torch.cat([s_prompt.float() * scale + ctx.bias[:, None, None, :], s_gen.float() * scale], -1)
    weights = torch.softmax(scores, dim=-1).to(value.dtype)
    if dropout > 0.0:
        weights = torch.nn.functional.dropout(weights, p=dropout)
    out = torch.matmul(weights[..., :plen], pv)  # [users, kv_heads, beams * rep, dim]
    out = out.reshape(users, kv_heads, beams, rep, dim).transpose(1, 2).reshape(rows, kv_heads, rep, dim)
    w_gen = weights[..., plen:].reshape(users, kv_heads, beams, rep, gen).transpose(1, 2)
    out = out + torch.matmul(w_gen.reshape(rows, kv_heads, rep, gen), value)
    return out.reshape(rows, 1, heads, dim), None


AttentionInterface.register(SHARED_PROMPT_ATTENTION, shared_prompt_attention)


def attention_configs(model: torch.nn.Module) -> list:
    """The configs that attention modules read ``_attn_implementation`` from (usually one shared object)."""
    found = {}
    for module in model.modules():
        cfg = getattr(module, "config", None)
        if hasattr(module, "layer_idx") and hasattr(cfg, "_attn_implementation_internal"):
            found[id(cfg)] = cfg
    return list(found.values())


@contextmanager
def use_attention(configs: list, name: str):
    """Temporarily route attention modules (via their ``configs``) to the registered attention ``name``."""
    previous = [cfg._attn_implementation_internal for cfg in configs]
    for cfg in configs:
        cfg._attn_implementation_internal = name
    try:
        yield
    finally:
        for cfg, old in zip(configs, previous):
            cfg._attn_implementation_internal = old


def supports_shared_prompt(model: torch.nn.Module) -> bool:
    """Full-attention layers only (no sliding window / linear layers) and attention via AttentionInterface."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not getattr(base, "_supports_attention_backend", False) or not attention_configs(base):
        return False
    return all(type(layer) is DynamicLayer for layer in DynamicCache(config=base.config).layers)
