"""PromptBuilder: exact prompt text, labels, item_index by hand, counterfactuals, truncation, odd titles."""

import time
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import processors

from recbole_llm.model.prompt import PromptBuilder
from recbole_llm.model.prompt_templates import Category, PromptTemplate
from recbole_llm.utils.testing import tiny_tokenizer

TITLES = [
    "[PAD]",
    "Halo 5: Guardians",
    "The Legend of Zelda",
    "Super Mario Odyssey",
    "Minecraft",
    "Tetris",
    "Doom",
]
GAMES = {"singular": "game", "plural": "games", "verb": "played"}
EOS = "<|endoftext|>"
ALPACA = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n### Instruction:\n"
)
D3_HEAD = (
    ALPACA + "Given a list of games the user recently enjoyed, please write a new game that the user may buy"
    "\n\n### User Input:\nThe user has played the following games before:"
)
RESPONSE = '\n\n### Response:\n"'


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def builder(tok):
    return PromptBuilder(tok, TITLES, "d3", GAMES, max_length=512, max_history=10)


def row(batch, b: int = 0) -> list[int]:
    return batch.input_ids[b, : batch.lengths[b]].tolist()


def test_d3_prompt_text_and_labels(tok, builder):
    batch = builder.build([[3, 6, 5]], [1])
    expected = D3_HEAD + ' "Super Mario Odyssey", "Doom", "Tetris"' + RESPONSE + 'Halo 5: Guardians"\n' + EOS
    assert tok.decode(row(batch)) == expected
    target = builder.target_tokens(1)
    assert target == builder.all_target_sequences()[1]
    assert target[-1] == tok.eos_token_id and tok.eos_token_id not in target[:-1]
    assert tok.decode(target) == 'Halo 5: Guardians"\n' + EOS
    labels = batch.labels[0]
    assert int((labels != -100).sum()) == len(target)
    assert labels[batch.lengths[0] - len(target) : batch.lengths[0]].tolist() == target
    assert batch.history_len.tolist() == [3] and batch.target_len.tolist() == [len(target)]


def test_item_index_by_hand(tok, builder):
    """CETRec §4.2.1: only the title tokens of a history item get its index; separators and quotes get -1."""
    batch = builder.build([[3, 6, 5]], [1])
    ids, index = row(batch), batch.item_index[0, : batch.lengths[0]].tolist()
    # 0 = most recent item (5), 2 = oldest (3); each index covers exactly the title's tokens.
    assert tok.decode([t for t, k in zip(ids, index) if k == 0]) == "Tetris"
    assert tok.decode([t for t, k in zip(ids, index) if k == 1]) == "Doom"
    assert tok.decode([t for t, k in zip(ids, index) if k == 2]) == "Super Mario Odyssey"
    assert set(index) == {-1, 0, 1, 2}
    # Position by position (the tiny tokenizer splits ' "' and '"' from the titles): head, then for each
    # item its lead (' "' or ', "') at -1, the title at k, the closing quote at -1; response and target -1.
    enc = lambda s: tok(s, add_special_tokens=False).input_ids  # noqa: E731
    expected = [-1] * len(enc(D3_HEAD))
    for lead, title, k in ((' "', "Super Mario Odyssey", 2), (', "', "Doom", 1), (', "', "Tetris", 0)):
        assert enc(lead + title + '"') == enc(lead) + enc(title) + enc('"')
        expected += [-1] * len(enc(lead)) + [k] * len(enc(title)) + [-1] * len(enc('"'))
    expected += [-1] * (len(ids) - len(expected))
    assert index == expected
    assert batch.item_index[0, batch.lengths[0] :].eq(-1).all()
    assert builder.prompt_item_index([3, 6, 5]) == index[: len(builder.prompt_ids([3, 6, 5]))]


def test_item_index_piece_scope_covers_separators_and_quotes(tok):
    builder = PromptBuilder(tok, TITLES, "d3", GAMES, temporal_scope="piece")
    batch = builder.build([[3, 6, 5]], [1])
    ids, index = row(batch), batch.item_index[0, : batch.lengths[0]].tolist()
    assert tok.decode([t for t, k in zip(ids, index) if k == 0]) == ', "Tetris"'
    assert tok.decode([t for t, k in zip(ids, index) if k == 2]) == ' "Super Mario Odyssey"'
    with pytest.raises(ValueError, match="temporal_scope"):
        PromptBuilder(tok, TITLES, "d3", GAMES, temporal_scope="item")


def test_item_index_title_scope_with_merged_boundary_tokens(tok):
    """A token that straddles the title boundary counts as title; text outside the title never does."""
    template = PromptTemplate.from_config({"prompt_template": "custom", "prompt_item_format": "<{title}>"})
    titles = ["[PAD]", "ab", "Tetris"]
    builder = PromptBuilder(tok, titles, template, GAMES)
    batch = builder.build([[1, 2]], [1])
    ids, index = row(batch), batch.item_index[0, : batch.lengths[0]].tolist()
    assert tok.decode([t for t, k in zip(ids, index) if k == 0]).strip("<>") == "Tetris"
    assert tok.decode([t for t, k in zip(ids, index) if k == 1]).strip("<>") == "ab"
    assert all(k == -1 for t, k in zip(ids, index) if tok.decode([t]) in (", ", ",", " <", "<", ">"))


def test_batch_padding_and_target_positions(tok, builder):
    batch = builder.build([[3, 6, 5], [2]], [1, 4])
    lengths = batch.lengths.tolist()
    width = batch.input_ids.shape[1]
    assert width == max(lengths) and lengths[0] > lengths[1]
    assert batch.input_ids[1, lengths[1] :].eq(tok.pad_token_id).all()
    assert tok.pad_token_id != tok.eos_token_id
    assert batch.attention_mask.sum(1).tolist() == lengths
    assert batch.attention_mask[1, : lengths[1]].eq(1).all() and batch.labels[1, lengths[1] :].eq(-100).all()
    t1, t4 = builder.target_tokens(1), builder.target_tokens(4)
    assert batch.target_labels.tolist() == t1 + t4
    assert batch.target_rows.tolist() == [0] * len(t1) + [1] * len(t4)
    assert batch.target_cols.tolist() == list(range(lengths[0] - len(t1), lengths[0])) + list(
        range(lengths[1] - len(t4), lengths[1])
    )
    assert batch.target_t.tolist() == list(range(1, len(t1) + 1)) + list(range(1, len(t4) + 1))
    assert batch.target_size.tolist() == [len(t1)] * len(t1) + [len(t4)] * len(t4)
    assert batch.input_ids[batch.target_rows, batch.target_cols].tolist() == t1 + t4
    rows, cols = batch.predict_positions
    assert (cols == batch.target_cols - 1).all() and (rows == batch.target_rows).all()
    assert builder.lengths([[3, 6, 5], [2]], [1, 4]).tolist() == lengths


def test_prompt_ids_match_training_prompt(builder):
    batch = builder.build([[3, 6, 5]], [1])
    prompt = builder.prompt_ids([3, 6, 5])
    assert row(batch)[: len(prompt)] == prompt and len(prompt) == batch.lengths[0] - len(
        builder.target_tokens(1)
    )
    assert builder.prompt_item_index([3, 6, 5]) == batch.item_index[0, : len(prompt)].tolist()
    assert builder.prompt_ids_batch([[3, 6, 5], [2]]) == [prompt, builder.prompt_ids([2])]
    infer = builder.build([[3, 6, 5], [2]])
    assert row(infer) == prompt and infer.labels.eq(-100).all() and infer.target_labels.numel() == 0


@pytest.mark.parametrize("mode", ["placeholder", "drop"])
def test_counterfactual_prompt(tok, mode):
    builder = PromptBuilder(tok, TITLES, "d3", GAMES, counterfactual=mode)
    factual = builder.build([[3, 6, 5], [2]], [1, 4])
    cf = builder.build([[3, 6, 5], [2]], [1, 4], counterfactual="drop_history")
    if mode == "placeholder":
        head = D3_HEAD + " None"
    else:
        head = (
            "Below is an instruction that describes a task. Write a response that appropriately completes the "
            "request.\n\n### Instruction:\nGiven a list of games the user recently enjoyed, please write a new "
            "game that the user may buy"
        )
    assert tok.decode(row(cf, 1)) == head + RESPONSE + 'Minecraft"\n' + EOS
    assert row(cf, 0)[: -len(builder.target_tokens(1))] == row(cf, 1)[: -len(builder.target_tokens(4))]
    assert cf.item_index.eq(-1).all() and cf.history_len.tolist() == [0, 0]
    assert torch.equal(cf.target_labels, factual.target_labels) and torch.equal(cf.target_t, factual.target_t)
    assert torch.equal(cf.target_len, factual.target_len)
    # Counterfactual prompts legitimately have no history.
    assert builder.prompt_ids([], counterfactual=True) == row(cf, 1)[: -len(builder.target_tokens(4))]
    assert torch.equal(
        builder.build([[]], [1], counterfactual=mode).input_ids[0], cf.input_ids[0, : cf.lengths[0]]
    )


def test_truncation_drops_oldest_first_never_target(tok):
    full = PromptBuilder(tok, TITLES, "d3", GAMES).build([[3, 6, 5]], [1])
    n = int(full.lengths[0])
    short = PromptBuilder(tok, TITLES, "d3", GAMES, max_length=n - 1).build([[3, 6, 5]], [1])
    text = tok.decode(row(short))
    # Item 3 is dropped; item 6 becomes the first piece (lead " " instead of the ", " separator).
    assert text == D3_HEAD + ' "Doom", "Tetris"' + RESPONSE + 'Halo 5: Guardians"\n' + EOS
    assert short.lengths[0] <= n - 1 and short.history_len.tolist() == [2]
    assert short.target_labels.tolist() == full.target_labels.tolist()
    assert short.item_index[0].max() == 1
    # max_history keeps only the most recent items before any length check.
    capped = PromptBuilder(tok, TITLES, "d3", GAMES, max_history=1).build([[3, 6, 5]], [1])
    assert tok.decode(row(capped)).startswith(D3_HEAD + ' "Tetris"' + RESPONSE)


def test_inference_prompt_reserves_room_for_longest_title(tok):
    builder = PromptBuilder(tok, TITLES, "d3", GAMES)
    n = len(builder.prompt_ids([3, 6, 5])) + builder.max_target_length
    assert (
        len(PromptBuilder(tok, TITLES, "d3", GAMES, max_length=n).prompt_ids([3, 6, 5]))
        + builder.max_target_length
        <= n
    )
    cut = PromptBuilder(tok, TITLES, "d3", GAMES, max_length=n - 1)
    assert tok.decode(cut.prompt_ids([3, 6, 5])) == D3_HEAD + ' "Doom", "Tetris"' + RESPONSE


def test_max_length_too_small_is_a_clear_error(tok):
    with pytest.raises(ValueError, match=r"max_length=40 is too small.*item 1"):
        PromptBuilder(tok, TITLES, "d3", GAMES, max_length=40).build([[3, 6, 5]], [1])
    with pytest.raises(ValueError, match="max_length=40 is too small for the counterfactual"):
        PromptBuilder(tok, TITLES, "d3", GAMES, max_length=40).build([[3]], [1], counterfactual=True)


def test_igd_and_cft_templates(tok):
    igd = PromptBuilder(tok, TITLES, "igd", GAMES).build([[3, 6]], [1])
    assert tok.decode(row(igd)).endswith(
        "before: Super Mario Odyssey, Doom\n\n### Response:\nHalo 5: Guardians\n" + EOS
    )
    cft = PromptBuilder(tok, TITLES, "cft", {"singular": "book", "plural": "books", "verb": "watched"})
    text = tok.decode(row(cft.build([[3]], [1])))
    assert (
        "Given ten books that the user watched recently, please recommend a new book that the user likes"
        in text
    )
    assert '### Input:\nThe user has watched the following books before: "Super Mario Odyssey"' in text
    cf = tok.decode(cft.prompt_ids([3], counterfactual=True))
    assert cf.endswith('The user has watched the following books before: None\n\n### Response:\n"')


def test_odd_titles_round_trip_and_stay_text(tok):
    odd = [
        "",
        'Say "hi"\tnow',
        "Pokémon™ Sun — Édition",
        "<|endoftext|> trick",
        "  spaced  ",
        "日本語のタイトル",
    ]
    builder = PromptBuilder(tok, odd, "d3", GAMES)
    for item in range(1, len(odd)):
        target = builder.target_tokens(item)
        assert tok.decode(target) == odd[item] + '"\n' + EOS
        assert target.count(tok.eos_token_id) == 1  # a special-token string inside a title is text
    batch = builder.build([[1, 2, 3, 4]], [5])
    assert tok.decode(row(batch)) == (
        D3_HEAD
        + ' "Say "hi"\tnow", "Pokémon™ Sun — Édition", "<|endoftext|> trick", "  spaced  "'
        + RESPONSE
        + '日本語のタイトル"\n'
        + EOS
    )


def test_duplicate_titles_share_target_tokens(tok):
    builder = PromptBuilder(tok, ["", "Doom", "Tetris", "Doom"], "d3", GAMES)
    seqs = builder.all_target_sequences()
    assert seqs[0] == [] and seqs[1] == seqs[3] != seqs[2]
    assert row(builder.build([[2]], [1])) == row(builder.build([[2]], [3]))


def test_bos_added_once_when_tokenizer_adds_it_by_default():
    tok = tiny_tokenizer()
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<|bos|> $A", special_tokens=[("<|bos|>", tok.bos_token_id)]
    )
    assert tok("a").input_ids[0] == tok.bos_token_id
    builder = PromptBuilder(tok, TITLES, "d3", GAMES)
    ids = row(builder.build([[3]], [1]))
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    assert tok.bos_token_id not in builder.target_tokens(1)
    assert tiny_tokenizer()("a").input_ids[0] != tiny_tokenizer().bos_token_id  # default: no BOS


def test_errors_name_the_problem(tok, builder):
    with pytest.raises(ValueError, match="padding item"):
        builder.build([[3, 0]], [1])
    with pytest.raises(ValueError, match="padding item"):
        builder.build([[3]], [0])
    with pytest.raises(ValueError, match="out of range"):
        builder.prompt_ids([99])
    with pytest.raises(ValueError, match="min_history >= 1"):
        builder.build([[]], [1])
    with pytest.raises(ValueError, match="2 targets for 1 histories"):
        builder.build([[3]], [1, 2])
    with pytest.raises(ValueError, match="counterfactual='sideways'"):
        builder.build([[3]], [1], counterfactual="sideways")
    with pytest.raises(ValueError, match="prompt_template='alpaca' is unknown"):
        PromptBuilder(tok, TITLES, "alpaca")
    with pytest.raises(ValueError, match="cft_counterfactual='none'"):
        PromptBuilder(tok, TITLES, counterfactual="none")
    with pytest.raises(ValueError, match=r"prompt_item_format=.*\{title\}"):
        PromptTemplate.from_config({"prompt_template": "custom", "prompt_item_format": "<{name}>"})
    with pytest.raises(ValueError, match="unknown or malformed field"):
        PromptBuilder(tok, TITLES, PromptTemplate.from_config({"prompt_instruction": "Pick a {genre}"}))
    with pytest.raises(TypeError, match="item 2"):
        PromptBuilder(tok, ["", "a", None])


class RecBoleLikeConfig:
    """RecBole's Config: __getitem__ returns None for a missing key, and there is no .get()."""

    def __init__(self, values):
        self.values = values

    def __contains__(self, key):
        return key in self.values

    def __getitem__(self, key):
        return self.values.get(key)


def test_from_config_custom_template(tok):
    config = RecBoleLikeConfig(
        {
            "prompt_template": "custom",
            "prompt_instruction": "Recommend a {singular}.",
            "prompt_item_format": "<{title}>",
            "prompt_item_separator": " | ",
            "prompt_response_header": "\nAnswer: <",
            "prompt_target_format": "{title}>",
            "max_length": 300,
            "MAX_ITEM_LIST_LENGTH": 2,
            "cft_counterfactual": "placeholder",
            "cft_placeholder": "Unknow",
            "category": None,
        }
    )
    builder = PromptBuilder.from_config(config, tok, TITLES, {"singular": "film", "plural": "films"})
    assert builder.max_length == 300 and builder.max_history == 2 and builder.template.name == "custom"
    text = tok.decode(row(builder.build([[3, 6, 5]], [1])))
    assert text.endswith(
        "Recommend a film.\n\n### User Input:\nThe user has interacted with the following films before: "
        "<Doom> | <Tetris>\nAnswer: <Halo 5: Guardians>" + EOS
    )
    assert tok.decode(builder.prompt_ids([3], counterfactual=True)).endswith("before: Unknow\nAnswer: <")
    assert Category.from_any("movies") == Category("movies", "movies")


@settings(max_examples=40, deadline=None)
@given(
    titles=st.lists(
        st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=20), min_size=1, max_size=6
    ),
    data=st.data(),
)
def test_property_pieces_round_trip(titles, data):
    tok = tiny_tokenizer()
    builder = PromptBuilder(tok, ["", *titles], "d3", GAMES)
    n = len(titles)
    history = data.draw(st.lists(st.integers(1, n), min_size=1, max_size=5))
    target = data.draw(st.integers(1, n))
    batch = builder.build([history], [target])
    shown = ", ".join(f'"{titles[i - 1]}"' for i in history)
    assert tok.decode(row(batch)) == f'{D3_HEAD} {shown}{RESPONSE}{titles[target - 1]}"\n{EOS}'
    assert batch.target_labels.tolist() == builder.all_target_sequences()[target]
    assert int((batch.labels != -100).sum()) == len(builder.target_tokens(target))
    assert sorted(set(batch.item_index[0].tolist()) - {-1}) == list(range(len(history)))


def test_build_64_prompts_is_fast(tok):
    import random

    rng = random.Random(0)
    titles = ["", *(f"Game {i} Deluxe Edition of the Year" for i in range(2000))]
    builder = PromptBuilder(tok, titles, "d3", GAMES)
    histories = [[rng.randint(1, 2000) for _ in range(10)] for _ in range(64)]
    targets = [rng.randint(1, 2000) for _ in range(64)]
    times = []
    for _ in range(30):
        start = time.perf_counter()
        builder.build(histories, targets)
        times.append(time.perf_counter() - start)
    assert sorted(times)[15] < 0.02  # measured ≈ 1 ms; generous bound for a busy CI machine


SMOLLM2 = Path.home() / ".cache" / "recbole_llm" / "SmolLM2-135M-Instruct"


@pytest.mark.skipif(not (SMOLLM2 / "tokenizer.json").is_file(), reason="SmolLM2 cache not built (make model)")
def test_real_smollm2_tokenizer():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(SMOLLM2), local_files_only=True)
    titles = [
        "",
        "The Legend of Zelda: Breath of the Wild",
        "Halo 5: Guardians",
        "Pokémon™ Sun",
        "<|im_end|> x",
    ]
    builder = PromptBuilder(tok, titles, "d3", GAMES)
    assert builder.bos_ids == [] and tok.decode([tok.eos_token_id]) == "<|im_end|>"
    batch = builder.build([[1, 4]], [2])
    assert tok.decode(row(batch)) == (
        D3_HEAD
        + ' "The Legend of Zelda: Breath of the Wild", "<|im_end|> x"'
        + RESPONSE
        + 'Halo 5: Guardians"\n<|im_end|>'
    )
    # Title pieces are what the tokenizer gives for the title text alone; the special-token string is text.
    assert builder.target_tokens(2) == tok('Halo 5: Guardians"\n').input_ids + [tok.eos_token_id]
    assert builder.target_tokens(4).count(tok.eos_token_id) == 1
    # Decoding the prompt needs no BOS and the pad token is EOS: labels come from lengths, not pad ids.
    assert tok.pad_token_id == tok.eos_token_id and batch.labels.ne(-100).sum() == len(
        builder.target_tokens(2)
    )
