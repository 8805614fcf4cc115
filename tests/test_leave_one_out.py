"""``split_protocol: leave_one_out`` beside D3's global-time split: per user, the last sample to test and
the second-last to validation, chosen when the dataset is prepared, identical for every model."""

import sys

import pandas as pd
import pytest
from recbole.data import data_preparation

from recbole_llm.config import Config
from recbole_llm.data.converters import RawData
from recbole_llm.data.prepare import ProtocolParams, run_protocol, split_data_root
from recbole_llm.data.protocol import build_samples, check_split_protocol, leave_one_out_split
from recbole_llm.quick_start import create_dataset
from tests.fixtures import write_prepared
from tests.test_dataset import _triples


def _inter(rows):
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])


def test_leave_one_out_split_hand_computed():
    # u1: a b c d e (4 samples), u2: x y z (2 samples: too few, all train), u3: p q r s (3 samples)
    inter = _inter(
        [("u1", i, t) for i, t in zip("abcde", (1, 2, 3, 9, 10))]
        + [("u2", i, t) for i, t in zip("xyz", (4, 5, 11))]
        + [("u3", i, t) for i, t in zip("pqrs", (6, 7, 8, 8))]  # tie at t=8: raw order decides
    )
    train, valid, test = leave_one_out_split(build_samples(inter))
    as_rows = lambda f: list(zip(f["user_id"], f["item_id_list"], f["item_id"]))  # noqa: E731
    assert as_rows(test) == [("u3", "p q r", "s"), ("u1", "a b c d", "e")]  # global time order
    assert as_rows(valid) == [("u3", "p q", "r"), ("u1", "a b c", "d")]
    assert as_rows(train) == [
        ("u1", "a", "b"),
        ("u1", "a b", "c"),
        ("u2", "x", "y"),
        ("u3", "p", "q"),
        ("u2", "x y", "z"),
    ]


def test_leave_one_out_through_the_protocol_and_folders(tmp_path):
    rows = [(f"u{u}", f"i{(u + j) % 7}", float(10 * u + j)) for u in range(6) for j in range(6)]
    raw = RawData(_inter(rows), {f"i{i}": f"Title {i}" for i in range(7)})
    loo = run_protocol(raw, ProtocolParams(kcore=2, split="leave_one_out"))
    for u, frame in loo.splits["test"].groupby("user_id"):
        assert len(frame) == 1 and frame["item_id"].iloc[0] == f"i{(int(u[1:]) + 5) % 7}"
    assert len(loo.splits["valid"]) == len(loo.splits["test"]) == 6
    d3 = run_protocol(raw, ProtocolParams(kcore=2))
    assert sum(map(len, d3.splits.values())) == sum(map(len, loo.splits.values()))  # same samples
    assert split_data_root("dataset", "global_time").as_posix() == "dataset"
    assert split_data_root("dataset", "leave_one_out").as_posix() == "dataset/leave_one_out"
    with pytest.raises(ValueError, match="split_protocol='random' is unknown"):
        check_split_protocol("random")


@pytest.mark.parametrize("split", ["global_time", "leave_one_out"])
def test_every_model_sees_identical_triples_per_split(tmp_path, monkeypatch, tiny_model_path, split):
    monkeypatch.setattr(sys, "argv", ["run"])
    expected = write_prepared(tmp_path, split=split)
    got = {}
    for model in ("SASRec", "GRU4Rec", "Caser", "SASRecLLM", "GRU4RecLLM", "LLMGenRec"):
        llm = {"llm_path": str(tiny_model_path), "checkpoint_dir": str(tmp_path / "saved")}
        extra = llm if "LLM" in model else {}
        config = Config(
            model=model,
            dataset="tiny",
            config_dict={"data_path": str(tmp_path), "state": "ERROR", "split_protocol": split, **extra},
        )
        loaders = data_preparation(config, create_dataset(config))
        got[model] = [sorted(_triples(loader)) for loader in loaders]
    for model, splits in got.items():
        assert splits == [sorted(expected[s]) for s in ("train", "valid", "test")], model
    if split == "leave_one_out":
        test_users = [u for u, _, _ in expected["test"]]
        assert len(test_users) == len(set(test_users)) == 12  # one test sample per user: the last


def test_unknown_split_protocol_is_refused_by_the_config(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["run"])
    write_prepared(tmp_path)
    with pytest.raises(ValueError, match="split_protocol='lou' is unknown"):
        Config(
            model="SASRec", dataset="tiny", config_dict={"data_path": str(tmp_path), "split_protocol": "lou"}
        )


def test_both_keys_are_documented_with_their_defaults():
    import yaml

    from tests.test_docs import README, ROOT

    overall = yaml.safe_load((ROOT / "properties" / "overall.yaml").read_text())
    assert overall["split_protocol"] == "global_time" and overall["exclude_history"] is False
    assert "| `split_protocol` | `global_time` |" in README
    assert "| `exclude_history` | `False` |" in README


def test_a_leave_one_out_run_is_read_from_its_own_copy(tmp_path, monkeypatch):
    """Reading a finished leave-one-out run checks <data>/leave_one_out/<name>/, the copy it trained on."""
    from recbole_llm.quick_start import _check_data

    monkeypatch.setattr(sys, "argv", ["run"])
    write_prepared(tmp_path, split="leave_one_out")  # only the leave-one-out copy exists
    config = Config(
        model="SASRec",
        dataset="tiny",
        config_dict={"data_path": str(tmp_path), "split_protocol": "leave_one_out", "state": "ERROR"},
    )
    _check_data(config)  # was: "The prepared dataset tiny of this run is not at ..."
    global_time = Config(
        model="SASRec", dataset="tiny", config_dict={"data_path": str(tmp_path), "state": "ERROR"}
    )
    with pytest.raises(FileNotFoundError, match="The prepared dataset tiny of this run is not at"):
        _check_data(global_time)
