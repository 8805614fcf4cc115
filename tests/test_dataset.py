"""Every model reads exactly the prepared (user, history, target) samples, split by split."""

import sys
from pathlib import Path

import pytest
from recbole.data import data_preparation

from recbole_llm.config import Config
from recbole_llm.quick_start import create_dataset, run_recbole_llm
from recbole_llm.utils.errors import UserError
from tests.fixtures import TITLES, write_prepared


def _triples(loader):
    ds = loader.dataset
    inter = ds.inter_feat
    uid, iid = ds.uid_field, ds.iid_field
    users = ds.field2id_token[uid]
    items = ds.field2id_token[iid]
    out = []
    for u, seq, n, target in zip(
        inter[uid], inter[iid + "_list"], inter["item_length"], inter[iid], strict=True
    ):
        out.append((users[u], tuple(items[i] for i in seq[:n].tolist()), items[target]))
    return out


@pytest.mark.parametrize("model", ["SASRec", "GRU4Rec", "Caser"])
def test_baselines_see_exactly_the_prepared_samples(tmp_path, monkeypatch, model):
    monkeypatch.setattr(sys, "argv", ["run"])
    expected = write_prepared(tmp_path)
    config = Config(model=model, dataset="tiny", config_dict={"data_path": str(tmp_path), "state": "ERROR"})
    splits = data_preparation(config, create_dataset(config))
    for name, loader in zip(("train", "valid", "test"), splits, strict=True):
        assert sorted(_triples(loader)) == sorted(expected[name]), name
    # histories are padded to exactly MAX_ITEM_LIST_LENGTH (Caser's convolution needs a fixed width)
    assert splits[0].dataset.inter_feat["item_id_list"].shape[1] == config["MAX_ITEM_LIST_LENGTH"]


def test_history_is_cut_to_the_most_recent_items(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["run"])
    expected = write_prepared(tmp_path)
    config = Config(
        model="SASRec",
        dataset="tiny",
        config_dict={"data_path": str(tmp_path), "MAX_ITEM_LIST_LENGTH": 2, "state": "ERROR"},
    )
    train, _, _ = data_preparation(config, create_dataset(config))
    got = sorted(_triples(train))
    assert got == sorted((u, h[-2:], i) for u, h, i in expected["train"])


def test_sample_nums_subsample_identically_for_every_model(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["run"])
    write_prepared(tmp_path)
    picked = {}
    for model in ("SASRec", "GRU4Rec"):
        config = Config(
            model=model,
            dataset="tiny",
            config_dict={
                "data_path": str(tmp_path),
                "eval_sample_num": 4,
                "train_sample_num": 10,
                "state": "ERROR",
            },
        )
        train, valid, test = data_preparation(config, create_dataset(config))
        assert (len(train.dataset), len(valid.dataset), len(test.dataset)) == (10, 4, 4)
        picked[model] = (_triples(train), _triples(test))
    assert picked["SASRec"] == picked["GRU4Rec"]


def test_cli_overrides_and_results_file(tmp_path, monkeypatch):
    import json

    write_prepared(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(
        sys,
        "argv",
        ["run_recbole_llm.py", "--epochs=1", f"--data_path={tmp_path}", "--hidden_size=16", "--state=ERROR"],
    )
    result = run_recbole_llm(model="SASRec", dataset="tiny")
    saved = json.loads(Path(result["results_file"]).read_text())
    assert saved["config"]["epochs"] == 1 and saved["config"]["hidden_size"] == 16
    assert set(saved["test_result"]) == {"hit@5", "hit@10", "ndcg@5", "ndcg@10"}
    assert saved["test_fingerprint"] == result["test_fingerprint"]


ITEM_HEADER = "item_id:token\ttitle:token\n"


def _items(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "tiny" / "tiny.item"
    path.write_text(ITEM_HEADER + body, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("body", "message"),
    [
        # Issue 14: a tab inside a title silently cut the title at the tab ...
        ("i1\tThe Matrix (1999)\ni2\tStar\tWars (1977)\n", r"tiny\.item:3: 3 fields where the header has 2 "),
        # ... a title starting with a quote raised a pandas ParserError naming no file ...
        ('i1\tThe Matrix (1999)\ni2\t"Weird Al" Yankovic\n', r"tiny\.item:3: .*quoted as a whole"),
        # ... a line break inside a title leaves a short line (here line 4), and so does a missing field.
        ("i1\tThe Matrix (1999)\ni2\tStar\nWars (1977)\n", r"tiny\.item:4: 1 fields where the header has 2"),
        ('i1\t"The Matrix (1999)\ni2\tToy Story\n', r"tiny\.item:2: .*unexpected end of data"),
    ],
)
def test_hand_written_atomic_files_are_refused_at_the_line(tmp_path, monkeypatch, body, message):
    monkeypatch.setattr(sys, "argv", ["run"])
    write_prepared(tmp_path)
    path = _items(tmp_path, body)
    config = Config(
        model="SASRec", dataset="tiny", config_dict={"data_path": str(tmp_path), "state": "ERROR"}
    )
    with pytest.raises(UserError, match=message) as err:
        create_dataset(config)
    assert str(path) in str(err.value)


def test_quoted_fields_keep_tabs_quotes_and_line_breaks(tmp_path, monkeypatch):
    """A field quoted as a whole (inner quotes doubled, as preparation writes titles) is read verbatim."""
    monkeypatch.setattr(sys, "argv", ["run"])
    write_prepared(tmp_path)
    odd = {"i2": '"Weird Al" Yankovic', "i3": "Star\tWars", "i7": "Line\nbreak", "i8": 'Say "hi"'}
    rows = "".join(
        f"{raw}\t{odd.get(raw, title)}\n"
        if raw not in odd
        else f'{raw}\t"{odd[raw].replace(chr(34), 2 * chr(34))}"\n'
        for raw, title in TITLES.items()
    )
    _items(tmp_path, rows)
    config = Config(
        model="SASRec", dataset="tiny", config_dict={"data_path": str(tmp_path), "state": "ERROR"}
    )
    dataset = create_dataset(config)
    titles = dataset.item_titles()
    for raw, title in odd.items():
        assert titles[int(dataset.token2id("item_id", raw))] == title
    assert titles[int(dataset.token2id("item_id", "i1"))] == "The Matrix (1999)"
