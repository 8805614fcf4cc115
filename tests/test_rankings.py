"""Rankings on disk (issue 15): every test writes ``rankings.jsonl`` in the test fingerprint's order, with
the dataset's own tokens, and every metric recomputed from that file alone equals the run's results JSON;
the beyond-accuracy metrics never count the padding item."""

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from recbole_llm.analysis.__main__ import main as analysis_main
from recbole_llm.analysis.rankings import metrics_of
from recbole_llm.quick_start import load_run_dataset, run_recbole_llm
from recbole_llm.trainer.evaluation import beyond_accuracy
from recbole_llm.utils.rankings import read_rankings
from recbole_llm.utils.results import split_fingerprint
from tests.fixtures import TITLES


def _run(workspace, monkeypatch, model: str, **overrides):
    root, model_dir = workspace
    monkeypatch.chdir(root)
    monkeypatch.setattr(sys, "argv", ["run_recbole_llm.py"])
    config = {
        "data_path": str(root / "data"),
        "checkpoint_dir": str(root / "saved"),
        "results_dir": str(root / "results"),
        "epochs": 1,
        "train_batch_size": 16,
        "show_progress": False,
        "state": "ERROR",
        **({"llm_path": str(model_dir), "mixed_precision": "no"} if model == "LLMGenRec" else {}),
        **overrides,
    }
    return run_recbole_llm(model=model, dataset="tiny", config_dict=config)


def _test_split_tokens(results_file: str) -> tuple[list[tuple[str, str]], str]:
    """(user, target) tokens of the run's test split in its own order, and that split's fingerprint."""
    _, dataset = load_run_dataset(results_file)
    test = dataset.build()[2]
    inter = test.inter_feat
    users = dataset.id2token(dataset.uid_field, inter[dataset.uid_field].numpy())
    targets = dataset.id2token(dataset.iid_field, inter[dataset.iid_field].numpy())
    return list(zip(users.tolist(), targets.tolist(), strict=True)), split_fingerprint(test)


def _check_run(result: dict) -> list[dict]:
    info = json.loads(Path(result["results_file"]).read_text())
    path = Path(info["rankings"])
    assert info["paths"]["rankings"]["absolute"] == str(path) and path.is_file()
    rows = read_rankings(path)
    assert len(rows) == info["n_test_samples"]
    order, fingerprint = _test_split_tokens(result["results_file"])
    assert fingerprint == info["test_fingerprint"]
    assert [(r["user"], r["target"]) for r in rows] == order  # the fingerprint's sample order
    # The dataset's own tokens ("u3", "i7"), not RecBole's internal ids.
    assert all(r["user"].startswith("u") and r["target"] in TITLES for r in rows)
    assert all(item in TITLES for r in rows for item in r["items"])
    for r in rows:
        assert 1 <= len(r["items"]) <= 10 and len(r["scores"]) == len(r["items"])
        known = [s for s in r["scores"] if s is not None]
        assert known == sorted(known, reverse=True)  # best first
    recomputed = metrics_of(result["results_file"])
    assert recomputed["test_result"] == info["test_result"]  # exactly, from the file alone
    assert recomputed["n_samples"] == info["n_test_samples"]
    beyond = recomputed["beyond_accuracy"]
    assert 0 < beyond["itemcoverage@10"] <= 1 and 0 <= beyond["tailpercentage@5"] <= 1
    return rows


def test_llmgenrec_rankings_recompute_its_results_and_evaluate_writes_its_own(workspace, monkeypatch):
    result = _run(workspace, monkeypatch, "LLMGenRec", eval_sample_num=6)
    rows = _check_run(result)
    assert Path(result["rankings"]).name == "rankings.jsonl"
    assert (Path(result["rankings"]).parent / "run.json").is_file()  # in the run folder
    assert all(isinstance(s, float) for r in rows for s in r["scores"])  # constrained beams: all scored

    again = run_recbole_llm(config_dict={"evaluate": result["results_file"]})
    assert again["rankings"] != result["rankings"] and Path(result["rankings"]).is_file()
    assert Path(again["rankings"]).parent == Path(result["rankings"]).parent
    assert read_rankings(again["rankings"]) == rows  # same checkpoint, same decoding
    _check_run(again)


def test_sasrec_rankings_recompute_its_results_and_the_command_reads_them(workspace, monkeypatch, capsys):
    # exclude_history on 12 items: a top-10 reaches -inf scores, the padding item 0 among them.
    result = _run(workspace, monkeypatch, "SASRec", exclude_history=True)
    rows = _check_run(result)  # only real item tokens, and still RecBole's own metrics
    checkpoint = Path(result["checkpoint"])
    assert Path(result["rankings"]) == checkpoint.with_suffix(".rankings.jsonl")
    assert any(len(r["items"]) < 10 for r in rows)  # the padding item dropped: a shorter list
    assert any(s is None for r in rows for s in r["scores"])  # -inf (history) scores as null

    analysis_main(["metrics", result["results_file"], "--k", "3"])
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(printed["test_result"]) == {"hit@3", "ndcg@3"}
    hits = sum(r["target"] in r["items"][:3] for r in rows) / len(rows)
    assert printed["test_result"]["hit@3"] == round(hits, 4)
    with pytest.raises(ValueError, match="holds top-10 lists"):
        metrics_of(result["results_file"], k=[5, 20])  # longer than what was saved: refused, not padded
    older = Path(result["results_file"]).with_name("older.json")
    older.write_text(json.dumps({"model": "SASRec", "dataset": "tiny"}))
    with pytest.raises(FileNotFoundError, match="was never written .* --evaluate="):
        metrics_of(older)
    # A bare rankings file outside a run folder: accuracy from the file alone, no catalogue.
    bare = metrics_of(result["rankings"])
    assert bare["test_result"] == json.loads(Path(result["results_file"]).read_text())["test_result"]
    assert "beyond_accuracy" not in bare


@pytest.mark.parametrize("model", ["GRU4Rec", "Caser", "SASRecLLM", "GRU4RecLLM"])
def test_every_baseline_writes_rankings_that_recompute_its_results(workspace, monkeypatch, model):
    llm = {"llm_path": str(workspace[1])} if model.endswith("LLM") else {}
    result = _run(workspace, monkeypatch, model, **llm)
    _check_run(result)
    again = run_recbole_llm(config_dict={"evaluate": result["results_file"]})  # --evaluate of a .pth
    assert Path(again["rankings"]).name.startswith(Path(result["checkpoint"]).stem + ".evaluate-")
    assert read_rankings(again["rankings"]) == read_rankings(result["rankings"])


def test_beyond_accuracy_by_hand_never_counts_the_padding():
    """Three lists over a catalogue of 5 items; the second is short (one item, -1 padding), the third
    empty. Training counts: item 1: 4, item 2: 2, item 3: 1, items 4-5: never."""
    ranked = torch.tensor([[1, 2, 3], [2, -1, -1], [-1, -1, -1]])
    counts = {1: 4, 2: 2, 3: 1}
    got = beyond_accuracy(ranked, [1, 3], num_items=5, counts=counts, tail_ratio=0.34)
    # @3: items present 1, 2, 3, 2 (4 slots): coverage 3/5 (item 0 not counted).
    assert got["itemcoverage@3"] == 0.6
    assert got["itemcoverage@1"] == 0.4  # items 1 and 2
    # Popularity: list 1 (4+2+1)/3, list 2 2/1, the empty list left out: (7/3 + 2) / 2.
    assert got["averagepopularity@3"] == round((7 / 3 + 2) / 2, 4)
    assert got["averagepopularity@1"] == 3.0  # (4 + 2) / 2
    # Tail (RecBole: the int(3 * 0.34) = 1 least counted training item = item 3): list 1 1/3, list 2 0.
    assert got["tailpercentage@3"] == round((1 / 3 + 0) / 2, 4)
    # Entropy (RecBole divides by the number of distinct items): p = 1/4, 2/4, 1/4.
    entropy = -(2 * 0.25 * math.log(0.25) + 0.5 * math.log(0.5)) / 3
    assert got["shannonentropy@3"] == round(entropy, 4)
    # Gini (RecBole): sorted counts 1, 1, 2 at positions 3, 4, 5 of 5 items, 4 recommendations.
    gini = ((2 * 3 - 6) * 1 + (2 * 4 - 6) * 1 + (2 * 5 - 6) * 2) / 4 / 5
    assert got["giniindex@3"] == round(gini, 4)


@pytest.mark.parametrize("bad", ['{"user": "u1"', '{"user": "u1", "items": []}'])
def test_a_damaged_rankings_file_names_its_line(tmp_path, bad):
    path = tmp_path / "rankings.jsonl"
    path.write_text('{"user": "u0", "target": "i1", "items": ["i1"], "scores": [0.0]}\n' + bad + "\n")
    with pytest.raises(ValueError, match="line 2"):
        read_rankings(path)


def test_ranked_items_get_their_titles_beam_score_and_filled_items_none():
    """Leaves (titles) 0: items 3, 6 (a shared title), 1: item 1, 2: item 2. Beams found leaves 1 then 0;
    item 5 was filled in (popularity), -1 pads."""
    from types import SimpleNamespace

    from recbole_llm.model.decoding.items import ranked_item_scores

    trie = SimpleNamespace(
        leaf_item_ptr=torch.tensor([0, 2, 3, 4]), leaf_items=torch.tensor([3, 6, 1, 2]), num_leaves=3
    )
    leaves, scores = torch.tensor([[1, 0, -1]]), torch.tensor([[-0.5, -1.5, -math.inf]])
    got = ranked_item_scores(trie, leaves, scores, torch.tensor([[1, 3, 6, 5, -1]]))
    assert got[0, :3].tolist() == [-0.5, -1.5, -1.5]
    assert torch.isnan(got[0, 3:]).all()
