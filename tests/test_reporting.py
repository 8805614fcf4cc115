"""Reporting: comparison tables, labels, the same-split report and the comparison plot; numbers by hand."""

from __future__ import annotations

import json
import logging
import math
import runpy
from pathlib import Path

import pandas as pd
import pytest

import recbole_llm.cli
from recbole_llm.model.decoding.settings import DECODING_KEYS
from recbole_llm.reporting import compare as cmp
from recbole_llm.reporting.labels import IGNORED_KEYS, label_keys, labels_for, metric_title
from recbole_llm.reporting.results import load_results

ROOT = Path(__file__).resolve().parent.parent


def _result(tmp_path, name, run, created, test, fingerprint="fp1", **config):
    model = "LLMGenRec" if run.startswith("LLMGenRec") else run
    data = {
        "run": run,
        "model": model,
        "dataset": "tiny",
        "created": created,
        "test_result": test,
        "test_fingerprint": fingerprint,
        "n_test_samples": 100,
        "config": {"beta": None, "lambda": None, **config},
        "overrides": dict(config),
    }
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(data))
    return path


def _metrics(h5, n5, h10, n10):
    return {"hit@5": h5, "ndcg@5": n5, "hit@10": h10, "ndcg@10": n10}


@pytest.fixture
def results_dir(tmp_path):
    _result(tmp_path, "a", "SASRec", "2026-01-01T00:00:00", _metrics(0.5, 0.5, 0.5, 0.5))  # older: dropped
    _result(tmp_path, "b", "SASRec", "2026-01-02T00:00:00", _metrics(0.05, 0.02, 0.10, 0.04))
    _result(
        tmp_path,
        "c",
        "LLMGenRec-cft-d3",
        "2026-01-02T00:00:00",
        _metrics(0.06, 0.03, 0.12, 0.05),
        **{"lambda": 0.1},
    )
    _result(
        tmp_path,
        "d",
        "LLMGenRec-cft-d3",
        "2026-01-03T00:00:00",
        _metrics(0.04, 0.01, 0.09, 0.0),
        **{"lambda": 0.05},
    )
    (tmp_path / "notes.json").write_text(json.dumps({"something": 1}))  # not a results file: skipped
    return tmp_path


def test_relative_improvement_by_hand():
    assert cmp.relative_improvement(0.06, 0.05) == pytest.approx(0.2)
    assert cmp.relative_improvement(0.04, 0.05) == pytest.approx(-0.2)
    assert math.isnan(cmp.relative_improvement(0.1, 0.0))
    assert math.isnan(cmp.relative_improvement(None, 0.1))


def test_table_labels_newest_and_improvements(results_dir):
    table = cmp.comparison_table(load_results([results_dir]), base="SASRec")
    assert table["label"].tolist() == [
        "SASRec",
        "LLMGenRec-cft-d3 (lambda=0.05)",
        "LLMGenRec-cft-d3 (lambda=0.1)",
    ]
    row = table.set_index("label")
    assert row.loc["SASRec", "hit@10"] == 0.10  # the newest SASRec result, not the older 0.5
    assert row.loc["LLMGenRec-cft-d3 (lambda=0.1)", "hit@10_improv"] == pytest.approx(0.2)
    assert row.loc["LLMGenRec-cft-d3 (lambda=0.1)", "ndcg@5_improv"] == pytest.approx(0.5)
    assert row.loc["LLMGenRec-cft-d3 (lambda=0.05)", "hit@10_improv"] == pytest.approx(-0.1)
    assert row.loc["LLMGenRec-cft-d3 (lambda=0.05)", "ndcg@10_improv"] == pytest.approx(-1.0)
    assert row.loc["SASRec", "hit@5_improv"] == 0.0 and bool(row.loc["SASRec", "is_base"])
    md = cmp.to_markdown(table)
    assert "| SASRec (base) |" in md and "**0.1200** (+20.0%)" in md and "0.0900 (-10.0%)" in md
    assert cmp.fingerprint_warnings(table) == []


def test_keep_all_and_fingerprint_warning(results_dir):
    _result(
        results_dir,
        "e",
        "GRU4Rec",
        "2026-01-02T00:00:00",
        _metrics(0.01, 0.01, 0.02, 0.01),
        fingerprint="fp2",
    )
    table = cmp.comparison_table(load_results([results_dir]), keep_all=True)
    assert len(table) == 5 and sum(table["label"].str.startswith("SASRec @")) == 2
    warnings = cmp.fingerprint_warnings(table)
    assert len(warnings) == 1 and "GRU4Rec" in warnings[0]
    assert set(table["test_set"]) == {"A", "B"}


def test_base_run_name_of_several_rows_is_the_newest_and_prefixes_must_be_unambiguous(results_dir, capsys):
    table = cmp.comparison_table(load_results([results_dir]), base="LLMGenRec-cft-d3")
    assert table.loc[table["is_base"], "label"].tolist() == ["LLMGenRec-cft-d3 (lambda=0.05)"]  # newest
    row = table.set_index("label").loc["LLMGenRec-cft-d3 (lambda=0.1)"]
    assert row["hit@10_improv"] == pytest.approx(0.12 / 0.09 - 1)
    assert "using the newest" in capsys.readouterr().err
    with pytest.raises(ValueError, match="several rows"):
        cmp.comparison_table(load_results([results_dir]), base="LLMGenRec")
    with pytest.raises(ValueError, match="matches no row"):
        cmp.comparison_table(load_results([results_dir]), base="Caser")


def test_run_compare_writes_csv_markdown_png(results_dir, tmp_path):
    out = tmp_path / "out"
    files = cmp.run_compare([results_dir], output=out, base="LLMGenRec-cft-d3 (lambda=0.1)")
    csv = pd.read_csv(files["csv"])
    assert csv.loc[csv["label"] == "SASRec", "hit@10_improv"].item() == pytest.approx(0.10 / 0.12 - 1)
    assert files["png"].stat().st_size > 1000 and "lambda=0.1) (base)" in files["md"].read_text()


def test_same_split_report_shows_only_runs_of_the_same_test_samples(results_dir):
    other = _result(
        results_dir, "e", "GRU4Rec", "2026-01-04T00:00:00", _metrics(0.9, 0.9, 0.9, 0.9), fingerprint="fp2"
    )
    report = cmp.same_split_report(results_dir / "d.json")
    assert "| SASRec (base) |" in report and "(lambda=0.05)" in report
    assert "GRU4Rec" not in report and "0.9000" not in report  # other test samples: left out
    assert cmp.same_split_report(other) is None  # nothing else evaluated on fp2


def test_labels_use_the_decoding_keys_and_never_ignore_a_label_key():
    keys = label_keys()
    decoding = [key for key in keys if key in DECODING_KEYS]
    assert decoding == [k for k in DECODING_KEYS if k not in ("decoder", "decode_batch_size")]
    assert {"decoder", "decode_batch_size"} <= IGNORED_KEYS and not set(keys) & IGNORED_KEYS
    # The objectives' own keys come first, from the classes (a new objective labels its runs by itself).
    assert keys[:6] == (
        "beta",
        "beta_prime",
        "lambda",
        "cft_weight_normal_loss",
        "cft_counterfactual",
        "cetrec_cf_index",
    )
    assert (metric_title("hit@10"), metric_title("NDCG@5"), metric_title("mrr")) == ("HR@10", "NDCG@5", "MRR")


def test_decoding_keys_tell_same_named_runs_apart_even_from_config_files():
    """``num_beams`` set in a YAML file (not an override) still labels the row; the batch size never does."""
    runs = [
        {"run": "LLMGenRec-igd-d3", "dataset": "tiny", "config": {"num_beams": beams, "decode_batch_size": b}}
        for beams, b in ((10, 8), (20, 16))
    ]
    assert labels_for(runs) == ["LLMGenRec-igd-d3 (num_beams=10)", "LLMGenRec-igd-d3 (num_beams=20)"]


def test_the_training_script_logs_the_same_split_report_after_the_run(results_dir, monkeypatch, caplog):
    """``run_recbole_llm.py`` (not quick_start) shows a finished run next to its split's earlier runs."""
    calls = []

    def fake_run(**kwargs):
        calls.append(kwargs)
        return {"results_file": str(results_dir / "d.json")}

    monkeypatch.setattr(recbole_llm.cli, "run_recbole_llm", fake_run)
    monkeypatch.setattr("sys.argv", ["run_recbole_llm.py", "--model=SASRec"])
    with caplog.at_level(logging.INFO):
        runpy.run_path(str(ROOT / "run_recbole_llm.py"), run_name="__main__")
    assert calls and calls[0]["model"] == "SASRec"
    logged = [r.getMessage() for r in caplog.records if "same test samples as earlier runs" in r.getMessage()]
    assert len(logged) == 1 and "| SASRec (base) |" in logged[0] and "(lambda=0.05)" in logged[0]


def test_same_split_report_failure_is_a_warning_not_a_failed_run(tmp_path, caplog):
    from run_recbole_llm import log_same_split_report

    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with caplog.at_level(logging.WARNING):
        log_same_split_report(str(broken))
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert f"could not compare with earlier runs in {tmp_path}" in caplog.records[0].getMessage()


def test_labels_tell_runs_apart_by_history_exclusion_even_when_the_config_hides_it():
    runs = [
        {"dataset": "d", "run": "SASRec", "config": {"exclude_history": False}},
        {"dataset": "d", "run": "SASRec", "config": {"exclude_history": True}},
    ]
    assert labels_for(runs) == ["SASRec (exclude_history=False)", "SASRec (exclude_history=True)"]
    same = [{"dataset": "d", "run": "SASRec", "config": {"split_protocol": "global_time"}}] * 2
    assert labels_for(same) == ["SASRec", "SASRec"]
