"""Property tests (hypothesis) for the title trie and the constrained decoder, beyond tests/test_trie.py and
tests/test_decoding.py: real *text* catalogues through the prompt builder (quotes, non-ASCII, one-character
titles, shared prefixes, duplicates), the D3 ensemble, both KV-cache modes, restricted tries and Qwen2.
For every random catalogue, no call crashes and every returned beam is a distinct title of the catalogue."""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import Qwen2Config, Qwen2ForCausalLM

from recbole_llm.model.decoding import constrained_beam_search, leaves_to_items
from recbole_llm.model.prompt import PromptBuilder
from recbole_llm.model.prompt_templates import BUILTIN_TEMPLATES
from recbole_llm.model.trie import TitleTrie
from recbole_llm.utils.testing import tiny_model, tiny_tokenizer

TOK = tiny_tokenizer()
LLAMA = tiny_model(TOK, "llama", seed=3)
V, EOS = 64, 2
torch.manual_seed(5)
QWEN = Qwen2ForCausalLM(
    Qwen2Config(
        vocab_size=V,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        initializer_range=0.2,
    )
).eval()

WORDS = [
    "Halo",
    "Halo 5",
    "The",
    "Legend",
    "of",
    "Zelda",
    "Amélie",
    "日本語",
    '"',
    "'s",
    "A",
    "1",
    ":",
    "🐉",
    "é",
]
SETTINGS = settings(max_examples=20, deadline=None)


# d3's title pieces with a one-line instruction: the same title tokens, 5x shorter prompts (faster).
SHORT_D3 = replace(BUILTIN_TEMPLATES["d3"], preamble="", preamble_no_input="", instruction="Next {singular}")


@st.composite
def text_catalogues(draw):
    """Titles with shared word prefixes, exact duplicates, one-character titles and arbitrary text."""
    titles: list[str] = []
    for _ in range(draw(st.integers(1, 9))):
        kind = draw(st.sampled_from(["words", "extend", "duplicate", "char", "text"]))
        short = [t for t in titles if len(t.split()) < 4]  # bounded titles: bounded decoding time
        if kind == "extend" and short:
            title = draw(st.sampled_from(short)) + " " + draw(st.sampled_from(WORDS))
        elif kind == "duplicate" and titles:
            title = draw(st.sampled_from(titles))
        elif kind == "char":
            title = draw(st.sampled_from(["A", "é", "7", "🐉", '"']))
        elif kind == "text":
            title = draw(
                st.text(
                    st.characters(max_codepoint=0x2FFF, blacklist_categories=["Cs"]), min_size=1, max_size=5
                )
            )
        else:
            title = " ".join(draw(st.lists(st.sampled_from(WORDS), min_size=1, max_size=3)))
        titles.append(title)
    n = len(titles)
    histories = draw(st.lists(st.lists(st.integers(1, n), min_size=1, max_size=3), min_size=1, max_size=2))
    k = draw(st.integers(1, 6))
    return titles, histories, k, draw(st.sampled_from([0.0, 1.0])), draw(st.sampled_from([0.0, 0.4]))


@SETTINGS
@given(text_catalogues())
def test_text_catalogues_decode_to_distinct_catalogue_titles(case):
    titles, histories, k, lp, alpha = case
    builder = PromptBuilder(TOK, ["[PAD]", *titles], SHORT_D3)
    items = list(range(1, len(titles) + 1))
    trie = TitleTrie.build(builder.all_target_sequences()[1:], items)
    leaves, scores = constrained_beam_search(
        LLAMA,
        builder.prompt_ids_batch(histories),
        trie,
        num_beams=k,
        length_penalty=lp,
        ig_alpha=alpha,
        pad_token_id=builder.pad_token_id,
        batch_size=2,
    )
    ranked = leaves_to_items(trie, leaves, k)
    distinct = len(set(titles))
    assert trie.num_leaves == distinct
    for u in range(len(histories)):
        row = [leaf for leaf in leaves[u].tolist() if leaf >= 0]
        assert len(row) == len(set(row)) and leaves[u, len(row) :].eq(-1).all()
        if lp == 0.0:
            assert len(row) == min(k, distinct)  # no length normalisation: the K best titles, always K
        assert all(math.isfinite(s) for s in scores[u, : len(row)].tolist())
        for leaf in row:  # every beam is a catalogue title, token for token, ending with one EOS
            tokens = trie.leaf_tokens(leaf)
            assert tokens[-1] == TOK.eos_token_id and TOK.eos_token_id not in tokens[:-1]
            assert _title(trie, leaf) in titles
        got = [i for i in ranked[u].tolist() if i >= 0]
        assert len(got) == len(set(got)) and set(got) <= set(items)
        # Items come leaf by leaf, in the beams' order: the items of one title are consecutive.
        leaf_of = [trie.leaf_of_item(i) for i in got]
        runs = [leaf for j, leaf in enumerate(leaf_of) if j == 0 or leaf != leaf_of[j - 1]]
        assert len(runs) == len(set(runs)) and runs == row[: len(runs)]
        assert all(_title(trie, leaf) == titles[i - 1] for i, leaf in zip(got, leaf_of, strict=True))


def _title(trie: TitleTrie, leaf: int) -> str:
    """The title of a leaf: its d3 target piece ``title"\\n`` decoded, without the closing quote and newline."""
    return TOK.decode(trie.leaf_tokens(leaf)[:-1], clean_up_tokenization_spaces=False)[:-2]


@st.composite
def token_catalogues(draw):
    """Token-level catalogues: shared prefixes, one-token titles, duplicates; a subset kept in the trie."""
    seqs: list[list[int]] = []
    for _ in range(draw(st.integers(1, 14))):
        roll = draw(st.integers(0, 3))
        if seqs and roll == 0:
            seqs.append(list(draw(st.sampled_from(seqs))))  # duplicate
        elif seqs and roll == 1:
            base = draw(st.sampled_from(seqs))[:-1]
            base = base[: draw(st.integers(0, len(base)))]
            seqs.append(
                base + draw(st.lists(st.integers(3, V - 1), min_size=0 if base else 1, max_size=3)) + [EOS]
            )
        elif roll == 2:
            seqs.append([draw(st.integers(3, V - 1)), EOS])  # one token + EOS
        else:
            seqs.append(draw(st.lists(st.integers(3, V - 1), min_size=1, max_size=4)) + [EOS])
    n = len(seqs)
    keep = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    if not any(keep):
        keep[0] = True
    prompts = draw(st.lists(st.lists(st.integers(3, V - 1), min_size=1, max_size=7), min_size=1, max_size=4))
    return (
        seqs,
        keep,
        prompts,
        draw(st.integers(1, 6)),
        draw(st.sampled_from([None, 0.3, 0.9])),  # D3 ensemble weight gs (None: no ensemble)
        draw(st.sampled_from(["shared", "dynamic"])),
        draw(st.integers(0, 2**31 - 1)),
    )


@SETTINGS
@given(token_catalogues())
def test_restricted_tries_ensemble_and_cache_modes_return_valid_titles(case):
    seqs, keep, prompts, k, gs, kv_cache, seed = case
    all_items = list(range(1, len(seqs) + 1))
    kept_items = [i for i, ok in zip(all_items, keep) if ok]
    trie = TitleTrie.build([seqs[i - 1] for i in kept_items], kept_items)
    ensemble = None
    if gs is not None:
        gen = torch.Generator().manual_seed(seed)
        probs = torch.rand(len(prompts), len(seqs) + 1, generator=gen)
        ensemble = probs / probs.sum(1, keepdim=True)
    leaves, scores = constrained_beam_search(
        QWEN,
        prompts,
        trie,
        num_beams=k,
        ensemble=ensemble,
        ensemble_weight=1.0 if gs is None else gs,
        kv_cache=kv_cache,
        batch_size=3,
    )
    allowed = {tuple(seqs[i - 1]) for i in kept_items}
    for u in range(len(prompts)):
        row = [leaf for leaf in leaves[u].tolist() if leaf >= 0]
        assert len(row) == len(set(row)) == min(k, len(allowed))
        assert {tuple(trie.leaf_tokens(leaf)) for leaf in row} <= allowed
        s = scores[u, : len(row)].tolist()
        assert all(math.isfinite(x) for x in s) and s == sorted(s, reverse=True)
    ranked = leaves_to_items(trie, leaves, k)
    for row in ranked.tolist():
        got = [i for i in row if i >= 0]
        assert len(got) == len(set(got)) and set(got) <= set(kept_items)  # never an item outside the trie


@SETTINGS
@given(token_catalogues())
def test_trie_leaves_are_exactly_the_distinct_titles(case):
    seqs, _, probes, *_ = case
    items = list(range(1, len(seqs) + 1))
    trie = TitleTrie.build(seqs, items)
    leaves = {tuple(trie.leaf_tokens(leaf)): leaf for leaf in range(trie.num_leaves)}
    assert set(leaves) == {tuple(s) for s in seqs} and len(leaves) == trie.num_leaves
    for seq in leaves:  # a leaf's items are exactly the items with that title
        assert sorted(trie.leaf_item_list(leaves[seq])) == [i for i in items if tuple(seqs[i - 1]) == seq]
    titles = {tuple(s) for s in seqs}
    prefixes = {t[:j] for t in titles for j in range(len(t) + 1)}
    for probe in probes:  # any token sequence: walkable exactly when it is a prefix of a title
        path = [*probe, EOS]
        for j in range(1, len(path) + 1):
            nodes = trie.advance(torch.zeros(1, dtype=torch.long), torch.tensor([path[0]]))
            for tok in path[1:j]:
                nodes = trie.advance(nodes, torch.tensor([tok]))
            assert (int(nodes) >= 0) == (tuple(path[:j]) in prefixes)
        mask = trie.allowed_mask(torch.zeros(1, dtype=torch.long), V)[0]
        assert set(mask.nonzero().flatten().tolist()) == {t[0] for t in titles}
