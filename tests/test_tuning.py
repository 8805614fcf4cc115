"""recbole_llm.tuning (run_hyper.py): params files, selection direction, trial table; end to end on SASRec
with RecBole's HyperTuning."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pandas as pd
import pytest

import run_hyper
from recbole_llm import tuning
from recbole_llm.model.decoding.settings import DECODING_KEYS
from tests.fixtures import write_prepared


def _params(tmp_path, text):
    path = tmp_path / "p.hyper"
    path.write_text(text)
    return path


def test_params_file_parsing(tmp_path):
    path = _params(
        tmp_path,
        "# comment\n"
        "lambda choice [0.01, 0.05, 0.1]   # CFT grid\n"
        "\n"
        "dropout_prob uniform 0.1 0.5\n"
        "learning_rate loguniform -9.2,-4.6\n"
        "hidden_size quniform 32, 128, 32\n"
        "prompt_template choice ['d3', 'igd']\n",
    )
    assert tuning.parse_params_file(path) == {
        "lambda": ("choice", [0.01, 0.05, 0.1]),
        "dropout_prob": ("uniform", [0.1, 0.5]),
        "learning_rate": ("loguniform", [-9.2, -4.6]),
        "hidden_size": ("quniform", [32.0, 128.0, 32.0]),
        "prompt_template": ("choice", ["d3", "igd"]),
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("lambda pick [1]\n", "unknown type"),
        ("lambda choice 0.1\n", "non-empty list"),
        ("lambda choice [__import__('os')]\n", "list literal"),
        ("beta uniform 0.5 0.1\n", "must be below"),
        ("beta uniform 0.1\n", "needs 2 numbers"),
        ("beta\n", "expected `name type values`"),
        ("# nothing\n", "defines no parameter"),
    ],
)
def test_bad_params_files_say_what_to_fix(tmp_path, text, message):
    with pytest.raises(ValueError, match=message):
        tuning.parse_params_file(_params(tmp_path, text))


def _rec(score, bigger):
    return {"best_valid_score": score, "valid_score_bigger": bigger}


def test_best_trial_follows_the_validation_direction():
    assert tuning.best_trial([_rec(0.2, True), _rec(0.5, True), _rec(0.5, True), _rec(0.1, True)]) == 1
    assert tuning.best_trial([_rec(2.0, False), _rec(1.5, False), _rec(1.7, False)]) == 1
    # RecBole's own tracker treats a best score of 0.0 as "none yet"; ours does not
    assert tuning.best_trial([_rec(0.0, False), _rec(0.3, False)]) == 0
    assert tuning.best_trial([_rec(math.nan, True), _rec(0.1, True)]) == 1
    assert tuning.best_trial([]) is None


def test_loss_is_minimised_through_recbole_hypertuning(tmp_path, monkeypatch):
    """A fake objective (valid loss per lambda): HyperTuning must pick the lowest loss, and so must the table."""
    import recbole_llm.quick_start as quick_start

    losses = {0.01: 0.9, 0.05: 0.2, 0.1: 0.5}
    seen = []

    def fake_objective(config_dict, config_file_list=None, saved=True):
        seen.append(dict(config_dict))
        loss = losses[config_dict["lambda"]]
        return {
            "model": config_dict["model"],
            "best_valid_score": loss,
            "valid_score_bigger": False,
            "best_valid_result": {"loss": loss},
            "test_result": {"hit@10": 1 - loss},
            "results_file": f"r-{config_dict['lambda']}.json",
        }

    monkeypatch.setattr(quick_start, "objective_function", fake_objective)
    monkeypatch.setattr(sys, "argv", ["run_hyper.py"])
    write_prepared(tmp_path)
    out = run_hyper.main(
        [
            "--model=SASRec",
            "--dataset=tiny",
            f"--params_file={_params(tmp_path, 'lambda choice [0.01, 0.05, 0.1]')}",
            f"--output={tmp_path / 'hyper'}",
            f"--data_path={tmp_path}",
            "--state=ERROR",
        ]
    )
    assert sorted(s["lambda"] for s in seen) == [0.01, 0.05, 0.1]  # exhaustive: the whole grid
    assert all(s["model"] == "SASRec" and s["dataset"] == "tiny" for s in seen)
    assert out["best"]["lambda"] == 0.05 and out["best"]["best_valid_score"] == 0.2
    assert out["recbole_best_params"] == {"lambda": 0.05}  # HyperTuning itself minimised the loss
    table = pd.read_csv(tmp_path / "hyper" / "hyper_trials.csv")
    assert table.loc[table["best"] == "*", "lambda"].tolist() == [0.05]
    assert table.loc[table["lambda"] == 0.1, "test_hit@10"].item() == pytest.approx(0.5)
    assert "lower is better" in (tmp_path / "hyper" / "hyper_trials.md").read_text()


def _refused(capsys, message: str, argv: list[str]) -> None:
    """run_hyper.py turns a user mistake into one ``error:`` line on stderr and exit code 2."""
    with pytest.raises(SystemExit) as stop:
        run_hyper.main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_searched_keys_cannot_also_be_fixed(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["run_hyper.py"])
    params = _params(tmp_path, "learning_rate choice [0.1, 0.01]\n")
    _refused(
        capsys,
        "both searched",
        ["--model=SASRec", "--dataset=tiny", f"--params_file={params}", "--learning_rate=0.5"],
    )
    ranges = _params(tmp_path, "learning_rate loguniform -9 -4\n")
    _refused(
        capsys, "random or --algo=bayes", ["--model=SASRec", "--dataset=tiny", f"--params_file={ranges}"]
    )


def test_end_to_end_grid_on_sasrec(tmp_path, monkeypatch):
    write_prepared(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["run_hyper.py"])
    params = _params(tmp_path, "hidden_size choice [8, 16]\n")
    out = run_hyper.main(
        [
            "--model=SASRec",
            "--dataset=tiny",
            f"--params_file={params}",
            f"--data_path={tmp_path}",
            "--epochs=1",
            "--state=ERROR",
            "--show_progress=False",
        ]
    )
    records = out["records"]
    assert sorted(r["hidden_size"] for r in records) == [8, 16]
    best = max(records, key=lambda r: r["best_valid_score"])  # NDCG@10: bigger is better
    assert out["best"]["best_valid_score"] == best["best_valid_score"]
    table = pd.read_csv(out["output"] / "hyper_trials.csv")
    assert len(table) == 2 and {"valid_score (NDCG@10)", "test_ndcg@10", "results_file"} <= set(table.columns)
    for record in records:  # every trial is a normal run with its own results JSON
        assert (tmp_path / record["results_file"]).is_file()
    assert (out["output"] / "hyper_result.txt").is_file()


def test_llm_search_on_loss_refuses_decoding_only_keys(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["run_hyper.py"])
    params = _params(tmp_path, "ig_alpha choice [0.0, 0.2]\n")
    _refused(
        capsys, "valid_metric=NDCG@10", ["--model=LLMGenRec", "--dataset=tiny", f"--params_file={params}"]
    )
    tuning.check_selection("LLMGenRec", "NDCG@10", tuning.parse_params_file(params))  # fine on a metric
    tuning.check_selection("SASRec", "loss", tuning.parse_params_file(params))  # not an LLM key there


def test_every_llm_hyper_file_parses_and_names_known_keys():
    from pathlib import Path

    from recbole_llm.config import Config

    files = sorted(Path("properties/hyper").glob("*.hyper"))
    assert {f.stem for f in files} >= {"SASRec", "LLMGenRec-cft", "LLMGenRec-igd", "LLMGenRec-cetrec"}
    known = {m: Config(model=m, dataset="tiny").final_config_dict for m in ("LLMGenRec", "SASRec")}
    for path in files:
        model = "LLMGenRec" if path.stem.startswith("LLMGenRec") else path.stem
        config = known.get(model) or Config(model=model, dataset="tiny").final_config_dict
        for name in tuning.parse_params_file(path):
            assert name in config, f"{path}: {name} is not a {model} setting"


def test_end_to_end_grid_on_llmgenrec_selects_the_lowest_loss(tmp_path, monkeypatch, tiny_model_path):
    write_prepared(tmp_path)
    model_dir = tiny_model_path
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["run_hyper.py"])
    params = _params(tmp_path, "lambda choice [0.0, 0.5]\n")
    out = run_hyper.main(
        [
            "--model=LLMGenRec",
            "--dataset=tiny",
            f"--params_file={params}",
            f"--data_path={tmp_path}",
            f"--llm_path={model_dir}",
            "--objective=cft",
            "--epochs=1",
            "--train_batch_size=16",
            "--eval_sample_num=4",
            "--mixed_precision=no",
            "--state=ERROR",
            "--show_progress=False",
        ]
    )
    records = out["records"]
    assert sorted(r["lambda"] for r in records) == [0.0, 0.5]
    assert all(not r["valid_score_bigger"] and r["valid_loss"] > 0 for r in records)
    assert out["best"]["best_valid_score"] == min(r["best_valid_score"] for r in records)
    table = pd.read_csv(out["output"] / "hyper_trials.csv")
    assert {"valid_score (loss)", "test_hit@10"} <= set(table.columns)
    assert table.loc[table["best"] == "*", "lambda"].item() == out["best"]["lambda"]
    assert "lower is better" in (out["output"] / "hyper_trials.md").read_text()
    for record in records:
        assert (tmp_path / record["results_file"]).is_file()
        # A trial is a full run: its results JSON can be re-decoded (--evaluate), reloaded and compared.
        saved = json.loads((tmp_path / record["results_file"]).read_text())
        assert Path(saved["checkpoint"]).is_dir() and saved["train_seconds"] > 0
        assert saved["n_test_samples"] == 4 and len(saved["test_fingerprint"]) == 16
    _trial_works_as_a_run(tmp_path / out["best"]["results_file"], tmp_path)


def _trial_works_as_a_run(results_file: Path, root: Path) -> None:
    """recommend, --evaluate and compare read a trial's results JSON as they read a normal run's
    (issue 14: trials used to record no checkpoint, so all three refused them or showed "–")."""
    from recbole_llm.quick_start import evaluate_run
    from recbole_llm.recommend import Recommender
    from recbole_llm.reporting.compare import comparison_table
    from recbole_llm.reporting.results import load_results

    rec = Recommender.load(results_file)
    title = rec.titles[1]
    assert 1 <= len(rec.recommend([title], k=2)) <= 2
    again = evaluate_run(results_file, config_dict={"state": "ERROR"})
    evaluated = json.loads(Path(again["results_file"]).read_text())
    assert evaluated["evaluated_from"] == str(results_file) and evaluated["n_test_samples"] == 4
    assert Path(evaluated["checkpoint"]).is_dir()
    row = comparison_table(load_results([results_file])).iloc[0]
    assert row["n_test_samples"] == 4 and row["train_seconds"] > 0 and not math.isnan(row["hit@10"])


@pytest.mark.parametrize("key", DECODING_KEYS)
def test_every_decoding_key_is_refused_on_the_validation_loss(key):
    """DecodingSettings' keys never change the loss, so a loss-selected search over one is arbitrary."""
    with pytest.raises(ValueError, match=f"{key} only change decoding"):
        tuning.check_selection("LLMGenRec", "loss", {key: ("choice", [1, 2])})
