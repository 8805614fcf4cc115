"""TitleTrie: CSR layout, navigation, IG (IGD eq. 5-6) by hand, prefix marginals, validation, build speed."""

import math
import random
import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from recbole_llm.model.trie import TitleTrie, minmax_normalise_siblings

EOS = 9
# item: sequence, weight. Items 11 and 14 share the title [1, 3] (duplicate titles share one leaf).
CATALOGUE = {10: [1, 2, 9], 11: [1, 3, 9], 12: [1, 3, 4, 9], 13: [5, 9], 14: [1, 3, 9]}
WEIGHTS = {10: 1.0, 11: 1.0, 12: 1.0, 13: 2.0, 14: 3.0}


def h(p: float) -> float:
    return -p * math.log(p)


@pytest.fixture
def trie() -> TitleTrie:
    ids = list(CATALOGUE)
    return TitleTrie.build([CATALOGUE[i] for i in ids], ids, torch.tensor([WEIGHTS[i] for i in ids]))


def node_of(trie: TitleTrie, prefix: list[int]) -> int:
    return trie.walk(prefix)[-1] if prefix else 0


def test_layout_is_bfs_csr_with_lexicographic_leaves(trie):
    # Nodes (BFS, each level lexicographic): 0 root | 1 [1], 2 [5] | 3 [1,2], 4 [1,3], 5 [5,9] |
    # 6 [1,2,9], 7 [1,3,4], 8 [1,3,9] | 9 [1,3,4,9].  Edge e leads to node e + 1.
    assert trie.num_nodes == 10 and trie.num_edges == 9
    assert trie.child_ptr.tolist() == [0, 2, 4, 5, 6, 8, 8, 8, 9, 9, 9]
    assert trie.edge_token.tolist() == [1, 5, 2, 3, 9, 9, 4, 9, 9]
    assert trie.edge_parent.tolist() == [0, 0, 1, 1, 2, 3, 4, 4, 7]
    assert trie.edge_child.tolist() == list(range(1, 10))
    assert trie.node_depth.tolist() == [0, 1, 1, 2, 2, 2, 3, 3, 3, 4]
    assert trie.max_depth == 4 and trie.eos_token_id == EOS
    # Leaves in lexicographic order: [1,2,9] < [1,3,4,9] < [1,3,9] < [5,9].
    assert [trie.leaf_tokens(leaf) for leaf in range(4)] == [[1, 2, 9], [1, 3, 4, 9], [1, 3, 9], [5, 9]]
    assert trie.leaf_node.tolist() == [6, 9, 8, 5]
    assert trie.node_leaf[trie.leaf_node].tolist() == [0, 1, 2, 3]
    # Subtree of [1,3] holds leaves 1..2 and items 12, 14, 11 (duplicate leaf: weight 3 before weight 1).
    assert trie.node_leaf_range[4].tolist() == [1, 3]
    assert trie.leaf_items.tolist() == [10, 12, 14, 11, 13]
    a, b = trie.node_item_range[4].tolist()
    assert trie.leaf_items[a:b].tolist() == [12, 14, 11]
    assert trie.leaf_items_of_node(8) == [14, 11]
    with pytest.raises(ValueError, match="not a leaf"):
        trie.leaf_items_of_node(4)
    # Duplicates SUM their weights on the leaf (1 + 3), never overwrite.
    assert trie.leaf_weight.tolist() == [1.0, 1.0, 4.0, 2.0]
    assert trie.path(14) == trie.path(11) == [1, 3, 9]
    assert trie.path(12) == [1, 3, 4, 9]


def test_allowed_tokens_children_and_advance(trie):
    mask = trie.allowed_mask(torch.tensor([0, 1, 4, 6, -1]), vocab_size=12)
    assert [row.nonzero().flatten().tolist() for row in mask] == [[1, 5], [2, 3], [4, 9], [], []]
    edges, valid = trie.children(torch.tensor([0, 4, 2]))
    assert valid.tolist() == [[True, True], [True, True], [True, False]]
    assert trie.edge_token[edges[valid]].tolist() == [1, 5, 4, 9, 9]
    nxt = trie.advance(torch.tensor([0, 0, 1, 1, 4, 2, 6, -1, 0]), torch.tensor([1, 5, 3, 9, 4, 9, 9, 1, 11]))
    assert nxt.tolist() == [1, 2, 4, -1, 7, 5, -1, -1, -1]
    with pytest.raises(ValueError, match="vocab_size"):
        trie.allowed_mask(torch.tensor([0]), vocab_size=4)


def test_information_gain_by_hand(trie):
    # Leaf probabilities (weights 1, 1, 4, 2 over total 8): P = 1/8, 1/8, 1/2, 1/4 for
    # [1,2,9], [1,3,4,9], [1,3,9], [5,9].  h(p) = -p log p: h(1/8) = 0.25993, h(1/2) = 0.34657,
    # h(1/4) = 0.34657.  S(root) = 0.25993*2 + 0.34657*2 = 1.21301; S([1]) = 0.25993*2 + 0.34657 = 0.86643;
    # S([5]) = 0.34657; S([1,2]) = 0.25993; S([1,3]) = 0.60650; S([1,3,4]) = S([1,3,9]) = ...
    h8, h2, h4 = h(1 / 8), h(1 / 2), h(1 / 4)
    s = {
        (): 2 * h8 + h2 + h4,
        (1,): 2 * h8 + h2,
        (5,): h4,
        (1, 2): h8,
        (1, 3): h8 + h2,
        (1, 3, 4): h8,
        (1, 3, 9): h2,
    }
    for prefix, value in s.items():
        assert trie.node_entropy[node_of(trie, list(prefix))].item() == pytest.approx(value, abs=1e-12)
    # IG = S(parent) - S(child): the mass of the sibling subtrees.
    assert trie.ig_of_sequence([1, 2, 9]) == pytest.approx([h4, h8 + h2, 0.0], abs=1e-12)
    assert trie.ig_of_sequence([1, 3, 4, 9]) == pytest.approx([h4, h8, h2, 0.0], abs=1e-12)
    assert trie.ig_of_sequence([1, 3, 9]) == pytest.approx([h4, h8, h8], abs=1e-12)  # EOS has a sibling (4)
    assert trie.ig_of_sequence([5, 9]) == pytest.approx([2 * h8 + h2, 0.0], abs=1e-12)
    # Exactly zero (not just small) on single-child edges: the EOS edges of [1,2], [1,3,4], [5].
    zero_edges = (trie.edge_ig == 0).nonzero().flatten()
    assert sorted(trie.edge_token[zero_edges].tolist()) == [9, 9, 9]
    assert sorted(trie.edge_parent[zero_edges].tolist()) == sorted(
        [node_of(trie, [1, 2]), node_of(trie, [1, 3, 4]), node_of(trie, [5])]
    )
    # Zero-IG share (table 4). Zero tokens per leaf: [1,2,9] 1, [1,3,4,9] 1, [1,3,9] 0, [5,9] 1.
    # weighted by leaf weight 1,1,4,2: (1 + 1 + 0 + 2) / (3 + 4 + 3*4 + 2*2) = 4 / 23;
    # per item (leaf item counts 1,1,2,1): (1 + 1 + 0 + 1) / (3 + 4 + 6 + 2) = 3 / 15.
    assert trie.zero_ig_share() == pytest.approx(4 / 23)
    assert trie.zero_ig_share(weighted=False) == pytest.approx(3 / 15)
    ig, valid = trie.item_token_ig(torch.tensor([12, 13]))
    assert valid.tolist() == [[True] * 4, [True, True, False, False]]
    assert ig[0].tolist() == pytest.approx([h4, h8, h2, 0.0])


def test_normalised_ig_among_siblings(trie):
    # root: IG(1) = h4 = 0.347 < IG(5) = 0.866 -> 0, 1. [1]: IG(2) = 0.607 > IG(3) = 0.260 -> 1, 0.
    # [1,3]: IG(4) = h2 = 0.347 > IG(EOS) = h8 = 0.260 -> 1, 0. Single children -> 0 (weight 1 as the reference).
    assert trie.edge_ig_norm.tolist() == [0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0]
    # Three siblings: (x - min) / (max - min); equal siblings -> tie_value.
    ptr = torch.tensor([0, 3, 5])
    out = minmax_normalise_siblings(torch.tensor([1.0, 3.0, 2.0, 0.5, 0.5], dtype=torch.float64), ptr)
    assert out.tolist() == [0.0, 1.0, 0.5, 0.0, 0.0]
    out = minmax_normalise_siblings(torch.tensor([1.0, 3.0, 2.0, 0.5, 0.5], dtype=torch.float64), ptr, 1.0)
    assert out.tolist() == [0.0, 1.0, 0.5, 1.0, 1.0]
    # Equal weights: siblings have equal IG up to round-off and must still count as a tie.
    uni = TitleTrie.build([[1, 2, 9], [1, 3, 9], [4, 5, 9], [4, 6, 9]], [0, 1, 2, 3])
    assert uni.edge_ig_norm.tolist() == [0.0] * uni.num_edges
    assert (uni.edge_ig > 0).sum().item() == 6


def test_prefix_marginal(trie):
    scores = torch.zeros(2, 15)
    scores[0, [10, 11, 12, 13, 14]] = torch.tensor([0.1, 0.2, 0.3, 0.15, 0.25])
    scores[1, 13] = 1.0
    edges, valid, marg = trie.node_prefix_marginal(scores, torch.tensor([0, node_of(trie, [1, 3])]))
    # Row 0 at root: token 1 holds items 10, 11, 12, 14 = 0.85, token 5 holds 13 = 0.15.
    assert trie.edge_token[edges[0]].tolist() == [1, 5]
    assert marg[0].tolist() == pytest.approx([0.85, 0.15])
    # Row 1 at [1,3]: all mass elsewhere -> the 1e-20 smoothing splits it evenly (D3's + 1e-20).
    assert marg[1].tolist() == pytest.approx([0.5, 0.5])
    edges, valid, marg = trie.node_prefix_marginal(scores[:1], torch.tensor([node_of(trie, [1, 3])]))
    # items 12 (token 4) = 0.3 vs 11 + 14 (EOS) = 0.45
    assert marg[0].tolist() == pytest.approx([0.3 / 0.75, 0.45 / 0.75])
    with pytest.raises(ValueError, match="index scores by item id"):
        trie.item_score_cumsum(torch.zeros(1, 12))


@pytest.mark.parametrize(
    ("sequences", "ids", "match"),
    [
        ([], [], "empty catalogue"),
        ([[1, 9], []], [0, 1], "is empty"),
        ([[1, 9], [2, 8]], [0, 1], "not the EOS id"),
        ([[1, 9], [9, 2, 9]], [0, 1], "occurs inside"),
        ([[1, 9], [2, 9]], [0], "one item id per sequence"),
        ([[1, 9], [2, 9]], [3, 3], "duplicate item ids"),
        ([[1, 9], [-2, 9]], [0, 1], "non-negative"),
    ],
)
def test_validation_errors(sequences, ids, match):
    with pytest.raises(ValueError, match=match):
        TitleTrie.build(sequences, ids)


def test_weight_validation():
    with pytest.raises(ValueError, match="non-negative"):
        TitleTrie.build([[1, 9], [2, 9]], [0, 1], [1.0, -1.0])
    with pytest.raises(ValueError, match="one weight per sequence"):
        TitleTrie.build([[1, 9], [2, 9]], [0, 1], [1.0])
    with pytest.raises(ValueError, match="not in the trie"):
        TitleTrie.build([[1, 9], [2, 9]], [0, 1]).path(5)


@st.composite
def catalogues(draw):
    n = draw(st.integers(1, 25))
    seqs = []
    for _ in range(n):
        if seqs and draw(st.booleans()):
            base = draw(st.sampled_from(seqs))[:-1]
            base = base[: draw(st.integers(0, len(base)))]
        else:
            base = []
        tail = draw(st.lists(st.integers(0, 6), min_size=0 if base else 1, max_size=4))
        seqs.append(base + tail + [7])
    weights = draw(st.lists(st.integers(1, 5), min_size=n, max_size=n))
    return seqs, weights


@settings(max_examples=40, deadline=None)
@given(catalogues())
def test_ig_properties_on_random_catalogues(cat):
    seqs, weights = cat
    trie = TitleTrie.build(seqs, list(range(len(seqs))), weights)
    n_child = torch.diff(trie.child_ptr)
    single = n_child[trie.edge_parent] == 1
    # Positive weights: IG >= 0 and IG == 0 exactly when the parent has a single child.
    assert (trie.edge_ig >= 0).all()
    assert torch.equal(trie.edge_ig == 0, single)
    assert torch.allclose(
        trie.edge_ig, trie.node_entropy[trie.edge_parent] - trie.node_entropy[trie.edge_child]
    )
    assert ((trie.edge_ig_norm >= 0) & (trie.edge_ig_norm <= 1)).all()
    # Every item's path round-trips, and its leaf lies inside the range of each node on its path.
    for item, seq in enumerate(seqs):
        assert trie.path(item) == seq
        leaf = trie.leaf_of_item(item)
        for node in trie.walk(seq):
            a, b = trie.node_leaf_range[node].tolist()
            assert a <= leaf < b
    # Leaf ranges of the children of any node partition the parent's range.
    for node in range(trie.num_nodes):
        a, b = trie.child_ptr[node].item(), trie.child_ptr[node + 1].item()
        if b > a:
            r = trie.node_leaf_range[trie.edge_child[a:b]]
            assert r[0, 0] == trie.node_leaf_range[node, 0] and r[-1, 1] == trie.node_leaf_range[node, 1]
            assert torch.equal(r[1:, 0], r[:-1, 1])


def test_zero_weight_titles_carry_no_probability():
    # [1,2,9] weight 0: the edge 1->3 has a sibling but no sibling mass, so IG = 0 (as the reference trie,
    # built from training targets only); the edge into the zero-weight subtree takes all of S([1]).
    trie = TitleTrie.build([[1, 2, 9], [1, 3, 9], [4, 9]], [0, 1, 2], [0.0, 1.0, 1.0])
    assert trie.ig_of_sequence([1, 3, 9]) == pytest.approx([h(0.5), 0.0, 0.0])
    assert trie.ig_of_sequence([1, 2, 9]) == pytest.approx([h(0.5), h(0.5), 0.0])


def test_build_books_scale_is_fast():
    # 41,722 titles of ~12 tokens with shared prefixes and duplicates (Books size), well under 10 s.
    rng = random.Random(0)
    words = [[rng.randrange(150_000) for _ in range(rng.randint(1, 3))] for _ in range(2000)]
    seqs = []
    for _ in range(41_722):
        toks = [
            t for _ in range(rng.randint(3, 7)) for t in words[min(int(rng.paretovariate(1.0)) - 1, 1999)]
        ]
        seqs.append(toks[:30] + [151_643])
    for _ in range(300):
        seqs[rng.randrange(len(seqs))] = list(seqs[rng.randrange(len(seqs))])
    start = time.perf_counter()
    trie = TitleTrie.build(seqs, list(range(1, len(seqs) + 1)), np.ones(len(seqs)))
    assert time.perf_counter() - start < 10.0
    assert trie.num_items == 41_722 and trie.num_leaves < 41_722
    assert trie.path(17) == seqs[16]
