"""Trie-constrained beam search over item titles (D3 / IGD / BIGRec-style decoding).

Why a custom loop instead of ``model.generate(prefix_allowed_tokens_fn=...)``: the Hugging Face path calls a
Python function per beam per step, builds a dense ``[beams, vocab]`` mask, takes a top-k over
``beams x vocab`` and copies the whole KV cache (prompt included) twice per step (``torch.cat`` in
``DynamicLayer.update`` and ``index_select`` in ``reorder_cache``). Here:

* users are batched with LEFT padding, explicit ``position_ids = cumsum(mask) - 1``, one prompt pass per
  user (``logits_to_keep=1``); the tokens every prompt of a batch starts with (the template's instruction)
  run once for the whole batch;
* beams of one user share its prompt KV: it is stored once per user, never copied per beam, and a
  registered attention function (:func:`shared_prompt_attention`) attends to it with all beams and query
  heads of a KV head as the rows of one matmul; reordering beams only gathers the few generated positions
  (``_SharedPromptLayer``), and new tokens are written in place (no ``cat``);
* allowed tokens come from the CSR trie: only the <= max-children allowed log-probs per beam are gathered
  (``logits.gather - logsumexp``), IG calibration / D3 ensemble are elementwise on that small set;
* users whose search is over are dropped from the batch (cache rows compacted) so they cost nothing.

The selection rules replicate transformers 5.23 ``GenerationMixin._beam_search`` exactly (checked against
``generate_reference`` in the tests): per step the top ``2K`` candidates; those among the first ``K`` that
end with EOS become finished hypotheses scored ``sum / gen_len ** length_penalty`` with ``gen_len`` the
generated length *including* EOS; the first ``K`` non-EOS candidates keep running; a user stops when
``early_stopping`` says no running beam can beat its worst kept hypothesis (``False``, HF's default used by
the references: best running score / current length ** lp; ``"never"``: the exact bound with the maximal
length for lp > 0; ``True``: as soon as K hypotheses are kept). With ``length_penalty = 0`` all three are
exact since scores only decrease.

Token score (IGD eq. 9-10 and D3): ``w * (gs * log p_LLM + (1 - gs) * log m)`` where ``m`` is the
traditional model's normalised probability mass under the token's subtree and ``w = 1 - alpha * IG~``
(applied last, as the reference IGD logits processor that multiplies the processed scores); with no
ensemble (gs = 1) and alpha = 0 it is the plain log-probability.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager, nullcontext

import torch
from transformers import AttentionInterface
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from recbole_llm.model.trie import TitleTrie

__all__ = [
    "benchmark_decoder",
    "calibrated_step_scores",
    "constrained_beam_search",
    "ensemble_step_scores",
    "generate_reference",
    "leaves_to_items",
]

EnsembleSource = torch.Tensor | Callable[[torch.Tensor], torch.Tensor]


# ---------------------------------------------------------------------------------------------- pure maths
def calibrated_step_scores(logp: torch.Tensor, ig_norm: torch.Tensor, alpha: float) -> torch.Tensor:
    """IGD eq. 9-10: ``(1 - alpha * IG~) * log p`` (alpha = 0 leaves the log-probs unchanged)."""
    if alpha == 0.0:
        return logp
    return (1.0 - alpha * ig_norm.to(logp.dtype)) * logp


def ensemble_step_scores(logp: torch.Tensor, marginal: torch.Tensor, gs: float) -> torch.Tensor:
    """D3 ensemble: ``gs * log p_LLM + (1 - gs) * log m`` (m = normalised prefix marginal, > 0)."""
    if gs == 1.0:
        return logp
    return gs * logp + (1.0 - gs) * torch.log(marginal).to(logp.dtype)


# ---------------------------------------------------------------------------------------------- KV cache
SHARED_PROMPT_ATTENTION = "recbole_llm_shared_prompt"


class _SharedPromptLayer(DynamicLayer):
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


class _SharedPrompt:
    """What :func:`shared_prompt_attention` needs besides the step's own keys: the per-user prompt KV of every
    layer and an additive ``[users, prompt_len]`` bias (0, or -inf on the left padding)."""

    def __init__(self, layers: list[_SharedPromptLayer], prompt_mask: torch.Tensor):
        self.layers = layers
        self.cache = Cache(layers=layers)
        self.set_mask(prompt_mask)

    def set_mask(self, prompt_mask: torch.Tensor) -> None:
        zero = torch.zeros((), device=prompt_mask.device)
        self.bias = torch.where(prompt_mask.bool(), zero, torch.tensor(-math.inf, device=prompt_mask.device))
        self.mask = prompt_mask

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
    it only for its decoding steps and passes the :class:`_SharedPrompt` as the ``shared_prompt`` keyword
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


def _attention_configs(model: torch.nn.Module) -> list:
    """The configs that attention modules read ``_attn_implementation`` from (usually one shared object)."""
    found = {}
    for module in model.modules():
        cfg = getattr(module, "config", None)
        if hasattr(module, "layer_idx") and hasattr(cfg, "_attn_implementation_internal"):
            found[id(cfg)] = cfg
    return list(found.values())


@contextmanager
def _use_attention(configs: list, name: str):
    """Temporarily route attention modules (via their ``configs``) to the registered attention ``name``."""
    previous = [cfg._attn_implementation_internal for cfg in configs]
    for cfg in configs:
        cfg._attn_implementation_internal = name
    try:
        yield
    finally:
        for cfg, old in zip(configs, previous):
            cfg._attn_implementation_internal = old


def _supports_shared_prompt(model: torch.nn.Module) -> bool:
    """Full-attention layers only (no sliding window / linear layers) and attention via AttentionInterface."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not getattr(base, "_supports_attention_backend", False) or not _attention_configs(base):
        return False
    return all(type(layer) is DynamicLayer for layer in DynamicCache(config=base.config).layers)


# ---------------------------------------------------------------------------------------------- helpers
def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _left_pad(
    prompts: Sequence[Sequence[int]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        if len(p):
            ids[i, width - len(p) :] = torch.as_tensor(p, dtype=torch.long)
            mask[i, width - len(p) :] = 1
    return ids.to(device), mask.to(device)


def _validate(prompts, trie, num_beams, ensemble_weight, early_stopping) -> None:
    if num_beams < 1:
        raise ValueError(f"num_beams must be >= 1, got {num_beams}.")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token (the decoder conditions on it).")
    if not isinstance(trie, TitleTrie):
        raise ValueError("trie must be a TitleTrie (build it with TitleTrie.build).")
    if not 0.0 <= ensemble_weight <= 1.0:
        raise ValueError(f"ensemble_weight (gs) must be in [0, 1], got {ensemble_weight}.")
    if early_stopping not in (True, False, "never"):
        raise ValueError(
            f"early_stopping must be True, False or 'never' (as in transformers), got {early_stopping!r}."
        )


# ---------------------------------------------------------------------------------------------- search
@torch.no_grad()
def constrained_beam_search(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    trie: TitleTrie,
    num_beams: int = 10,
    length_penalty: float = 0.0,
    ig_alpha: float = 0.0,
    max_new_tokens: int | None = None,
    pad_token_id: int | None = None,
    batch_size: int = 16,
    ensemble: EnsembleSource | None = None,
    ensemble_weight: float = 1.0,
    early_stopping: bool | str = False,
    kv_cache: str = "auto",
    prompt_item_index: Sequence[Sequence[int]] | None = None,
    embed_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    share_prompt_prefix: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank the titles of ``trie`` for each prompt; returns ``(leaf_ids [U, K], scores [U, K])`` on CPU.

    ``leaf_ids`` are trie leaf ids, best first, ``-1`` (score ``-inf``) where fewer than ``num_beams``
    hypotheses exist. ``ensemble``: per-user item probabilities indexed by item id, a ``[U, n_ids]`` tensor or
    a callable mapping a LongTensor of prompt indices to ``[len, n_ids]``; combined with weight
    ``ensemble_weight`` (D3's gs). Prompts are sorted by length into batches of ``batch_size`` (less
    padding); results do not depend on the batching. ``kv_cache``: "auto" (prompt KV shared by the beams
    of a user when every layer is full attention through transformers' AttentionInterface), "shared"
    (the same, an error if impossible) or "dynamic" (plain DynamicCache, beams copy the prompt KV).
    ``share_prompt_prefix``: the tokens that all prompts of a batch start with (the template's instruction)
    run once for the batch (full-attention models only).
    ``embed_fn(input_ids, item_index) -> inputs_embeds`` with ``prompt_item_index`` (one list per prompt,
    aligned with its tokens) lets the prompt pass add CETRec's temporal embeddings; generated title tokens
    belong to no history item, so later steps embed normally.
    """
    _validate(prompts, trie, num_beams, ensemble_weight, early_stopping)
    if kv_cache not in ("auto", "shared", "dynamic"):
        raise ValueError(f"kv_cache must be 'auto', 'shared' or 'dynamic', got {kv_cache!r}.")
    full_attention = _supports_shared_prompt(model)
    if kv_cache == "shared" and not full_attention:
        raise ValueError(
            "kv_cache='shared' needs full-attention layers that use transformers' AttentionInterface; "
            "use kv_cache='auto' or 'dynamic' for this model."
        )
    if prompt_item_index is not None and len(prompt_item_index) != len(prompts):
        raise ValueError("prompt_item_index needs one list per prompt (aligned with its tokens).")
    device = _model_device(model)
    t = trie.to(device)
    max_new = int(max_new_tokens or trie.max_depth)
    pad = trie.eos_token_id if pad_token_id is None else int(pad_token_id)
    n_users = len(prompts)
    out_leaf = torch.full((n_users, num_beams), -1, dtype=torch.long)
    out_score = torch.full((n_users, num_beams), -math.inf)
    order = sorted(range(n_users), key=lambda i: len(prompts[i]))
    with_index = embed_fn is not None and prompt_item_index is not None
    for b0 in range(0, n_users, batch_size):
        idx = order[b0 : b0 + batch_size]
        cumsum = None
        if ensemble is not None and ensemble_weight < 1.0:
            users = torch.as_tensor(idx, dtype=torch.long)
            probs = ensemble(users) if callable(ensemble) else ensemble[users]
            cumsum = t.item_score_cumsum(probs.to(device))
        logits, cache, mask = _prompt_pass(
            model,
            [list(prompts[i]) for i in idx],
            [list(prompt_item_index[i]) for i in idx] if with_index else None,
            embed_fn if with_index else None,
            pad,
            device,
            share_prompt_prefix and full_attention,
        )
        leaves, scores = _search_batch(
            model,
            logits,
            cache,
            mask,
            t,
            num_beams,
            float(length_penalty),
            float(ig_alpha),
            max_new,
            cumsum,
            float(ensemble_weight),
            early_stopping,
            kv_cache != "dynamic" and full_attention,
        )
        out_leaf[idx] = leaves.cpu()
        out_score[idx] = scores.cpu()
    return out_leaf, out_score


def _common_prefix_len(rows: list[list]) -> int:
    """Length of the longest prefix shared by every row."""
    first, n = rows[0], min(len(r) for r in rows)
    for j in range(n):
        tok = first[j]
        if any(r[j] != tok for r in rows):
            return j
    return n


def _prompt_pass(model, prompts, item_index, embed_fn, pad, device, share_prefix):
    """Run the prompts once: ``(last-position logits [U, V] float32, DynamicCache, attention mask [U, P])``.

    Prompts are left padded with explicit ``position_ids = cumsum(mask) - 1``. With ``share_prefix`` the
    tokens common to all prompts (capped so each keeps at least one token of its own) run once, as one row,
    and their KV is repeated for the users before the rest runs; causal attention makes this exact.
    """
    n_users = len(prompts)
    keys = [list(zip(p, ix)) for p, ix in zip(prompts, item_index)] if item_index is not None else prompts
    n0 = 0
    if share_prefix and n_users > 1:
        n0 = min(_common_prefix_len(keys), min(len(p) for p in prompts) - 1)

    def inputs(ids: torch.Tensor, index: torch.Tensor | None) -> dict[str, torch.Tensor]:
        return {"input_ids": ids} if embed_fn is None else {"inputs_embeds": embed_fn(ids, index)}

    cache = DynamicCache(config=model.config)
    if n0 > 0:
        head = torch.tensor([prompts[0][:n0]], dtype=torch.long, device=device)
        head_index = None if item_index is None else torch.tensor([item_index[0][:n0]], device=device)
        model(
            **inputs(head, head_index),
            position_ids=torch.arange(n0, device=device)[None, :],
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        cache.batch_repeat_interleave(n_users)
    ids, mask = _left_pad([p[n0:] for p in prompts], pad, device)
    index = None
    if item_index is not None:
        index, _ = _left_pad([ix[n0:] for ix in item_index], -1, device)
    positions = n0 + (mask.cumsum(1) - 1).clamp_min(0)
    full_mask = torch.cat([torch.ones(n_users, n0, dtype=mask.dtype, device=device), mask], 1)
    out = model(
        **inputs(ids, index),
        attention_mask=full_mask,
        position_ids=positions,
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    return out.logits[:, -1, :].float(), cache, full_mask


def _search_batch(
    model,
    logits,
    cache,
    mask,
    t: TitleTrie,
    K,
    lp,
    alpha,
    max_new,
    cumsum,
    gs,
    early_stopping,
    shared,
):
    device = t.device
    n_users, prompt_w = mask.shape
    neg_inf = torch.tensor(-math.inf, device=device)
    slot_user = torch.arange(n_users, device=device)  # users still searched, in cache-row order
    next_pos = mask.sum(1)  # position of the first generated token, per user
    run_node = torch.zeros(n_users, 1, dtype=torch.long, device=device)
    run_score = torch.zeros(n_users, 1, device=device)
    unsat = torch.ones(n_users, dtype=torch.bool, device=device)  # HF's is_early_stop_heuristic_unsatisfied
    pool_score = torch.full((n_users, K), -math.inf, device=device)
    pool_leaf = torch.full((n_users, K), -1, dtype=torch.long, device=device)
    attn_full = None
    shared_prompt = None
    attn_configs = _attention_configs(model) if shared else []
    rank = torch.arange(2 * K, device=device)
    eos = t.eos_token_id

    for step in range(max_new):
        n_slots, kc = run_node.shape
        rows = n_slots * kc
        flat_node = run_node.reshape(-1)
        edges, valid = t.children(flat_node)
        width = edges.shape[1]
        tok = t.edge_token[edges]
        tok_score = logits.gather(1, tok) - torch.logsumexp(logits, dim=-1, keepdim=True)
        if cumsum is not None:
            row_user = slot_user.repeat_interleave(kc)
            marg = t.edge_marginal(cumsum, row_user, flat_node, edges)
            tok_score = ensemble_step_scores(tok_score, marg, gs)
        tok_score = calibrated_step_scores(tok_score, t.edge_ig_norm[edges], alpha)
        cand = torch.where(valid, run_score.reshape(rows, 1) + tok_score, neg_inf).view(n_slots, kc * width)
        n_keep = min(2 * K, kc * width)
        top_v, top_i = torch.topk(cand, n_keep, dim=1)
        top_e = edges.view(n_slots, kc * width).gather(1, top_i)
        top_beam = top_i // width
        top_child = t.edge_child[top_e]
        is_eos = t.edge_token[top_e] == eos
        finite = torch.isfinite(top_v)

        # f. finished hypotheses: EOS among the first K candidates, only while the user can still improve.
        pool_s, pool_l = pool_score[slot_user], pool_leaf[slot_user]
        can_add = unsat[slot_user]
        if early_stopping is True:
            can_add = can_add & ~torch.isfinite(pool_s).all(1)
        fin = is_eos & finite & (rank[:n_keep] < K)[None, :] & can_add[:, None]
        fin_score = torch.where(fin, top_v / float(step + 1) ** lp, neg_inf)
        merged_s, merged_i = torch.topk(torch.cat([pool_s, fin_score], 1), K, dim=1)
        merged_l = torch.cat([pool_l, t.node_leaf[top_child]], 1).gather(1, merged_i)
        merged_l = torch.where(torch.isfinite(merged_s), merged_l, torch.full_like(merged_l, -1))
        pool_score[slot_user], pool_leaf[slot_user] = merged_s, merged_l

        # e. running beams: the first K non-EOS candidates (stable, keeps the score order).
        ok = ~is_eos & finite
        keep = torch.argsort((~ok).to(torch.int8), dim=1, stable=True)[:, :K]
        ok_k = ok.gather(1, keep)
        new_score = torch.where(ok_k, top_v.gather(1, keep), neg_inf)
        new_node = torch.where(ok_k, top_child.gather(1, keep), torch.full_like(keep, -1))
        src_beam = top_beam.gather(1, keep)
        new_tok = torch.where(ok_k, t.edge_token[top_e.gather(1, keep)], torch.full_like(keep, eos))
        if keep.shape[1] < K:  # fewer candidates than beams (tiny catalogue): pad with dead beams
            padw = K - keep.shape[1]
            new_score = torch.nn.functional.pad(new_score, (0, padw), value=-math.inf)
            new_node = torch.nn.functional.pad(new_node, (0, padw), value=-1)
            src_beam = torch.nn.functional.pad(src_beam, (0, padw), value=0)
            new_tok = torch.nn.functional.pad(new_tok, (0, padw), value=eos)

        # g. early-stop heuristic (HF _check_early_stop_heuristic), per user.
        hyp_len = max_new if (early_stopping == "never" and lp > 0.0) else step + 1
        best = new_score[:, 0] / float(hyp_len) ** lp
        full = torch.isfinite(merged_s).all(1)
        improve = torch.where(full, best > merged_s.min(1).values, torch.isfinite(best))
        alive = unsat[slot_user] & improve
        if early_stopping is True:
            alive = alive & ~full
        unsat[slot_user] = alive
        if step + 1 >= max_new:
            break
        alive_list = alive.tolist()
        n_alive = sum(alive_list)
        if n_alive == 0:
            break

        # Cache: K beam rows per user after the prompt step, else reorder the generated part; drop finished
        # users once they are a quarter of the batch.
        if step == 0:
            if shared:
                layers = [_SharedPromptLayer(layer.keys, layer.values, K, max_new) for layer in cache.layers]
                shared_prompt = _SharedPrompt(layers, mask)
                cache = shared_prompt.cache
            else:
                cache.batch_repeat_interleave(K)
            attn_full = torch.cat(
                [
                    mask.repeat_interleave(K, 0),
                    torch.ones(n_users * K, max_new, dtype=mask.dtype, device=device),
                ],
                1,
            )
        else:
            src_rows = (torch.arange(n_slots, device=device)[:, None] * K + src_beam).reshape(-1)
            if shared:
                for layer in shared_prompt.layers:
                    layer.reorder_generated(src_rows)
            else:
                cache.reorder_cache(src_rows)
        if n_alive < n_slots and (n_slots - n_alive) * 4 >= n_slots:
            keep_slots = alive.nonzero().squeeze(1)
            keep_rows = (keep_slots[:, None] * K + torch.arange(K, device=device)).reshape(-1)
            if shared:
                shared_prompt.select(keep_slots, keep_rows)
            else:
                cache.batch_select_indices(keep_rows)
            attn_full = attn_full.index_select(0, keep_rows)
            slot_user = slot_user.index_select(0, keep_slots)
            next_pos = next_pos.index_select(0, keep_slots)
            new_score, new_node, new_tok = new_score[keep_slots], new_node[keep_slots], new_tok[keep_slots]
        # Users that stopped but were not compacted away keep dead beams: no hypotheses, no cost to others.
        dead = ~unsat[slot_user]
        new_score = new_score.masked_fill(dead[:, None], -math.inf)
        new_node = new_node.masked_fill(dead[:, None], -1)

        run_node, run_score = new_node, new_score
        n_rows = slot_user.shape[0] * K
        pos = (next_pos + step).repeat_interleave(K).view(n_rows, 1)
        step_kwargs = {}
        if shared:
            step_kwargs["shared_prompt"] = shared_prompt
        with _use_attention(attn_configs, SHARED_PROMPT_ATTENTION) if shared else nullcontext():
            out = model(
                input_ids=new_tok.reshape(n_rows, 1),
                attention_mask=attn_full[:, : prompt_w + step + 1],
                position_ids=pos,
                past_key_values=cache,
                use_cache=True,
                **step_kwargs,
            )
        logits = out.logits[:, -1, :].float()
        del out
    return pool_leaf, pool_score


# ---------------------------------------------------------------------------------------------- items
def leaves_to_items(
    trie: TitleTrie, leaf_ids: torch.Tensor, k: int | None = None, tie_break: str = "weight"
) -> torch.Tensor:
    """Expand ranked leaves ``[U, B]`` to ranked item ids ``[U, k]`` (-1 padded).

    A leaf shared by several items (duplicate titles) contributes all of them consecutively, in the trie's
    order: ``tie_break="weight"`` = descending item weight (training popularity), then ascending item id;
    ``"id"`` = ascending item id. ``k`` defaults to ``B``.
    """
    if tie_break not in ("weight", "id"):
        raise ValueError(f"tie_break must be 'weight' or 'id', got {tie_break!r}.")
    k = int(leaf_ids.shape[1] if k is None else k)
    ptr, items = trie.leaf_item_ptr.cpu(), trie.leaf_items.cpu()
    if tie_break == "id":
        items = items.clone()
        leaf_of = torch.repeat_interleave(torch.arange(trie.num_leaves), torch.diff(ptr))
        order = torch.argsort(leaf_of * (int(items.max()) + 1) + items)
        items = items[order]
    leaf_ids = leaf_ids.cpu()
    safe = leaf_ids.clamp_min(0)
    counts = torch.where(leaf_ids >= 0, ptr[safe + 1] - ptr[safe], torch.zeros_like(safe))
    width = int(counts.max()) if counts.numel() else 0
    offs = torch.arange(max(width, 1))
    ok = offs[None, None, :] < counts[..., None]
    pos = (ptr[safe][..., None] + offs).clamp_max(max(items.shape[0] - 1, 0))
    flat = torch.where(ok, items[pos], torch.full_like(pos, -1)).reshape(leaf_ids.shape[0], -1)
    okf = ok.reshape(leaf_ids.shape[0], -1)
    keep = torch.argsort((~okf).to(torch.int8), dim=1, stable=True)[:, :k]
    res = torch.where(okf.gather(1, keep), flat.gather(1, keep), torch.full_like(keep, -1))
    if res.shape[1] < k:
        res = torch.nn.functional.pad(res, (0, k - res.shape[1]), value=-1)
    return res


# ---------------------------------------------------------------------------------------------- oracle
class _IGReferenceProcessor:
    """Reference-style IG calibration: loops over beams, multiplies allowed log-probs by 1 - alpha*IG~."""

    def __init__(self, trie: TitleTrie, prompt_len: int, alpha: float):
        self.trie, self.prompt_len, self.alpha = trie, prompt_len, alpha

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.clone()
        for row, seq in enumerate(input_ids.tolist()):
            node = 0
            for tok in seq[self.prompt_len :]:
                node = int(self.trie.advance(torch.tensor([node]), torch.tensor([tok]))[0])
                if node < 0:
                    break
            if node < 0:
                continue
            a, b = int(self.trie.child_ptr[node]), int(self.trie.child_ptr[node + 1])
            toks = self.trie.edge_token[a:b]
            w = 1.0 - self.alpha * self.trie.edge_ig_norm[a:b].to(scores.dtype).to(scores.device)
            scores[row, toks] = scores[row, toks] * w
        return scores


@torch.no_grad()
def generate_reference(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    trie: TitleTrie,
    num_beams: int = 10,
    length_penalty: float = 0.0,
    ig_alpha: float = 0.0,
    max_new_tokens: int | None = None,
    pad_token_id: int | None = None,
    early_stopping: bool | str = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Correctness oracle and speed baseline: ``model.generate`` beam search one user at a time with a
    ``prefix_allowed_tokens_fn`` over a dict of allowed continuations (as the D3/IGD/BIGRec references).

    Returns ``(leaf_ids, scores)`` like :func:`constrained_beam_search`; HF's filler hypotheses (score
    <= -1e8, used when fewer than ``num_beams`` titles can be finished) are reported as ``-1``.
    """
    from transformers import LogitsProcessorList

    _validate(prompts, trie, num_beams, 1.0, early_stopping)
    if num_beams < 2:
        raise ValueError(
            "generate_reference needs num_beams >= 2 (transformers runs greedy search for 1 beam)."
        )
    cpu = trie.to("cpu")
    device = _model_device(model)
    eos = trie.eos_token_id
    allowed: dict[tuple[int, ...], list[int]] = {}
    for leaf in range(cpu.num_leaves):
        toks = cpu.leaf_tokens(leaf)
        for j in range(len(toks)):
            nxt = allowed.setdefault(tuple(toks[:j]), [])
            if toks[j] not in nxt:
                nxt.append(toks[j])
    max_new = int(max_new_tokens or trie.max_depth)
    pad = eos if pad_token_id is None else int(pad_token_id)
    out_leaf = torch.full((len(prompts), num_beams), -1, dtype=torch.long)
    out_score = torch.full((len(prompts), num_beams), -math.inf)
    for u, prompt in enumerate(prompts):
        n = len(prompt)

        def prefix_fn(batch_id: int, seq: torch.Tensor, n: int = n) -> list[int]:
            return allowed.get(tuple(seq[n:].tolist()), [eos])

        procs = LogitsProcessorList([_IGReferenceProcessor(cpu, n, ig_alpha)]) if ig_alpha else None
        ids = torch.tensor([list(prompt)], device=device)
        gen = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            num_beams=num_beams,
            num_return_sequences=num_beams,
            prefix_allowed_tokens_fn=prefix_fn,
            logits_processor=procs,
            length_penalty=length_penalty,
            max_new_tokens=max_new,
            early_stopping=early_stopping,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=pad,
            return_dict_in_generate=True,
            output_scores=True,
        )
        for r, (seq, score) in enumerate(zip(gen.sequences[:, n:].tolist(), gen.sequences_scores.tolist())):
            if score <= -1e8 or eos not in seq:
                continue
            leaf = int(cpu.node_leaf[cpu.walk(seq[: seq.index(eos) + 1])[-1]])
            out_leaf[u, r], out_score[u, r] = leaf, score
    return out_leaf, out_score


# ---------------------------------------------------------------------------------------------- timing
def benchmark_decoder(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    trie: TitleTrie,
    num_beams: int = 10,
    length_penalty: float = 0.0,
    batch_size: int = 16,
    reference: bool = True,
    warmup: bool = True,
) -> dict[str, float]:
    """Users/s of :func:`constrained_beam_search` (and of :func:`generate_reference` if ``reference``),
    their speed ratio, and the share of users whose ranked leaves agree (outside the hot path)."""

    def _sync() -> None:
        if _model_device(model).type == "cuda":
            torch.cuda.synchronize()

    if warmup:
        constrained_beam_search(model, prompts[:1], trie, num_beams, length_penalty, batch_size=1)
    _sync()
    t0 = time.perf_counter()
    fast_leaf, _ = constrained_beam_search(
        model, prompts, trie, num_beams, length_penalty, batch_size=batch_size
    )
    _sync()
    res = {"users": float(len(prompts)), "fast_users_per_s": len(prompts) / (time.perf_counter() - t0)}
    if reference:
        t0 = time.perf_counter()
        ref_leaf, _ = generate_reference(model, prompts, trie, num_beams, length_penalty)
        _sync()
        res["reference_users_per_s"] = len(prompts) / (time.perf_counter() - t0)
        res["speedup"] = res["fast_users_per_s"] / res["reference_users_per_s"]
        res["agreement"] = float((fast_leaf == ref_leaf).all(1).float().mean())
    return res
