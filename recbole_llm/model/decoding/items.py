"""From the search's trie leaves to ranked item ids, and ranked lists completed with popular items.

A leaf is one distinct title; items sharing a title (duplicates) share its leaf and are listed together,
ties broken by training popularity, then item id, so rankings are deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from recbole_llm.model.trie import TitleTrie


def history_mask(histories: Sequence[Sequence[int]], n_ids: int, device=None) -> torch.Tensor:
    """``[U, n_ids]`` bool, True at the items of each history (``exclude_history``); ids >= ``n_ids`` ignored."""
    rows = torch.repeat_interleave(torch.arange(len(histories)), torch.tensor([len(h) for h in histories]))
    cols = torch.tensor([i for h in histories for i in h], dtype=torch.long)
    keep = (cols >= 0) & (cols < n_ids)
    mask = torch.zeros(len(histories), n_ids, dtype=torch.bool)
    mask[rows[keep], cols[keep]] = True
    return mask if device is None else mask.to(device)


def mask_history_scores(scores: torch.Tensor, item_seq: torch.Tensor) -> torch.Tensor:
    """Full-sort scores ``[B, n_items]`` with ``-inf`` at every item of each row's history ``item_seq [B, L]``
    (padding id 0 included, which RecBole masks anyway): ``exclude_history`` for RecBole's baselines, whose
    sequential full-sort evaluation masks nothing (its ``history_index`` is None for sequential data)."""
    return scores.scatter(1, item_seq.to(scores.device).long(), float("-inf"))


def leaves_to_items(
    trie: TitleTrie,
    leaf_ids: torch.Tensor,
    k: int | None = None,
    tie_break: str = "weight",
    exclude: torch.Tensor | None = None,
) -> torch.Tensor:
    """Expand ranked leaves ``[U, B]`` to ranked item ids ``[U, k]`` (-1 padded).

    A leaf shared by several items (duplicate titles) contributes all of them consecutively, in the trie's
    order: ``tie_break="weight"`` = descending item weight (training popularity), then ascending item id;
    ``"id"`` = ascending item id. ``k`` defaults to ``B``. ``exclude [U, n_ids]`` (bool, :func:`history_mask`)
    drops those items: a title shared by a history item and another item yields only the other one.
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
    if exclude is not None:
        exclude = exclude.cpu()
        in_range = (flat >= 0) & (flat < exclude.shape[1])
        banned = exclude.gather(1, torch.where(in_range, flat, torch.zeros_like(flat))) & in_range
        okf = okf & ~banned
    keep = torch.argsort((~okf).to(torch.int8), dim=1, stable=True)[:, :k]
    res = torch.where(okf.gather(1, keep), flat.gather(1, keep), torch.full_like(keep, -1))
    if res.shape[1] < k:
        res = torch.nn.functional.pad(res, (0, k - res.shape[1]), value=-1)
    return res


def ranked_item_scores(
    trie: TitleTrie, leaf_ids: torch.Tensor, leaf_scores: torch.Tensor, ranked: torch.Tensor
) -> torch.Tensor:
    """The beam score of each ranked item ``[U, k]``: the score of the leaf (title) it came from.

    Items that share a title share its score; ``NaN`` where no beam reached the item (``-1`` padding,
    items added by ``fill: popularity``), so a saved ranking never shows a made-up score.
    """
    ptr, items = trie.leaf_item_ptr.cpu(), trie.leaf_items.cpu()
    n_ids = int(items.max()) + 1 if items.numel() else 1
    leaf_of_item = torch.full((max(n_ids, int(ranked.max()) + 1, 1),), -2, dtype=torch.long)
    leaf_of_item[items] = torch.repeat_interleave(torch.arange(trie.num_leaves), torch.diff(ptr))
    ranked = ranked.cpu()
    wanted = torch.where(ranked >= 0, leaf_of_item[ranked.clamp_min(0)], torch.full_like(ranked, -2))
    match = wanted[:, :, None] == leaf_ids.cpu()[:, None, :]  # [U, k, B]
    picked = (
        leaf_scores.cpu()
        .float()[:, None, :]
        .expand(match.shape)
        .gather(2, match.int().argmax(2, keepdim=True))
    )
    return torch.where(match.any(2), picked.squeeze(2), torch.full(ranked.shape, float("nan")))


def fill_by_popularity(
    ranked: torch.Tensor, order: torch.Tensor, exclude: torch.Tensor | None = None
) -> torch.Tensor:
    """Replace ``-1`` slots by the most popular training targets not already in the list (deterministic),
    never by an item that ``exclude [U, n_ids]`` marks (``exclude_history``)."""
    out = ranked.clone()
    for row in range(out.shape[0]):
        missing = int((out[row] < 0).sum())
        if not missing:
            continue
        present = set(out[row][out[row] >= 0].tolist())
        if exclude is not None:
            present |= set(torch.nonzero(exclude[row]).view(-1).tolist())
        extra = [i for i in order[: missing + len(present)].tolist() if i not in present][:missing]
        out[row, out.shape[1] - missing :] = torch.tensor(extra, dtype=out.dtype)
    return out


def ranking_to_scores(
    ranked: torch.Tensor, n_items: int, fill_order: torch.Tensor | None = None
) -> torch.Tensor:
    """Scores ``[B, n_items]`` for RecBole's full-sort API: ``K − r`` at rank r (all > 0).

    Items outside the list get finite scores below every listed one, in ``fill_order`` (item ids, best
    first; default ascending id): ``−1, −2, …``, so any sort of the scores (any RecBole path) ranks the
    listed items first and the rest deterministically. Item 0 (padding) and items absent from
    ``fill_order`` get ``−inf``. ``torch.topk`` over the scores reproduces the ranked list exactly.
    """
    batch, k = ranked.shape
    if fill_order is None:
        fill_order = torch.arange(1, n_items)
    base = torch.full((n_items,), float("-inf"), dtype=torch.float32)
    base[fill_order.cpu().long()] = -torch.arange(1, fill_order.numel() + 1, dtype=torch.float32)
    scores = base.to(ranked.device).expand(batch, n_items).clone()
    values = torch.arange(k, 0, -1, dtype=torch.float32, device=ranked.device).expand(batch, k)
    valid = ranked >= 0
    scores[torch.nonzero(valid, as_tuple=True)[0], ranked[valid]] = values[valid]
    return scores
