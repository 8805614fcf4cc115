"""BIGRec grounding: map freely generated titles to catalogue items by L2 distance of LLM embeddings.

A title (generated or from the catalogue) is embedded by the last-layer hidden state of its last real
token (BIGRec and CFT reference code: ``hidden_states[-1][:, -1, :]`` of the tokenised title text, with
left padding and no EOS): EOS is stripped (``strip_eos``) from catalogue titles and from generations,
and a generation cut at the length limit without EOS is embedded at its last generated token. Each generated title
is matched to all item embeddings by L2 distance.

Ranking rules (``bigrec_rank``):

* ``"bigrec"`` (original BIGRec): one generation; items ranked by distance to it.
* ``"cft"`` (CFT §4.1.4, also used by CETRec): R generations (5 in the papers), in beam order.
  Top-R = the best match of each generation (generation order); the next R = the second-best match of
  each; and so on, rank-major. Duplicates keep their first occurrence and later ones are skipped, so the
  list always has K distinct items (the CFT reference code keeps duplicates, which can count one hit
  twice; with no duplicates our top-10 from 5 generations equals theirs exactly).

Ties (equal distances, e.g. items sharing one title and hence one embedding) go to the lower item index.
Exact ties are only guaranteed to compare equal when the distances come out bit-identical; pass
``compute_dtype=torch.float64`` or ground over unique titles if that matters.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

GROUNDING_RULES = ("bigrec", "cft")
CFT_GENERATIONS = 5  # CFT §4.1.4 (and CETRec) ground 5 generations


def l2_ground(
    gen_emb: Tensor,
    item_emb: Tensor,
    k: int,
    *,
    chunk_size: int = 8192,
    compute_dtype: torch.dtype = torch.float32,
    exclude: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The ``k`` nearest items of each generated embedding: ``(indices [G, k], L2 distances [G, k])``.

    ``exclude [G, N]`` (bool) puts those items at distance ``inf``: they come last, after every other item
    (``exclude_history``; callers drop them by their infinite distance).

    Processes items in chunks of ``chunk_size`` (memory ``G × chunk``; never ``G × N × H``) with
    ``‖a‖² − 2a·b + ‖b‖²`` clamped at 0. Sorting is stable and earlier chunks come first in every merge,
    so equal distances are ordered by item index. ``item_emb`` may live on the CPU or in bf16; chunks are
    moved to ``gen_emb``'s device and ``compute_dtype``.
    """
    if gen_emb.dim() != 2 or item_emb.dim() != 2 or gen_emb.shape[1] != item_emb.shape[1]:
        raise ValueError(
            f"expected gen_emb [G, H] and item_emb [N, H] with the same H, got {tuple(gen_emb.shape)} "
            f"and {tuple(item_emb.shape)}"
        )
    n_items = item_emb.shape[0]
    if not 1 <= k <= n_items:
        raise ValueError(f"k = {k} must be between 1 and the number of items ({n_items})")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    a = gen_emb.to(compute_dtype)
    a_sq = (a * a).sum(-1, keepdim=True)
    best_d = a.new_empty(a.shape[0], 0)
    best_i = torch.empty(a.shape[0], 0, dtype=torch.long, device=a.device)
    for start in range(0, n_items, chunk_size):
        b = item_emb[start : start + chunk_size].to(device=a.device, dtype=compute_dtype)
        dist = (a_sq - 2.0 * (a @ b.T) + (b * b).sum(-1)[None, :]).clamp_(min=0.0)
        if exclude is not None:
            dist.masked_fill_(exclude[:, start : start + chunk_size].to(dist.device), float("inf"))
        d_sorted, idx = torch.sort(dist, dim=1, stable=True)
        take = min(k, b.shape[0])
        merged_d = torch.cat([best_d, d_sorted[:, :take]], dim=1)
        merged_i = torch.cat([best_i, idx[:, :take] + start], dim=1)
        order = torch.sort(merged_d, dim=1, stable=True).indices[:, :k]
        best_d, best_i = merged_d.gather(1, order), merged_i.gather(1, order)
    return best_i, best_d.sqrt()


def dedup_first(candidates: Tensor) -> tuple[Tensor, Tensor]:
    """Mark repeats in each row: returns ``(is_first [B, M], n_unique [B])``; first occurrences win."""
    sorted_vals, order = torch.sort(candidates, dim=1, stable=True)
    repeat_sorted = torch.zeros_like(candidates, dtype=torch.bool)
    repeat_sorted[:, 1:] = sorted_vals[:, 1:] == sorted_vals[:, :-1]
    repeat = torch.empty_like(repeat_sorted).scatter_(1, order, repeat_sorted)
    return ~repeat, (~repeat).sum(1)


def bigrec_rank(
    gen_emb: Tensor,
    item_emb: Tensor,
    topk: int,
    *,
    rule: str = "cft",
    chunk_size: int = 8192,
    compute_dtype: torch.dtype = torch.float32,
    exclude: Tensor | None = None,
) -> Tensor:
    """Top-``topk`` item indices ``[B, topk]`` (best first) from generation embeddings ``[B, R, H]``.

    ``exclude [B, N]`` (bool, rows of ``item_emb``): items never ranked, masked in the distances before
    the ranking rule (``exclude_history``); ``-1`` pads a list when fewer items remain.

    ``rule="bigrec"`` uses generation 0 only; ``rule="cft"`` interleaves the r-th best matches of all R
    generations rank-major and de-duplicates (module docstring). ``topk`` is capped at the item count.
    Indices are rows of ``item_emb`` (add an offset if row 0 is not item 0).
    """
    if rule not in GROUNDING_RULES:
        raise ValueError(f"grounding rule {rule!r}: choose one of {', '.join(GROUNDING_RULES)}")
    if gen_emb.dim() != 3:
        raise ValueError(f"gen_emb must be [B, R, H] (R generations per sample), got {tuple(gen_emb.shape)}")
    batch, n_gen, hidden = gen_emb.shape
    k = min(int(topk), item_emb.shape[0])
    if k < 1 or n_gen < 1:
        raise ValueError(f"need topk >= 1 and at least one generation, got topk={topk}, R={n_gen}")
    if rule == "bigrec":
        idx, dist = l2_ground(
            gen_emb[:, 0], item_emb, k, chunk_size=chunk_size, compute_dtype=compute_dtype, exclude=exclude
        )
        return idx if exclude is None else torch.where(torch.isinf(dist), -1, idx)
    # k ranks per generation always suffice: generation 0 alone yields k distinct items.
    gen_exclude = None if exclude is None else exclude.repeat_interleave(n_gen, 0)
    idx, dist = l2_ground(
        gen_emb.reshape(-1, hidden),
        item_emb,
        k,
        chunk_size=chunk_size,
        compute_dtype=compute_dtype,
        exclude=gen_exclude,
    )
    if exclude is not None:
        idx = torch.where(torch.isinf(dist), -1, idx)
    candidates = idx.reshape(batch, n_gen, k).transpose(1, 2).reshape(batch, k * n_gen)  # rank-major
    is_first, _ = dedup_first(candidates)
    is_first = is_first & (candidates >= 0)
    position = torch.arange(candidates.shape[1], device=candidates.device).expand_as(candidates)
    key = position + (~is_first).long() * candidates.shape[1]  # unique items first, in list order
    keep = torch.sort(key, dim=1).indices[:, :k]
    ranked = candidates.gather(1, keep)
    return ranked if exclude is None else torch.where(is_first.gather(1, keep), ranked, -1)


@torch.no_grad()
def last_token_hidden(model: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """Last-layer hidden state ``[B, H]`` of each row's last non-pad token (left or right padding).

    Position ids are rebuilt from the mask so a padded row gives the same result as the row alone
    (HF's default positions ignore left padding). Call with the model in eval mode.
    """
    mask = attention_mask.long()
    if input_ids.shape != mask.shape or input_ids.dim() != 2:
        raise ValueError(
            f"input_ids and attention_mask must both be [B, L], got {tuple(input_ids.shape)}, {tuple(mask.shape)}"
        )
    if (mask.sum(1) == 0).any():
        raise ValueError("a row of attention_mask is all zeros: every sequence needs at least one token")
    position_ids = (mask.cumsum(1) - 1).clamp(min=0)
    kwargs = {"input_ids": input_ids, "attention_mask": mask, "position_ids": position_ids}
    try:  # skip the [B, L, V] LM head when the model supports it
        out = model(**kwargs, output_hidden_states=True, use_cache=False, logits_to_keep=1)
    except TypeError as err:
        if "logits_to_keep" not in str(err):
            raise
        out = model(**kwargs, output_hidden_states=True, use_cache=False)
    hidden = out.hidden_states[-1]
    last = (mask * torch.arange(mask.shape[1], device=mask.device)).argmax(1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


@torch.no_grad()
def embed_token_sequences(
    model: nn.Module,
    sequences: Sequence[Sequence[int]],
    *,
    pad_token_id: int,
    batch_size: int = 64,
    padding_side: str = "left",
    out_dtype: torch.dtype = torch.float32,
    progress: bool = False,
) -> Tensor:
    """Embed token-id sequences (item titles or generations) with ``last_token_hidden``: ``[N, H]``.

    Batches sequences of similar length together (sorted by length) and returns rows in input order,
    on the model's device. ``progress`` shows a bar over the batches (a whole catalogue takes a while).
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if any(len(s) == 0 for s in sequences):
        raise ValueError("cannot embed an empty token sequence (an empty title or generation)")
    device = next(model.parameters()).device
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    chunks: list[Tensor] = []
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc="Embed titles", disable=not progress, ncols=100):
        rows = [list(sequences[i]) for i in order[start : start + batch_size]]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for j, r in enumerate(rows):
            sl = slice(width - len(r), width) if padding_side == "left" else slice(0, len(r))
            ids[j, sl] = torch.tensor(r, dtype=torch.long)
            mask[j, sl] = 1
        chunks.append(last_token_hidden(model, ids.to(device), mask.to(device)).to(out_dtype))
    if not chunks:
        return torch.empty(0, 0, dtype=out_dtype, device=device)
    stacked = torch.cat(chunks)
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    return stacked[inverse.to(stacked.device)]


@torch.no_grad()
def embed_item_titles(
    model: nn.Module,
    target_sequences: Sequence[Sequence[int]],
    *,
    pad_token_id: int,
    eos_token_id: int,
    batch_size: int = 64,
    progress: bool = False,
) -> Tensor:
    """Every item's title embedding ``[N - 1, H]`` (row 0 = item 1): ``last_token_hidden`` of its target
    piece with EOS stripped, as BIGRec grounds to. ``target_sequences`` is indexed by item id, entry 0
    (padding) is skipped. One definition for BIGRec grounding and for CFT's LLM-initialised baselines."""
    sequences = [strip_eos(s, eos_token_id) for s in target_sequences[1:]]
    return embed_token_sequences(
        model, sequences, pad_token_id=pad_token_id, batch_size=batch_size, progress=progress
    )


def free_beam_generate(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    n_gen: int,
    max_new: int,
    pad_id: int,
    eos_id: int,
    embed_fn: Callable[[Tensor, int], Tensor] | None = None,
) -> list[list[list[int]]]:
    """BIGRec's free generation: ``n_gen`` beams per prompt, returned as token lists up to EOS (incl.).

    ``embed_fn(ids [1, L], row) -> inputs_embeds [1, L, H]`` gives the prompt's input embeddings (CETRec's
    temporal embeddings on its history tokens); generated tokens get the plain token embedding.
    """
    out = []
    device = next(model.parameters()).device
    for row, prompt in enumerate(prompts):
        ids = torch.tensor([prompt], device=device)
        extra = {} if embed_fn is None else {"inputs_embeds": embed_fn(ids, row)}
        gen = model.generate(
            input_ids=ids,
            **extra,
            attention_mask=torch.ones_like(ids),
            num_beams=n_gen,
            num_return_sequences=n_gen,
            max_new_tokens=max_new,
            do_sample=False,
            pad_token_id=pad_id,
            eos_token_id=eos_id,
        )[:, ids.shape[1] :]
        rows = []
        for seq in gen.tolist():
            end = seq.index(eos_id) + 1 if eos_id in seq else len(seq)
            rows.append(seq[:end] or [eos_id])
        out.append(rows)
    return out


def strip_eos(sequence: Sequence[int], eos_token_id: int) -> list[int]:
    """The tokens before the first EOS (BIGRec embeds the title text, not EOS); ``[eos]`` if none precede it."""
    seq = list(sequence)
    end = seq.index(eos_token_id) if eos_token_id in seq else len(seq)
    return seq[:end] or [eos_token_id]


def ground_generations(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    item_emb: Tensor,
    k: int,
    *,
    n_gen: int,
    rule: str,
    max_new_tokens: int,
    pad_token_id: int,
    eos_token_id: int,
    exclude: Tensor | None = None,
    embed_fn: Callable[[Tensor, int], Tensor] | None = None,
) -> Tensor:
    """BIGRec's decoder: free beam search, then L2 grounding of each generation to every item title.

    Returns rows of ``item_emb`` ``[U, k]``, best first (``-1`` where ``exclude [U, N]`` left too few). ``rule="cft"`` grounds :data:`CFT_GENERATIONS`
    generations whatever ``n_gen`` says (CFT §4.1.4).
    """
    if rule == "cft":
        n_gen = CFT_GENERATIONS
    generations = free_beam_generate(
        model, prompts, n_gen, max_new_tokens, pad_token_id, eos_token_id, embed_fn=embed_fn
    )
    flat = [strip_eos(g, eos_token_id) for row in generations for g in row]
    gen_emb = embed_token_sequences(model, flat, pad_token_id=pad_token_id).view(len(prompts), n_gen, -1)
    return bigrec_rank(gen_emb, item_emb, k, rule=rule, exclude=exclude)
