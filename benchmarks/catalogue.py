"""Synthetic item catalogues with realistic title token sequences (for the trie benchmark and tests).

Titles are token ids, not text: what matters for the trie is their length distribution and how many
prefixes they share. Amazon-Books-like: a log-normal number of title tokens (median 14, long tail, at most
96), Zipf-distributed token ids (frequent words such as "The" start many titles), 30% of titles continue
a book *series* prefix of 2-10 tokens (Zipf-popular series), 1.5% exact duplicates (reprints), and every
title ends with the prompt's closing tokens and EOS, as :class:`~recbole_llm.model.prompt.PromptBuilder`
target pieces do.
"""

from __future__ import annotations

import numpy as np

BOOKS_ITEMS = 41_722
VOCAB = 49_152  # SmolLM2's vocabulary size
EOS = 2
CLOSING = (19432, 198)  # '"' and '\n' in SmolLM2's vocabulary, before EOS


def synthetic_titles(
    n_items: int = BOOKS_ITEMS,
    seed: int = 0,
    median_tokens: float = 14.0,
    max_tokens: int = 96,
    series_share: float = 0.3,
    n_series: int = 3000,
    duplicate_share: float = 0.015,
) -> tuple[list[list[int]], np.ndarray]:
    """``(sequences, weights)``: one token sequence (title + closing tokens + EOS) per item, and a Zipf
    popularity per item (a stand-in for training-target frequencies, used as IG weights)."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(np.rint(rng.lognormal(np.log(median_tokens), 0.6, n_items)), 1, max_tokens).astype(int)
    tokens = _zipf_tokens(rng, int(lengths.sum()) + n_series * 10)
    series = [
        tokens[-(i + 1) * 10 : -(i + 1) * 10 + int(rng.integers(2, 11))] for i in range(n_series)
    ]  # disjoint slices of the tail of the token stream
    series_rank = np.minimum(rng.zipf(1.3, n_items) - 1, n_series - 1)
    in_series = rng.random(n_items) < series_share
    closing = [*CLOSING, EOS]
    seqs: list[list[int]] = []
    pos = 0
    for i in range(n_items):
        body = tokens[pos : pos + lengths[i]].tolist()
        pos += lengths[i]
        if in_series[i]:
            body = series[series_rank[i]].tolist() + body[: max(1, lengths[i] // 2)]
        seqs.append(body[:max_tokens] + closing)
    dup = np.nonzero(rng.random(n_items) < duplicate_share)[0]
    for i in dup:
        seqs[i] = list(seqs[int(rng.integers(0, n_items))])
    weights = rng.zipf(1.5, n_items).astype(np.float64)
    return seqs, weights


def _zipf_tokens(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` token ids in ``[3, VOCAB)`` with a Zipf(1.1) frequency over a random permutation of the ids."""
    ranks = np.minimum(rng.zipf(1.1, n) - 1, VOCAB - 4)
    ids = rng.permutation(np.arange(3, VOCAB))
    ids = ids[(ids != EOS)]
    return ids[ranks]
