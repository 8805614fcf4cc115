"""From the search's trie leaves to ranked item ids, and ranked lists completed with popular items.

A leaf is one distinct title; items sharing a title (duplicates) share its leaf and are listed together,
ties broken by training popularity, then item id, so rankings are deterministic.
"""

from __future__ import annotations

import torch

from recbole_llm.model.trie import TitleTrie


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


def fill_by_popularity(ranked: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Replace ``-1`` slots by the most popular training targets not already in the list (deterministic)."""
    out = ranked.clone()
    for row in range(out.shape[0]):
        missing = int((out[row] < 0).sum())
        if not missing:
            continue
        present = set(out[row][out[row] >= 0].tolist())
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
