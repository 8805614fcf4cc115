"""Tensor (CSR) trie over the token sequences of item titles, with IGD information gain.

Every title is a token sequence ending with one EOS id (EOS appears nowhere else), so no title is a strict
prefix of another and every leaf is reached by an EOS edge. Items with identical sequences share one leaf.

Layout (all ``torch`` tensors, built vectorised with numpy, no Python loop per title or per node):

* nodes ``0..N-1`` in breadth-first order, root ``0``, each level in lexicographic order. Node ``n > 0``
  is reached by edge ``n - 1``, so ``edge_child[e] == e + 1`` and ``edge_parent`` is non-decreasing.
* ``child_ptr[N+1]``: the children of ``n`` are edges ``child_ptr[n]:child_ptr[n+1]``, sorted by token.
* leaves ``0..L-1`` in lexicographic (= depth-first) order, so the leaves (and items) under any node form
  the contiguous range ``node_leaf_range[n]`` (``node_item_range[n]`` over ``leaf_items``): a prefix sum
  over leaves or items answers any subtree sum with two look-ups (used for entropies and the D3 ensemble).

Information gain (IGD, paper eq. 5-6, as in the reference code). Item probability ``p_i = w_i / sum w``
(``w`` = frequency as a training target; default uniform). Items sharing a title *add* their weights onto
the leaf, ``P_l = sum_{i in l} p_i`` (the reference keyed frequencies by title and overwrote duplicates).
The uncertainty of node ``n`` is the *unnormalised* entropy over the leaves under it::

    S(n) = -sum_{l under n} P_l log P_l            IG(parent -> child) = S(parent) - S(child)

so ``IG(edge) = sum over the sibling subtrees of -P_l log P_l >= 0``; it is exactly 0 when the parent has a
single child, and also when every sibling subtree has zero weight (zero-weight titles carry no probability,
as in the reference whose IG trie only holds training targets); with all weights positive (and >= 2 titles)
IG = 0 exactly when the parent has a single child. Entropies renormalised within each node (q = p / P(n))
are *not* used: they can increase from parent to child (IG < 0).

Worked example (tokens, EOS = 9), weights a=[1,2,9]:1, b=[1,3,9]:1, c=[5,9]:2, total 4::

    P_a = P_b = 1/4, P_c = 1/2;  h = -P log P:  h_a = h_b = 0.3466, h_c = 0.3466
    S(root) = 1.0397, S([1]) = h_a + h_b = 0.6931, S([5]) = S([5,9]) = h_c = 0.3466
    IG(root->1) = 0.3466 (= h_c),  IG(root->5) = 0.6931,  IG([1]->2) = h_b,  IG([1]->3) = h_a,
    IG(EOS edges) = 0 (single child); zero-IG tokens: the three EOS tokens.

``edge_ig_norm``: IG min-max normalised among the children of the same node (= the tokens allowed at that
decoding step, IGD eq. 10), over the children whose subtree has weight: an edge into titles never seen as
a training target (weight 0) gets IG~ = 0 and leaves its siblings' min-max, so every other edge gets the
IG~ of the reference's trie of training targets (its raw IG would be the parent's whole entropy, IG~ = 1,
the strongest boost, for every unseen title when decoding over ``trie_items: all``). When all siblings have the same IG (in particular a single child) it is 0, i.e.
the decoding weight ``1 - alpha * IG~`` is 1, exactly as the reference ``TrieLogitsProcessor`` (which sets
the multiplier to 1.0 when ``max == min``); ``minmax_normalise_siblings(..., tie_value=1.0)`` gives the
other reading (IG~ = 1) if ever wanted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch

__all__ = ["TitleTrie", "minmax_normalise_siblings"]

# Sibling IG values closer than this (relative to the largest) are "all equal": cumulative-sum round-off must
# not turn two equal IGs into a 0-vs-1 normalisation.
_IG_TIE_RTOL = 1e-9


def minmax_normalise_siblings(
    edge_ig: torch.Tensor,
    child_ptr: torch.Tensor,
    tie_value: float = 0.0,
    include: torch.Tensor | np.ndarray | None = None,
) -> torch.Tensor:
    """Min-max normalise ``edge_ig`` within each node's children (contiguous CSR segments).

    Segments whose values are all equal (up to a 1e-9 relative tolerance, incl. single children) get
    ``tie_value``; 0 reproduces the IGD reference decoding (multiplier 1). ``include`` (bool per edge)
    normalises over the included edges only; the others get 0.
    """
    ig = edge_ig.detach().cpu().to(torch.float64).numpy()
    keep = np.ones(ig.shape[0], dtype=bool) if include is None else np.asarray(include, dtype=bool)
    ptr = child_ptr.detach().cpu().numpy()
    out = np.full(ig.shape[0], float(tie_value), dtype=np.float64)
    if ig.shape[0] == 0:
        return torch.from_numpy(out.astype(np.float32))
    counts = np.diff(ptr)
    starts = ptr[:-1][counts > 0]
    seg_counts = counts[counts > 0]
    seg_min = np.repeat(np.minimum.reduceat(np.where(keep, ig, np.inf), starts), seg_counts)
    seg_max = np.repeat(np.maximum.reduceat(np.where(keep, ig, -np.inf), starts), seg_counts)
    span = seg_max - seg_min
    with np.errstate(invalid="ignore"):
        varies = keep & (span > _IG_TIE_RTOL * np.maximum(np.abs(seg_max), np.finfo(np.float64).tiny))
    out[varies] = (ig[varies] - seg_min[varies]) / span[varies]
    out[~keep] = 0.0
    return torch.from_numpy(out.astype(np.float32))


@dataclass(eq=False)
class TitleTrie:
    """Immutable CSR trie; build with :meth:`build`. See the module docstring for the layout and IG."""

    eos_token_id: int
    max_depth: int  # longest sequence length (incl. EOS): enough new tokens to finish any title
    child_ptr: torch.Tensor  # [N+1] long
    edge_token: torch.Tensor  # [E] long, E = N - 1
    edge_parent: torch.Tensor  # [E] long
    edge_child: torch.Tensor  # [E] long (== arange(E) + 1)
    node_depth: torch.Tensor  # [N] long, root 0
    node_leaf_range: torch.Tensor  # [N, 2] long, leaves [start, end)
    node_item_range: torch.Tensor  # [N, 2] long, positions [start, end) in leaf_items
    node_leaf: torch.Tensor  # [N] long, leaf id of a leaf node, -1 otherwise
    leaf_node: torch.Tensor  # [L] long
    leaf_len: torch.Tensor  # [L] long, tokens on the path incl. EOS
    leaf_path: torch.Tensor  # [L, max_depth] long, node ids along the path (depth 1..len), -1 padded
    leaf_item_ptr: torch.Tensor  # [L+1] long, CSR into leaf_items
    leaf_items: torch.Tensor  # [n_items] long, items of each leaf: descending weight, then ascending id
    leaf_weight: torch.Tensor  # [L] float64, summed item weights
    node_entropy: torch.Tensor  # [N] float64, S(n)
    edge_ig: torch.Tensor  # [E] float64
    edge_ig_norm: torch.Tensor  # [E] float32, sibling min-max normalised IG (ties -> 0)
    item_leaf: torch.Tensor  # [max_item_id + 1] long, -1 for ids not in the trie

    # ------------------------------------------------------------------ build
    @classmethod
    def build(
        cls,
        sequences: Sequence[Sequence[int]],
        item_ids: Sequence[int],
        item_weight: torch.Tensor | np.ndarray | Sequence[float] | None = None,
    ) -> TitleTrie:
        """Build the trie. ``item_ids[i]`` is the item of ``sequences[i]`` (title tokens + EOS) and
        ``item_weight[i]`` its weight (e.g. its frequency as a training target; default 1 for every item).
        """
        n = len(sequences)
        if n == 0:
            raise ValueError("TitleTrie.build: empty catalogue; pass at least one tokenised title.")
        ids = np.asarray(item_ids, dtype=np.int64).reshape(-1)
        if ids.shape[0] != n:
            raise ValueError(
                f"TitleTrie.build: {n} sequences but {ids.shape[0]} item ids; pass one item id per sequence."
            )
        if (ids < 0).any():
            raise ValueError("TitleTrie.build: item ids must be non-negative integers (e.g. RecBole ids).")
        if np.unique(ids).shape[0] != n:
            raise ValueError("TitleTrie.build: duplicate item ids; give each item exactly one sequence.")
        if item_weight is None:
            weights = np.ones(n, dtype=np.float64)
        else:
            if isinstance(item_weight, torch.Tensor):
                item_weight = item_weight.detach().cpu().numpy()
            weights = np.asarray(item_weight, dtype=np.float64).reshape(-1)
            if weights.shape[0] != n:
                raise ValueError(
                    f"TitleTrie.build: item_weight has {weights.shape[0]} entries for {n} sequences; "
                    "give one weight per sequence (aligned with item_ids)."
                )
            if not np.isfinite(weights).all() or (weights < 0).any() or weights.sum() <= 0:
                raise ValueError(
                    "TitleTrie.build: item_weight must be finite, non-negative and not all zero "
                    "(use frequencies as training targets, or None for uniform)."
                )

        lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=n)
        if (lengths == 0).any():
            i = int(np.argmax(lengths == 0))
            raise ValueError(
                f"TitleTrie.build: sequence {i} (item {ids[i]}) is empty; every title must be its tokens + EOS."
            )
        flat = np.fromiter((t for s in sequences for t in s), dtype=np.int64, count=int(lengths.sum()))
        if (flat < 0).any():
            raise ValueError("TitleTrie.build: token ids must be non-negative.")
        depth = int(lengths.max())
        offsets = np.cumsum(lengths) - lengths
        rows = np.repeat(np.arange(n), lengths)
        cols = np.arange(flat.shape[0]) - np.repeat(offsets, lengths)
        mat = np.full((n, depth), -1, dtype=np.int64)
        mat[rows, cols] = flat

        last = mat[np.arange(n), lengths - 1]
        eos = int(last[0])
        if (last != eos).any():
            i = int(np.argmax(last != eos))
            raise ValueError(
                f"TitleTrie.build: sequence {i} (item {ids[i]}) ends with {int(last[i])}, not the EOS id {eos} "
                "of sequence 0; append the same EOS id to every title."
            )
        eos_count = (mat == eos).sum(axis=1)
        if (eos_count != 1).any():
            i = int(np.argmax(eos_count != 1))
            raise ValueError(
                f"TitleTrie.build: EOS id {eos} occurs inside sequence {i} (item {ids[i]}), so it would be a "
                "prefix of another title; EOS must appear only as the last token."
            )

        # Lexicographic order (pad -1 sorts first, but no sequence is a prefix of another), then dedupe.
        order = np.lexsort(mat.T[::-1])
        sm = mat[order]
        same = np.zeros(n, dtype=bool)
        same[1:] = (sm[1:] == sm[:-1]).all(axis=1)
        seq_leaf_sorted = np.cumsum(~same) - 1
        uniq = sm[~same]
        ulen = lengths[order][~same]
        n_leaves = uniq.shape[0]
        seq_leaf = np.empty(n, dtype=np.int64)
        seq_leaf[order] = seq_leaf_sorted

        # lcp with the previous leaf; leaf i opens a node at depth d (1-based) iff lcp[i] < d <= len[i].
        lcp = np.zeros(n_leaves, dtype=np.int64)
        if n_leaves > 1:
            lcp[1:] = np.argmax(uniq[1:] != uniq[:-1], axis=1)
        d_idx = np.arange(1, depth + 1)
        opens = (d_idx[None, :] > lcp[:, None]) & (d_idx[None, :] <= ulen[:, None])  # [L, depth]
        dpos, lpos = np.nonzero(opens.T)  # breadth-first: by depth, then lexicographic
        n_nodes = dpos.shape[0] + 1
        node_id = np.zeros((n_leaves, depth), dtype=np.int64)
        node_id[lpos, dpos] = np.arange(1, n_nodes)
        path = np.maximum.accumulate(node_id, axis=0)  # forward fill: ids grow with the leaf index
        valid_path = d_idx[None, :] <= ulen[:, None]
        path = np.where(valid_path, path, -1)

        edge_token = uniq[lpos, dpos]
        edge_parent = np.where(dpos > 0, path[lpos, np.maximum(dpos - 1, 0)], 0)
        child_ptr = np.searchsorted(edge_parent, np.arange(n_nodes + 1), side="left")
        node_depth = np.concatenate([[0], dpos + 1])

        # Leaf range of a node opened by leaf i at depth d: [i, first i' > i with lcp[i'] < d).
        leaf_start = np.concatenate([[0], lpos])
        leaf_end = np.empty(n_nodes, dtype=np.int64)
        leaf_end[0] = n_leaves
        for d in range(1, depth + 1):
            sel = np.nonzero(dpos == d - 1)[0]
            breaks = np.nonzero(lcp < d)[0]  # includes leaf 0
            nxt = np.searchsorted(breaks, lpos[sel], side="right")
            leaf_end[sel + 1] = np.where(
                nxt < breaks.shape[0], breaks[np.minimum(nxt, breaks.shape[0] - 1)], n_leaves
            )
        node_leaf = np.full(n_nodes, -1, dtype=np.int64)
        leaf_node = path[np.arange(n_leaves), ulen - 1]
        node_leaf[leaf_node] = np.arange(n_leaves)

        # Items per leaf: descending weight, then ascending item id (deterministic tie order).
        item_order = np.lexsort((ids, -weights, seq_leaf))
        leaf_items = ids[item_order]
        leaf_item_ptr = np.concatenate([[0], np.cumsum(np.bincount(seq_leaf, minlength=n_leaves))])
        leaf_weight = np.bincount(seq_leaf, weights=weights, minlength=n_leaves)

        # Unnormalised entropy over leaves; cumulative sums of non-negative terms are monotone, so
        # IG = (sum left of child) + (sum right of child) within the parent is >= 0 and exactly 0 for one child.
        p = leaf_weight / weights.sum()
        h = np.zeros_like(p)
        pos = p > 0
        h[pos] = -p[pos] * np.log(p[pos])
        cs = np.concatenate([[0.0], np.cumsum(h)])
        node_entropy = cs[leaf_end] - cs[leaf_start]
        c = np.arange(1, n_nodes)
        par = edge_parent
        edge_ig = (cs[leaf_start[c]] - cs[leaf_start[par]]) + (cs[leaf_end[par]] - cs[leaf_end[c]])

        # Edges into subtrees without weight (titles never seen as a training target) are not in the IGD
        # reference's trie of training targets: they get IG~ = 0 and leave their siblings' min-max.
        wcs = np.concatenate([[0.0], np.cumsum(leaf_weight)])
        seen = (wcs[leaf_end[c]] - wcs[leaf_start[c]]) > 0

        item_leaf = np.full(int(ids.max()) + 1, -1, dtype=np.int64)
        item_leaf[ids] = seq_leaf
        t = torch.from_numpy
        child_ptr_t = t(child_ptr.astype(np.int64))
        edge_ig_t = t(edge_ig)
        return cls(
            eos_token_id=eos,
            max_depth=depth,
            child_ptr=child_ptr_t,
            edge_token=t(edge_token),
            edge_parent=t(edge_parent),
            edge_child=t(c),
            node_depth=t(node_depth),
            node_leaf_range=t(np.stack([leaf_start, leaf_end], axis=1)),
            node_item_range=t(np.stack([leaf_item_ptr[leaf_start], leaf_item_ptr[leaf_end]], axis=1)),
            node_leaf=t(node_leaf),
            leaf_node=t(leaf_node),
            leaf_len=t(ulen.copy()),
            leaf_path=t(np.ascontiguousarray(path)),
            leaf_item_ptr=t(leaf_item_ptr.astype(np.int64)),
            leaf_items=t(leaf_items),
            leaf_weight=t(leaf_weight),
            node_entropy=t(node_entropy),
            edge_ig=edge_ig_t,
            edge_ig_norm=minmax_normalise_siblings(edge_ig_t, child_ptr_t, include=t(seen)),
            item_leaf=t(item_leaf),
        )

    # ------------------------------------------------------------------ sizes / device
    @property
    def num_nodes(self) -> int:
        return int(self.child_ptr.shape[0] - 1)

    @property
    def num_edges(self) -> int:
        return int(self.edge_token.shape[0])

    @property
    def num_leaves(self) -> int:
        return int(self.leaf_node.shape[0])

    @property
    def num_items(self) -> int:
        return int(self.leaf_items.shape[0])

    @property
    def device(self) -> torch.device:
        return self.child_ptr.device

    def to(self, device: torch.device | str) -> TitleTrie:
        """Copy with every tensor on ``device`` (cached, so decoding calls pay the transfer once)."""
        device = torch.device(device)
        if device == self.device:
            return self
        cache = self.__dict__.setdefault("_device_copies", {})
        if device not in cache:
            kwargs = {
                f.name: (
                    getattr(self, f.name).to(device)
                    if isinstance(getattr(self, f.name), torch.Tensor)
                    else getattr(self, f.name)
                )
                for f in fields(self)
            }
            cache[device] = type(self)(**kwargs)
        return cache[device]

    # ------------------------------------------------------------------ navigation (batched)
    def children(self, nodes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sparse allowed set: ``(edges [B, C], valid [B, C])`` with C = most children among ``nodes``.

        Padding entries hold edge 0 (safe to gather with) and ``valid = False``; nodes < 0 have no children.
        """
        nodes = nodes.reshape(-1)
        safe = nodes.clamp_min(0)
        start = self.child_ptr[safe]
        count = torch.where(nodes >= 0, self.child_ptr[safe + 1] - start, torch.zeros_like(start))
        width = int(count.max()) if count.numel() else 0
        offs = torch.arange(width, device=nodes.device)
        valid = offs[None, :] < count[:, None]
        edges = torch.where(
            valid, start[:, None] + offs[None, :], torch.zeros((), dtype=torch.long, device=nodes.device)
        )
        return edges, valid

    def allowed_mask(self, nodes: torch.Tensor, vocab_size: int) -> torch.Tensor:
        """Dense ``[B, vocab_size]`` bool mask of the tokens allowed after each node."""
        edges, valid = self.children(nodes)
        mask = torch.zeros(edges.shape[0], vocab_size, dtype=torch.bool, device=edges.device)
        tokens = self.edge_token[edges]
        if (tokens[valid] >= vocab_size).any():
            raise ValueError(
                "allowed_mask: the trie holds token ids >= vocab_size; pass the model's vocab size."
            )
        mask.scatter_(1, torch.where(valid, tokens, torch.zeros_like(tokens)), valid)
        return mask

    def advance(self, nodes: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Next node after ``tokens`` from ``nodes`` (same shape), ``-1`` if not allowed or ``nodes < 0``.

        Edges are sorted by (parent, token), so one ``searchsorted`` over a composite key does all rows.
        """
        base = int(self.edge_token.max()) + 1 if self.num_edges else 1
        key = self.edge_parent * base + self.edge_token
        q = nodes.clamp_min(0) * base + tokens.clamp(0, base - 1)
        pos = torch.searchsorted(key, q.reshape(-1)).reshape(q.shape)
        hit = pos < key.shape[0]
        pos_c = pos.clamp_max(max(key.shape[0] - 1, 0))
        ok = hit & (key[pos_c] == q) & (nodes >= 0) & (tokens >= 0) & (tokens < base)
        return torch.where(ok, self.edge_child[pos_c], torch.full_like(pos_c, -1))

    # ------------------------------------------------------------------ items and paths
    def leaf_item_list(self, leaf: int) -> list[int]:
        """Item ids of leaf ``leaf`` (descending weight, then ascending id)."""
        a, b = self.leaf_item_ptr[leaf].item(), self.leaf_item_ptr[leaf + 1].item()
        return self.leaf_items[a:b].tolist()

    def leaf_items_of_node(self, leaf_node: int) -> list[int]:
        """Item ids under the leaf *node* ``leaf_node`` (node id, not leaf id)."""
        leaf = int(self.node_leaf[leaf_node])
        if leaf < 0:
            raise ValueError(f"node {leaf_node} is not a leaf; pass a node reached by an EOS edge.")
        return self.leaf_item_list(leaf)

    def leaf_of_item(self, item: int) -> int:
        if not 0 <= item < self.item_leaf.shape[0] or int(self.item_leaf[item]) < 0:
            raise ValueError(f"item {item} is not in the trie; build it with that item's title.")
        return int(self.item_leaf[item])

    def leaf_tokens(self, leaf: int) -> list[int]:
        """Token sequence (incl. EOS) of leaf ``leaf``."""
        nodes = self.leaf_path[leaf, : int(self.leaf_len[leaf])]
        return self.edge_token[nodes - 1].tolist()

    def path(self, item: int) -> list[int]:
        """Token sequence (incl. EOS) of ``item``'s title."""
        return self.leaf_tokens(self.leaf_of_item(item))

    def walk(self, seq: Sequence[int]) -> list[int]:
        """Node ids along ``seq`` (one per token); raises if ``seq`` leaves the trie."""
        node = torch.zeros(1, dtype=torch.long, device=self.device)
        out = []
        for i, tok in enumerate(seq):
            node = self.advance(node, torch.tensor([int(tok)], device=self.device))
            if int(node) < 0:
                raise ValueError(f"token {tok} at position {i} of {list(seq)} is not in the trie.")
            out.append(int(node))
        return out

    def ig_of_sequence(self, seq: Sequence[int]) -> list[float]:
        """IG of each token of a title path (incl. EOS)."""
        nodes = torch.tensor(self.walk(seq), dtype=torch.long, device=self.device)
        return self.edge_ig[nodes - 1].tolist()

    def item_token_ig(self, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """IG of every path token of ``items`` (vectorised): ``(ig [n, max_depth] float64, valid [n, max_depth])``
        — the per-token lookup the IGD loss needs (``w_t = beta`` where ``ig == 0``)."""
        leaf = self.item_leaf[items]
        if (leaf < 0).any():
            raise ValueError("item_token_ig: some items are not in the trie.")
        nodes = self.leaf_path[leaf]
        valid = nodes > 0
        ig = torch.where(valid, self.edge_ig[(nodes - 1).clamp_min(0)], torch.zeros((), dtype=torch.float64))
        return ig, valid

    def zero_ig_share(self, weighted: bool = True) -> float:
        """Share of title tokens with IG exactly 0 (IGD table 4).

        ``weighted=True`` counts each title's tokens once per unit of its weight (with weight = frequency as a
        training target this counts the tokens of all training targets, as table 4); ``False`` counts each
        item's path once.
        """
        zero = self.edge_ig == 0
        nodes = self.leaf_path
        valid = nodes > 0
        zeros = (zero[(nodes - 1).clamp_min(0)] & valid).sum(1).to(torch.float64)
        lens = self.leaf_len.to(torch.float64)
        mult = self.leaf_weight if weighted else torch.diff(self.leaf_item_ptr).to(torch.float64)
        return float((zeros * mult).sum() / (lens * mult).sum())

    # ------------------------------------------------------------------ D3 ensemble
    def item_score_cumsum(self, item_scores: torch.Tensor) -> torch.Tensor:
        """``[B, n_items + 1]`` float64 prefix sums of per-item scores in trie (DFS) item order.

        ``item_scores[b, i]`` is the score of item id ``i``. float64 because subtree masses are differences
        of prefix sums and SASRec probabilities span many orders of magnitude.
        """
        if item_scores.shape[-1] <= int(self.leaf_items.max()):
            raise ValueError(
                f"item_scores has {item_scores.shape[-1]} columns but the trie holds item id "
                f"{int(self.leaf_items.max())}; index scores by item id."
            )
        s = item_scores.to(torch.float64).index_select(-1, self.leaf_items.to(item_scores.device))
        return torch.nn.functional.pad(s.cumsum(-1), (1, 0))

    def edge_marginal(
        self,
        cumsum: torch.Tensor,
        rows: torch.Tensor,
        nodes: torch.Tensor,
        edges: torch.Tensor,
        eps: float = 1e-20,
    ) -> torch.Tensor:
        """Normalised mass under each child edge ``edges [B, C]`` of ``nodes [B]`` (D3 prefix marginal).

        ``cumsum`` from :meth:`item_score_cumsum`, ``rows [B]`` its row for each node. The children partition
        the parent's items, so the normaliser is the parent's mass (plus ``eps`` per child, as D3's 1e-20).
        """
        child = self.edge_child[edges]
        cr = self.node_item_range[child]  # [B, C, 2]
        pr = self.node_item_range[nodes.clamp_min(0)]  # [B, 2]
        cs = cumsum[rows]
        mass = cs.gather(1, cr[..., 1]) - cs.gather(1, cr[..., 0])
        pmass = cs.gather(1, pr[:, 1:2]) - cs.gather(1, pr[:, 0:1])
        n_child = (self.child_ptr[nodes.clamp_min(0) + 1] - self.child_ptr[nodes.clamp_min(0)]).to(
            torch.float64
        )
        return (mass.clamp_min(0) + eps) / (pmass.clamp_min(0) + n_child[:, None] * eps)

    def node_prefix_marginal(
        self, item_scores: torch.Tensor, nodes: torch.Tensor, eps: float = 1e-20
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For each of ``nodes [B]`` (with per-row ``item_scores [B, n_item_ids]``): ``(edges, valid, marginal)``,
        the normalised item-score mass under each allowed child edge (sums to 1 over the valid children)."""
        edges, valid = self.children(nodes)
        cs = self.item_score_cumsum(item_scores)
        rows = torch.arange(nodes.shape[0], device=nodes.device)
        marg = self.edge_marginal(cs, rows, nodes, edges, eps)
        return edges, valid, torch.where(valid, marg, torch.zeros((), dtype=marg.dtype, device=marg.device))
