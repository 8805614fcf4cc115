"""Independent, plain-Python references the tests check the package against (never imported by it).

:class:`ReferenceTrie` recomputes the entropies of IGD's decision modelling (IGD §4.1:
``S(node) = sum -p_i log p_i`` over the items under a node, ``IG = S(parent) - S(child)``) without
tensors, so a test can compare :class:`recbole_llm.model.trie.TitleTrie`'s vectorised arrays and the
analyses against it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


class ReferenceTrie:
    """Plain-Python prefix tree holding ``S(node)``: the small, independent reference of :class:`TitleTrie`.

    Items with identical sequences share one leaf whose probability is the sum of theirs (as
    ``TitleTrie`` does), so the entropies are the same as the decoding trie's ``node_entropy``.
    """

    def __init__(self, sequences: Sequence[Sequence[int]], weights: Sequence[float]):
        weights = [float(w) for w in weights]
        if len(weights) != len(sequences):
            raise ValueError(
                f"{len(sequences)} sequences but {len(weights)} weights: give one weight per item."
            )
        if any(w < 0 for w in weights):
            raise ValueError("Item weights must be non-negative (they are training-target counts).")
        total = sum(weights)
        if total <= 0:
            raise ValueError("All item weights are 0: the reference distribution needs training targets.")
        leaves: dict[tuple[int, ...], float] = {}
        for seq, w in zip(sequences, weights, strict=True):
            key = tuple(int(t) for t in seq)
            leaves[key] = leaves.get(key, 0.0) + w
        self.children: list[dict[int, int]] = [{}]
        self.score: list[float] = [0.0]
        for seq, w in leaves.items():
            p = w / total
            h = -p * math.log(p) if p > 0 else 0.0
            node = 0
            self.score[0] += h
            for token in seq:
                nxt = self.children[node].get(token)
                if nxt is None:
                    nxt = len(self.score)
                    self.children[node][token] = nxt
                    self.children.append({})
                    self.score.append(0.0)
                node = nxt
                self.score[node] += h

    def path(self, seq: Sequence[int]) -> list[int]:
        """Node ids after each token (``KeyError`` if the sequence is not a path of the tree)."""
        node, out = 0, []
        for token in seq:
            node = self.children[node][int(token)]
            out.append(node)
        return out

    def entropies(self, seq: Sequence[int]) -> list[float]:
        """``S`` of the node reached after each step of ``seq``."""
        return [self.score[n] for n in self.path(seq)]

    def information_gain(self, seq: Sequence[int]) -> list[float]:
        """``S(parent) - S(child)`` of each token of ``seq``."""
        nodes = [0, *self.path(seq)]
        return [self.score[a] - self.score[b] for a, b in zip(nodes[:-1], nodes[1:], strict=True)]


def path_entropies(sequences: Sequence[Sequence[int]], weights: Sequence[float]) -> list[list[float]]:
    """Entropy of the node after each step of every sequence, in the tree built from those sequences."""
    trie = ReferenceTrie(sequences, weights)
    return [trie.entropies(s) for s in sequences]
