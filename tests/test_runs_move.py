"""A finished run works from any working folder and after its results and saved/ folders are moved
together; reading it (recommend, --evaluate, compare, reload) creates nothing in the working folder."""

import json
import shutil
import sys
from pathlib import Path

import pytest

from recbole_llm.quick_start import load_trained, run_recbole_llm
from recbole_llm.recommend import Recommender
from recbole_llm.reporting.compare import run_compare


def test_a_moved_run_is_read_from_another_folder_without_side_effects(workspace, monkeypatch, tmp_path):
    root, model_dir = workspace
    before = tmp_path / "before"
    monkeypatch.chdir(root)
    monkeypatch.setattr(sys, "argv", ["run_recbole_llm.py"])
    config = {
        "data_path": str(root / "data"),
        "llm_path": str(model_dir),
        "checkpoint_dir": str(before / "saved"),
        "results_dir": str(before / "results"),
        "epochs": 1,
        "train_batch_size": 16,
        "eval_sample_num": 4,
        "show_progress": False,
        "state": "ERROR",
        "mixed_precision": "no",
    }
    result = run_recbole_llm(model="LLMGenRec", dataset="tiny", config_dict=config)
    name = Path(result["results_file"]).name
    after = tmp_path / "after"
    shutil.move(before, after)  # results/ and saved/ moved together; the old absolute paths are gone
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    results_json = after / "results" / "tiny" / name
    (run_folder,) = (after / "saved").iterdir()

    recs = Recommender.load(results_json).recommend(["Toy Story (1995)"], k=3)
    assert len(recs) == 3
    assert load_trained(run_folder).model.n_items == 13
    again = run_recbole_llm(config_dict={"evaluate": str(results_json)})
    assert Path(again["results_file"]).parent == results_json.parent  # beside the evaluated run
    assert again["test_result"] == json.loads(results_json.read_text())["test_result"]
    files = run_compare([results_json], plot=False)
    assert files["csv"].parent == results_json.parent
    assert list(elsewhere.iterdir()) == []
    assert not before.exists()


def test_a_moved_run_whose_data_is_gone_is_refused_not_prepared(monkeypatch, tmp_path):
    info = {
        "model": "SASRec",
        "dataset": "tiny",
        "checkpoint": "saved/x.pth",
        "paths": {
            "checkpoint": {"relative": "x.pth", "absolute": str(tmp_path / "gone" / "x.pth")},
            "data": {"relative": "missing/tiny", "absolute": str(tmp_path / "gone" / "tiny")},
        },
    }
    (tmp_path / "x.pth").write_bytes(b"")
    (tmp_path / "run.json").write_text(json.dumps(info))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", ["recommend"])

    with pytest.raises(FileNotFoundError, match="prepared dataset tiny of this run is not at"):
        load_trained(tmp_path / "run.json")
    assert list(cwd.iterdir()) == []
