"""Trie-constrained beam search over item titles (D3 / IGD / BIGRec-style decoding).

Why a custom loop instead of ``model.generate(prefix_allowed_tokens_fn=...)``: the Hugging Face path calls a
Python function per beam per step, builds a dense ``[beams, vocab]`` mask, takes a top-k over
``beams x vocab`` and copies the whole KV cache (prompt included) twice per step. Here:

* users are batched with LEFT padding, explicit ``position_ids = cumsum(mask) - 1``, one prompt pass per
  user (``logits_to_keep=1``); the tokens every prompt of a batch starts with (the template's instruction)
  run once for the whole batch;
* beams of one user share its prompt KV, stored once per user (:mod:`.kv_cache`);
* allowed tokens come from the CSR trie: only the <= max-children allowed log-probs per beam are gathered
  (``logits.gather - logsumexp``), and the scorers (:mod:`.scorers`: IG calibration, D3 ensemble, length
  penalty) are elementwise on that small set;
* users whose search is over are dropped from the batch (cache rows compacted) so they cost nothing.

The selection rules replicate transformers 5.23 ``GenerationMixin._beam_search`` exactly (checked against
``benchmarks/hf_reference.py`` in the tests): per step the top ``2K`` candidates; those among the first ``K``
that end with EOS become finished hypotheses, scored by the scorers' ``finished_scores`` (with a length
penalty: ``sum / gen_len ** length_penalty``, ``gen_len`` the generated length *including* EOS); the first
``K`` non-EOS candidates keep running; a user stops when ``early_stopping`` says no running beam can beat its
worst kept hypothesis (``False``, HF's default used by the references: the best running score bounded at the
current length; ``"never"``: the exact bound with the maximal length for lp > 0; ``True``: as soon as K
hypotheses are kept). With ``length_penalty = 0`` all three are exact since scores only decrease.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import nullcontext

import torch
from transformers.cache_utils import DynamicCache

from recbole_llm.model.decoding.kv_cache import (
    SHARED_PROMPT_ATTENTION,
    SharedPrompt,
    attention_configs,
    supports_shared_prompt,
    use_attention,
)
from recbole_llm.model.decoding.scorers import BeamScorer, BeamStep, EnsembleSource, compose_scorers
from recbole_llm.model.decoding.weights import linear_weights_cast_once
from recbole_llm.model.trie import TitleTrie


def weights_device(model: torch.nn.Module) -> torch.device:
    """Where the LM's weights are: every tensor of the search is built there."""
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


def validate_search(
    prompts: Sequence[Sequence[int]], trie: TitleTrie, num_beams: int, early_stopping: bool | str
) -> None:
    """The search's input rules (shared with the HF reference in ``benchmarks/``), with the fix in each message."""
    if num_beams < 1:
        raise ValueError(f"num_beams must be >= 1, got {num_beams}.")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token (the decoder conditions on it).")
    if not isinstance(trie, TitleTrie):
        raise ValueError("trie must be a TitleTrie (build it with TitleTrie.build).")
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
    position_offset_fn: Callable[[torch.Tensor], torch.Tensor | None] | None = None,
    share_prompt_prefix: bool = True,
    scorers: Sequence[BeamScorer] | None = None,
    exclude_items: Sequence[Sequence[int]] | None = None,
    cast_weights_once: bool = True,
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
    belong to no history item, so later steps embed normally. ``position_offset_fn(item_index)`` (or
    None) is added to the prompt's position ids (CETRec's attention-level RoPE); generated tokens carry no
    offset and continue at the prompt's length.
    ``scorers``: the changes to beam scores (:mod:`.scorers`), in the order they apply, instead of the knobs
    ``length_penalty``, ``ig_alpha``, ``ensemble`` and ``ensemble_weight`` (which build the papers' scorers).
    ``exclude_items`` (one list of item ids per prompt, ``exclude_history``): a trie edge is allowed only
    while some item under it is not excluded (:func:`allowed_item_cumsum`), so no beam is spent on a title
    whose items are all excluded; a title shared with a non-excluded item stays reachable (drop the excluded
    items from it with ``leaves_to_items(..., exclude=...)``).
    ``cast_weights_once``: under autocast, the linear weights are cast to its dtype once for the whole call
    (:mod:`.weights`; bit-identical lists, one low-precision copy of those weights in memory meanwhile).
    """
    if scorers is None:
        scorers = compose_scorers(length_penalty, ig_alpha, ensemble, ensemble_weight)
    elif ensemble is not None or (length_penalty, ig_alpha, ensemble_weight) != (0.0, 0.0, 1.0):
        raise ValueError(
            "pass the changes to beam scores either as scorers=[...] or as length_penalty / ig_alpha / "
            "ensemble / ensemble_weight, not both."
        )
    validate_search(prompts, trie, num_beams, early_stopping)
    if kv_cache not in ("auto", "shared", "dynamic"):
        raise ValueError(f"kv_cache must be 'auto', 'shared' or 'dynamic', got {kv_cache!r}.")
    full_attention = supports_shared_prompt(model)
    if kv_cache == "shared" and not full_attention:
        raise ValueError(
            "kv_cache='shared' needs full-attention layers that use transformers' AttentionInterface; "
            "use kv_cache='auto' or 'dynamic' for this model."
        )
    if prompt_item_index is not None and len(prompt_item_index) != len(prompts):
        raise ValueError("prompt_item_index needs one list per prompt (aligned with its tokens).")
    if exclude_items is not None and len(exclude_items) != len(prompts):
        raise ValueError("exclude_items needs one list of item ids per prompt (e.g. its history).")
    device = weights_device(model)
    t = trie.to(device)
    max_new = int(max_new_tokens or trie.max_depth)
    pad = trie.eos_token_id if pad_token_id is None else int(pad_token_id)
    n_users = len(prompts)
    out_leaf = torch.full((n_users, num_beams), -1, dtype=torch.long)
    out_score = torch.full((n_users, num_beams), -math.inf)
    order = sorted(range(n_users), key=lambda i: len(prompts[i]))
    with_index = embed_fn is not None and prompt_item_index is not None
    with linear_weights_cast_once(model, device.type) if cast_weights_once else nullcontext():
        for b0 in range(0, n_users, batch_size):
            idx = order[b0 : b0 + batch_size]
            users = torch.as_tensor(idx, dtype=torch.long)
            batch_scorers = [scorer.for_batch(users, t) for scorer in scorers]
            allowed_cs = None
            if exclude_items is not None:
                allowed_cs = allowed_item_cumsum(t, [exclude_items[i] for i in idx])
            logits, cache, mask = _prompt_pass(
                model,
                [list(prompts[i]) for i in idx],
                [list(prompt_item_index[i]) for i in idx] if with_index else None,
                embed_fn if with_index else None,
                position_offset_fn if with_index else None,
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
                batch_scorers,
                max_new,
                early_stopping,
                kv_cache != "dynamic" and full_attention,
                allowed_cs,
            )
            out_leaf[idx] = leaves.cpu()
            out_score[idx] = scores.cpu()
    return out_leaf, out_score


def allowed_item_cumsum(trie: TitleTrie, exclude_items: Sequence[Sequence[int]]) -> torch.Tensor:
    """``[U, n_items + 1]`` prefix sums, in trie (DFS) item order, of the items *not* excluded for each user.

    The items under any node are a contiguous range (``node_item_range``), so two look-ups count a
    subtree's remaining items; a count of 0 removes the edge from the allowed set. Ids the trie does not
    hold (``trie_items: train_targets``) are ignored.
    """
    n_ids = trie.item_leaf.shape[0]
    banned = torch.zeros(len(exclude_items), n_ids, dtype=torch.bool)
    for row, items in enumerate(exclude_items):
        ids = torch.as_tensor(list(items), dtype=torch.long)
        banned[row, ids[(ids >= 0) & (ids < n_ids)]] = True
    banned = banned.to(trie.device)
    ok = (~banned.index_select(1, trie.leaf_items)).long()
    return torch.nn.functional.pad(ok.cumsum(1), (1, 0))


def _common_prefix_len(rows: list[list]) -> int:
    """Length of the longest prefix shared by every row."""
    first, n = rows[0], min(len(r) for r in rows)
    for j in range(n):
        tok = first[j]
        if any(r[j] != tok for r in rows):
            return j
    return n


def _prompt_pass(model, prompts, item_index, embed_fn, offset_fn, pad, device, share_prefix):
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

    def shifted(positions: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
        offset = None if offset_fn is None or index is None else offset_fn(index)
        return positions if offset is None else positions + offset.to(positions.device)

    cache = DynamicCache(config=model.config)
    if n0 > 0:
        head = torch.tensor([prompts[0][:n0]], dtype=torch.long, device=device)
        head_index = None if item_index is None else torch.tensor([item_index[0][:n0]], device=device)
        model(
            **inputs(head, head_index),
            position_ids=shifted(torch.arange(n0, device=device)[None, :], head_index),
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        cache.batch_repeat_interleave(n_users)
    ids, mask = _left_pad([p[n0:] for p in prompts], pad, device)
    index = None
    if item_index is not None:
        index, _ = _left_pad([ix[n0:] for ix in item_index], -1, device)
    positions = shifted(n0 + (mask.cumsum(1) - 1).clamp_min(0), index)
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
    model: torch.nn.Module,
    logits: torch.Tensor,
    cache: DynamicCache,
    mask: torch.Tensor,
    t: TitleTrie,
    K: int,
    scorers: list[BeamScorer],
    max_new: int,
    early_stopping: bool | str,
    shared: bool,
    allowed_cs: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Beam search for one batch of users from their prompt pass: ``(leaf_ids [U, K], scores [U, K])``.

    ``allowed_cs`` (:func:`allowed_item_cumsum`, one row per user) removes edges with no allowed item."""
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
    attn_configs = attention_configs(model) if shared else []
    rank = torch.arange(2 * K, device=device)
    eos = t.eos_token_id
    longest = max_new if early_stopping == "never" else None  # the early-stopping bound's length

    for step in range(max_new):
        n_slots, kc = run_node.shape
        rows = n_slots * kc
        flat_node = run_node.reshape(-1)
        edges, valid = t.children(flat_node)
        if allowed_cs is not None:
            item_range = t.node_item_range[t.edge_child[edges]]  # [rows, width, 2]
            row_user = slot_user.repeat_interleave(kc)[:, None]
            remaining = allowed_cs[row_user, item_range[..., 1]] - allowed_cs[row_user, item_range[..., 0]]
            valid = valid & (remaining > 0)
        width = edges.shape[1]
        tok = t.edge_token[edges]
        tok_score = logits.gather(1, tok) - torch.logsumexp(logits, dim=-1, keepdim=True)
        if scorers:
            view = BeamStep(t, step, flat_node, edges, valid, tok, slot_user, kc)
            for scorer in scorers:
                tok_score = scorer.token_scores(tok_score, view)
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
        fin_v = top_v
        for scorer in scorers:
            fin_v = scorer.finished_scores(fin_v, step + 1)
        fin_score = torch.where(fin, fin_v, neg_inf)
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
        best = new_score[:, 0]
        for scorer in scorers:
            best = scorer.attainable_scores(best, step + 1, longest)
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
                shared_prompt = SharedPrompt.from_cache(cache, mask, K, max_new)
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
                shared_prompt.reorder_generated(src_rows)
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
        with use_attention(attn_configs, SHARED_PROMPT_ATTENTION) if shared else nullcontext():
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
