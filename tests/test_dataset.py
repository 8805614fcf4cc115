"""Every model reads exactly the prepared (user, history, target) samples, split by split."""

import sys
from pathlib import Path

import pytest
from recbole.data import data_preparation

from recbole_llm.config import Config
from recbole_llm.quick_start import create_dataset, run_recbole_llm
from tests.fixtures import write_prepared


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


# ------------------------------------------------------------------- hand-written atomic files (issue 14)
def _titles_after_edit(tmp_path, monkeypatch, second_line: str) -> list[str]:
    """Write the fixture, replace the .item file's first item row by ``second_line``, load the dataset."""
    monkeypatch.setattr(sys, "argv", ["run"])
    write_prepared(tmp_path)
    item = tmp_path / "tiny" / "tiny.item"
    lines = item.read_text(encoding="utf-8").splitlines(keepends=True)
    item.write_text(lines[0] + second_line + "".join(lines[2:]), encoding="utf-8")
    config = Config(
        model="SASRec", dataset="tiny", config_dict={"data_path": str(tmp_path), "state": "ERROR"}
    )
    return create_dataset(config).item_titles()


@pytest.mark.parametrize(
    ("line", "title"),
    [
        ('i1\t"Tab\tinside (1999)"\n', "Tab\tinside (1999)"),  # quoted as a whole: the tab is kept
        ('i1\t"""Quoted"" start (1999)"\n', '"Quoted" start (1999)'),  # a leading quote, doubled
        ('i1\tMid "quote" (1999)\n', 'Mid "quote" (1999)'),  # a quote inside an unquoted field is literal
    ],
)
def test_quoted_fields_of_a_hand_written_item_file_are_read_as_written(tmp_path, monkeypatch, line, title):
    assert title in _titles_after_edit(tmp_path, monkeypatch, line)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("i1\tTab\tinside (1999)\n", r"tiny\.item:2: 3 tab-separated fields, the header has 2: a tab inside"),
        ('i1\t"Unclosed (1999)\n', r"tiny\.item:2: .*(line break|quote)"),
        ('i1\t"Closed" then more (1999)\n', r"tiny\.item:2: .*quote a field that contains"),
    ],
)
def test_misread_rows_of_a_hand_written_item_file_are_refused_with_the_line(
    tmp_path, monkeypatch, line, message
):
    from recbole_llm.utils.errors import UserError

    with pytest.raises(UserError, match=message):
        _titles_after_edit(tmp_path, monkeypatch, line)
