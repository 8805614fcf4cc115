"""BIGRec grounding: L2 matching, the CFT top-K rule, last-token embeddings of a tiny Llama, free generation
grounded to titles."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from recbole_llm.model.decoding.items import ranking_to_scores
from recbole_llm.model.grounding import (
    CFT_GENERATIONS,
    bigrec_rank,
    dedup_first,
    embed_token_sequences,
    free_beam_generate,
    ground_generations,
    l2_ground,
    last_token_hidden,
    strip_eos,
)

ITEMS = torch.tensor([[3.0, 0.0], [1.0, 0.0], [0.0, 1.0], [2.0, 2.0], [0.0, -1.0]])


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 100])
def test_l2_ground_hand_vectors_with_ties(chunk_size):
    gen = torch.tensor([[0.0, 0.0], [2.9, 0.1]])
    idx, dist = l2_ground(gen, ITEMS, k=4, chunk_size=chunk_size)
    # origin: items 1, 2, 4 all at distance 1 -> index order; then item 3 (sqrt 8) before item 0 (3)
    assert idx[0].tolist() == [1, 2, 4, 3]
    assert torch.allclose(dist[0], torch.tensor([1.0, 1.0, 1.0, 8**0.5]))
    assert idx[1].tolist()[0] == 0
    assert torch.allclose(dist[1, 0], torch.tensor(0.02**0.5), atol=1e-3)


@pytest.mark.parametrize("chunk_size", [7, 64, 1000])
def test_l2_ground_chunking_matches_brute_force(chunk_size):
    g = torch.Generator().manual_seed(0)
    gen = torch.randn(13, 16, generator=g, dtype=torch.float64)
    items = torch.randn(300, 16, generator=g, dtype=torch.float64)
    idx, dist = l2_ground(gen, items, k=10, chunk_size=chunk_size, compute_dtype=torch.float64)
    brute = torch.cdist(gen, items)
    expected_d, expected_i = brute.sort(dim=1)
    assert torch.equal(idx, expected_i[:, :10])
    assert torch.allclose(dist, expected_d[:, :10], atol=1e-9)


def test_l2_ground_errors():
    with pytest.raises(ValueError, match="between 1 and"):
        l2_ground(torch.zeros(1, 2), ITEMS, k=6)
    with pytest.raises(ValueError, match="same H"):
        l2_ground(torch.zeros(1, 3), ITEMS, k=1)


def test_cft_top10_rule_by_hand():
    # 10 items on a line at x = 0..9; generations near chosen items. Nearest / second nearest:
    # g0 at 2.1 -> 2, 3 ; g1 at 6.9 -> 7, 6 ; g2 at 2.2 -> 2 (dup), 3 (dup) ; g3 at 0.0 -> 0, 1 ;
    # g4 at 9.3 -> 9, 8.
    items = torch.stack([torch.arange(10.0), torch.zeros(10)], dim=1)
    xs = torch.tensor([2.1, 6.9, 2.2, 0.0, 9.3])
    gen = torch.stack([xs, torch.zeros(5)], dim=1)[None]  # [1, 5, 2]
    # rank-major list: 2 7 2 0 9 | 3 6 3 1 8 | 1 8 1 2 7 | 4 5 4 3 6 ... -> de-duplicated: 2 7 0 9 3 6 1 8 4 5
    assert bigrec_rank(gen, items, 5).tolist() == [[2, 7, 0, 9, 3]]
    assert bigrec_rank(gen, items, 10).tolist() == [[2, 7, 0, 9, 3, 6, 1, 8, 4, 5]]
    # without duplicates it is exactly "best of each, then second-best of each"
    gen2 = torch.stack([torch.tensor([2.1, 6.9, 4.4, 0.0, 9.3]), torch.zeros(5)], dim=1)[None]
    assert bigrec_rank(gen2, items, 10).tolist() == [[2, 7, 4, 0, 9, 3, 6, 5, 1, 8]]
    # original BIGRec rule: distances to generation 0 only
    assert bigrec_rank(gen, items, 4, rule="bigrec").tolist() == [[2, 3, 1, 4]]
    with pytest.raises(ValueError, match="bigrec, cft"):
        bigrec_rank(gen, items, 4, rule="mean")


def test_dedup_first_and_scores():
    is_first, n_unique = dedup_first(torch.tensor([[5, 3, 5, 1, 3], [0, 0, 0, 0, 0]]))
    assert is_first.tolist() == [[True, True, False, True, False], [True, False, False, False, False]]
    assert n_unique.tolist() == [3, 1]
    scores = ranking_to_scores(torch.tensor([[4, 0, 2]]), 6)
    # items outside the list: finite, below it, in the fill order (default ascending id); padding −inf
    assert scores.tolist() == [[2.0, -1.0, 1.0, -3.0, 3.0, -5.0]]
    assert torch.topk(scores, 3).indices.tolist() == [[4, 0, 2]]
    short = ranking_to_scores(torch.tensor([[3, -1, -1]]), 4)  # a short list: -1 gets no score
    assert short.tolist() == [[float("-inf"), -1.0, -2.0, 3.0]]
    by_popularity = ranking_to_scores(torch.tensor([[1]]), 5, fill_order=torch.tensor([3, 1, 4, 2]))
    assert by_popularity.tolist() == [[float("-inf"), 1.0, -4.0, -1.0, -3.0]]
    assert torch.argsort(by_popularity, descending=True, stable=True)[0, :4].tolist() == [1, 3, 4, 2]


@pytest.fixture(scope="module")
def tiny_llama():
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    return LlamaForCausalLM(config).eval()


SEQS = [[5, 9, 11, 3], [7], [12, 13, 14, 15, 16, 17], [8, 8]]


def _alone(model, seq):
    out = model(torch.tensor([seq]), output_hidden_states=True)
    return out.hidden_states[-1][0, -1]


@pytest.mark.parametrize("side", ["left", "right"])
def test_last_token_hidden_equals_unpadded_run(tiny_llama, side):
    width = max(map(len, SEQS))
    ids = torch.zeros(len(SEQS), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(SEQS):
        sl = slice(width - len(s), width) if side == "left" else slice(0, len(s))
        ids[i, sl], mask[i, sl] = torch.tensor(s), 1
    got = last_token_hidden(tiny_llama, ids, mask)
    with torch.no_grad():
        expected = torch.stack([_alone(tiny_llama, s) for s in SEQS])
    assert got.shape == (len(SEQS), 32)
    assert torch.allclose(got, expected, atol=1e-5)
    # distinct sequences give distinct embeddings (the check is not vacuous)
    assert not torch.allclose(got[0], got[3], atol=1e-3)


def test_embed_token_sequences_keeps_input_order(tiny_llama):
    emb = embed_token_sequences(tiny_llama, SEQS, pad_token_id=0, batch_size=3)
    with torch.no_grad():
        expected = torch.stack([_alone(tiny_llama, s) for s in SEQS])
    assert torch.allclose(emb, expected, atol=1e-5)
    with pytest.raises(ValueError, match="empty"):
        embed_token_sequences(tiny_llama, [[1], []], pad_token_id=0)
    with pytest.raises(ValueError, match="all zeros"):
        last_token_hidden(tiny_llama, torch.ones(1, 3, dtype=torch.long), torch.zeros(1, 3, dtype=torch.long))


def test_strip_eos_keeps_the_last_real_token():
    assert strip_eos([4, 5, 3], 3) == [4, 5]  # a title / a generation that ended with EOS
    assert strip_eos([4, 5, 6], 3) == [4, 5, 6]  # cut at max_new_tokens: its last generated token
    assert strip_eos([4, 3, 0, 0], 3) == [4]  # beam padding after EOS
    assert strip_eos([3], 3) == [3]  # an immediate EOS is all there is to embed


def test_free_generations_are_grounded_to_the_titles(tiny_llama):
    prompts, eos = [[5, 9, 11], [7, 8]], 3
    generations = free_beam_generate(tiny_llama, prompts, 4, 5, 0, eos)
    assert [len(row) for row in generations] == [4, 4]  # n_gen beams per prompt
    for row in generations:
        assert len({tuple(g) for g in row}) == 4  # distinct beams
        assert all(1 <= len(g) <= 5 and (eos not in g or g.index(eos) == len(g) - 1) for g in row)
    titles = embed_token_sequences(tiny_llama, SEQS + [[20, 21], [22], [23, 24, 25], [26, 3]], pad_token_id=0)
    kw = dict(max_new_tokens=5, pad_token_id=0, eos_token_id=eos)
    for rule, n_gen in (("bigrec", 4), ("cft", CFT_GENERATIONS)):
        # The same as grounding the embedded generations by hand; "cft" always grounds CFT's 5 generations.
        gens = free_beam_generate(tiny_llama, prompts, n_gen, 5, 0, eos)
        flat = [g[:-1] if g[-1] == eos and len(g) > 1 else g for row in gens for g in row]  # BIGRec: no EOS
        gen_emb = embed_token_sequences(tiny_llama, flat, pad_token_id=0)
        expect = bigrec_rank(gen_emb.view(2, n_gen, -1), titles, 7, rule=rule)
        got = ground_generations(tiny_llama, prompts, titles, 7, n_gen=4, rule=rule, **kw)
        assert got.shape == (2, 7) and torch.equal(got, expect)
