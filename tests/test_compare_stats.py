"""``compare`` with rankings files: intervals, paired tests against the base, Holm, seed groups; by hand.

Fixture: six test samples (users u0..u5, targets t0..t5), metrics HR@2 and NDCG@2. Each run's rankings
file puts its target at a chosen rank (0 = not listed), so every per-sample value is known.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pandas as pd
import pytest

from recbole_llm.analysis.__main__ import main as analysis_main
from recbole_llm.reporting import compare as cmp
from recbole_llm.reporting.results import load_results

METRICS = ("hit@2", "ndcg@2")
Z2 = 1.959964**2  # z_{0.975} squared
WILSON_0_OF_6 = (Z2 / 6) / (1 + Z2 / 6)  # upper end of Wilson's interval for 0 of 6 (its lower end is 0)


def _ranked(rank: int, target: str) -> list[str]:
    """A short list holding ``target`` at ``rank`` (1-based), or not at all for rank 0."""
    items = ["o1", "o2", "o3"]
    if rank:
        items.insert(rank - 1, target)
    return items[:3]


def _run(
    folder: Path, name: str, run: str, ranks, fingerprint="fp1", created="2026-01-01", ref="plain", **config
):
    """A results JSON whose test_result is the mean of its per-sample HR@2/NDCG@2, plus its rankings file."""
    hits = [1.0 if 1 <= r <= 2 else 0.0 for r in ranks] if ranks is not None else [0.5]
    ndcg = [1 / math.log2(r + 1) if 1 <= r <= 2 else 0.0 for r in ranks] if ranks is not None else [0.5]
    data = {
        "run": run,
        "model": run.split("-")[0],
        "dataset": "tiny",
        "created": created,
        "test_result": {"hit@2": sum(hits) / len(hits), "ndcg@2": sum(ndcg) / len(ndcg)},
        "test_fingerprint": fingerprint,
        "n_test_samples": 6,
        "config": dict(config),
        "overrides": dict(config),
    }
    if ranks is not None:
        lines = [
            {"user": f"u{i}", "target": f"t{i}", "items": _ranked(r, f"t{i}"), "scores": [0.0] * 3}
            for i, r in enumerate(ranks)
        ]
        (folder / "rankings").mkdir(exist_ok=True)
        file = folder / "rankings" / f"{name}.jsonl"
        file.write_text("".join(json.dumps(line) + "\n" for line in lines))
        if ref == "plain":  # a path relative to the results JSON
            data["rankings"] = f"rankings/{name}.jsonl"
        else:  # as utils/results.py records the checkpoint: moved folder, so only the relative one exists
            data["rankings"] = f"/gone/{name}.jsonl"
            data["paths"] = {
                "rankings": {"relative": f"rankings/{name}.jsonl", "absolute": f"/gone/{name}.jsonl"}
            }
    (folder / f"{name}.json").write_text(json.dumps(data))


@pytest.fixture
def folder(tmp_path):
    _run(tmp_path, "base", "SASRec", [0, 0, 0, 0, 0, 0])
    _run(tmp_path, "b", "LLMGenRec-sft-d3", [1, 1, 1, 1, 1, 1], ref="paths")
    _run(tmp_path, "c", "LLMGenRec-igd-d3", [2, 0, 0, 0, 0, 0])
    _run(tmp_path, "g1", "GRU4Rec", [1, 1, 1, 0, 0, 0], seed=1)
    _run(tmp_path, "g2", "GRU4Rec", [1, 0, 0, 0, 0, 0], seed=2)
    _run(tmp_path, "other", "Caser", [1, 1, 0, 0, 0, 0], fingerprint="fp2")  # other samples: never paired
    _run(tmp_path, "old", "LLMGenRec-cft-d3", None)  # an older results JSON: no rankings key
    return tmp_path


def _rows(table):
    return {row["label"]: row for _, row in table.iterrows()}


def test_intervals_paired_tests_and_seed_groups_by_hand(folder):
    notes: list[str] = []
    table = cmp.comparison_table(load_results([folder]), base="SASRec", metrics=METRICS, notes=notes)
    rows = _rows(table)
    assert notes == []
    assert set(rows) == {
        "SASRec",
        "LLMGenRec-sft-d3",
        "LLMGenRec-igd-d3",
        "GRU4Rec",
        "Caser",
        "LLMGenRec-cft-d3",
    }
    base, b, c, g = rows["SASRec"], rows["LLMGenRec-sft-d3"], rows["LLMGenRec-igd-d3"], rows["GRU4Rec"]
    # Wilson intervals of 0/6 and 6/6 hits.
    assert (base["hit@2_lo"], base["hit@2_hi"]) == pytest.approx((0, WILSON_0_OF_6), abs=1e-6)
    assert (b["hit@2_lo"], b["hit@2_hi"]) == pytest.approx((1 - WILSON_0_OF_6, 1), abs=1e-6)
    # NDCG@2 of c: [1/log2(3), 0, 0, 0, 0, 0] -> t interval with t_{0.975,5} = 2.570582.
    x = 1 / math.log2(3)
    mean, var = x / 6, (x * x - 6 * (x / 6) ** 2) / 5
    half = 2.570582 * math.sqrt(var / 6)
    assert mean - half < 0  # clipped: NDCG is never negative
    assert (c["ndcg@2_lo"], c["ndcg@2_hi"]) == pytest.approx((0, mean + half), abs=1e-6)
    # Paired against the base: b differs on all six samples (p = 2 / 2^6), c on one (p = 1).
    assert b["hit@2_p"] == pytest.approx(1 / 32) and b["hit@2_sig"] == "*"
    assert (b["hit@2_diff_lo"], b["hit@2_diff_hi"]) == pytest.approx((1, 1))
    assert c["hit@2_p"] == pytest.approx(1.0) and c["hit@2_sig"] == ""
    # d = [1, 0, 0, 0, 0, 0]: P(resample mean = 0) = (5/6)^6 = 0.33; P(k <= 2) = 0.938 < 0.975 <= P(k <= 3)
    assert (c["hit@2_diff_lo"], c["hit@2_diff_hi"]) == pytest.approx((0, 0.5))
    # The seed group: HR@2 1/2 and 1/6 -> mean 1/3, sample std sqrt(2 * (1/6)^2) ; per-sample mean
    # [1, .5, .5, 0, 0, 0] against 0: sums of ±1 ±.5 ±.5 reach |2| in 2 of 8 patterns.
    assert (g["hit@2"], g["hit@2_std"], g["n_seeds"], g["seeds"]) == pytest.approx(
        (1 / 3, math.sqrt(2) / 6, 2, "1,2")
    )
    assert g["hit@2_p"] == pytest.approx(0.25)
    gm, gs = 1 / 3, math.sqrt((1 + 0.25 + 0.25 - 6 / 9) / 5)
    assert (g["hit@2_lo"], g["hit@2_hi"]) == pytest.approx((0, gm + 2.570582 * gs / math.sqrt(6)), abs=1e-6)
    # Other samples: an interval of its own, never a test; no rankings: nothing; base: no test.
    assert not math.isnan(rows["Caser"]["hit@2_lo"]) and math.isnan(rows["Caser"]["hit@2_p"])
    assert math.isnan(rows["LLMGenRec-cft-d3"]["hit@2_lo"]) and math.isnan(base["hit@2_p"])
    assert "hit@2_p_holm" not in table
    md = cmp.to_markdown(table, METRICS)
    assert f"[{1 - WILSON_0_OF_6:.4f}, 1.0000]*" in md
    assert "0.3333 ± 0.2357" in md and "| Seeds |" in md
    assert "not corrected for several rows" in md


def test_holm_over_rows_by_hand(folder):
    table = cmp.comparison_table(load_results([folder]), base="SASRec", metrics=METRICS, holm=True)
    rows = _rows(table)
    # HR@2 p-values of the paired rows: b 1/32, GRU4Rec 1/4, c 1 -> Holm: 3/32, max(3/32, 2/4), 1.
    assert rows["LLMGenRec-sft-d3"]["hit@2_p_holm"] == pytest.approx(3 / 32)
    assert rows["GRU4Rec"]["hit@2_p_holm"] == pytest.approx(0.5)
    assert rows["LLMGenRec-igd-d3"]["hit@2_p_holm"] == pytest.approx(1.0)
    assert rows["LLMGenRec-sft-d3"]["hit@2_sig"] == ""  # 3/32 > 0.05: no longer significant
    assert "Holm-adjusted over the rows" in cmp.to_markdown(table, METRICS)


def test_results_without_rankings_give_todays_table(tmp_path):
    _run(tmp_path, "base", "SASRec", None)
    _run(tmp_path, "x", "LLMGenRec-sft-d3", None)
    table = cmp.comparison_table(load_results([tmp_path]), base="SASRec", metrics=METRICS)
    assert [c for c in table.columns if c.endswith(("_lo", "_p", "_sig", "_std")) or "seed" in c] == []
    md = cmp.to_markdown(table, METRICS)
    assert "[" not in md and "*" not in md.replace("**", "")


def test_a_rankings_file_of_another_run_gets_no_interval(tmp_path):
    _run(tmp_path, "base", "SASRec", [1, 0, 0, 0, 0, 0])
    data = json.loads((tmp_path / "base.json").read_text())
    data["test_result"]["hit@2"] = 0.5  # the JSON disagrees with its rankings
    (tmp_path / "base.json").write_text(json.dumps(data))
    notes: list[str] = []
    table = cmp.comparison_table(load_results([tmp_path]), metrics=METRICS, notes=notes)
    assert "hit@2_lo" not in table and len(notes) == 1 and "does not belong" in notes[0]
    data["rankings"] = "rankings/nowhere.jsonl"  # recorded but missing: a note, no interval
    (tmp_path / "base.json").write_text(json.dumps(data))
    notes.clear()
    table = cmp.comparison_table(load_results([tmp_path]), metrics=METRICS, notes=notes)
    assert "hit@2_lo" not in table and len(notes) == 1 and "is missing" in notes[0]
    (tmp_path / "rankings" / "nowhere.jsonl").write_text('{"user": "u0", "tar')  # truncated
    notes.clear()
    table = cmp.comparison_table(load_results([tmp_path]), metrics=METRICS, notes=notes)
    assert "hit@2_lo" not in table and len(notes) == 1 and "not a rankings file" in notes[0]


def test_compare_command_with_holm_writes_marks_and_p_values(folder, tmp_path):
    out = tmp_path / "out"
    analysis_main(
        ["compare", str(folder), "--base", "SASRec", "--metrics", "hit@2,ndcg@2", "--output", str(out)]
    )
    csv = pd.read_csv(out / "comparison.csv").set_index("label")
    assert csv.at["LLMGenRec-sft-d3", "hit@2_sig"] == "*"
    assert csv.at["LLMGenRec-sft-d3", "hit@2_p"] == pytest.approx(1 / 32)
    assert "*" in (out / "comparison.md").read_text()
    analysis_main(
        [
            "compare",
            str(folder),
            "--base",
            "SASRec",
            "--metrics",
            "hit@2,ndcg@2",
            "--holm",
            "--output",
            str(out),
        ]
    )
    csv = pd.read_csv(out / "comparison.csv").set_index("label")
    assert csv.at["LLMGenRec-sft-d3", "hit@2_p_holm"] == pytest.approx(3 / 32)
    assert pd.isna(csv.at["LLMGenRec-sft-d3", "hit@2_sig"])  # empty cell: not significant after Holm


def test_png_draws_the_intervals_and_marks(folder, monkeypatch):
    from recbole_llm.reporting import plots

    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: figures.append(fig) or Path(path))
    table = cmp.comparison_table(load_results([folder]), base="SASRec", metrics=METRICS)
    plots.plot_comparison(table, list(METRICS), "unused.png")
    ax = figures[0].axes[0]
    labels = [text.get_text().strip() for text in ax.texts]
    assert "1*" in labels  # LLMGenRec-sft-d3's HR@2, significant against the base
    caps = [c for c in ax.containers if type(c).__name__ == "ErrorbarContainer"]
    sft = table.index[table["label"] == "LLMGenRec-sft-d3"][0]
    # errorbar of sft's HR@2 bar: from its Wilson lower end up to 1
    segments = caps[sft].lines[2][0].get_segments()
    assert segments[0][:, 1] == pytest.approx([1 - WILSON_0_OF_6, 1.0], abs=1e-6)
    label = next(text for text in ax.texts if text.get_text().strip() == "1*")
    assert label.get_position()[1] == pytest.approx(1.0) and label.get_rotation() == 90  # above its interval
    assert "95 % interval" in ax.get_title()
    plots.pyplot().close(figures[0])


def test_seed_groups_split_on_other_keys_and_keep_the_newest_test_samples(tmp_path):
    _run(tmp_path, "s1", "SASRec", None, seed=1, exclude_history=True)
    _run(tmp_path, "s2", "SASRec", None, seed=2, exclude_history=True)
    _run(tmp_path, "s3", "SASRec", None, seed=1, exclude_history=False)
    _run(tmp_path, "old1", "GRU4Rec", None, seed=1, created="2026-01-01")
    _run(tmp_path, "new1", "GRU4Rec", None, seed=1, created="2026-01-03")  # same seed, newer: replaces old1
    _run(tmp_path, "new2", "GRU4Rec", None, seed=2, created="2026-01-02")
    _run(tmp_path, "fp2", "GRU4Rec", None, seed=3, created="2026-01-01", fingerprint="fp2")  # other samples
    groups = {
        label: [Path(r["_path"]).stem for r in runs]
        for label, runs in cmp.pick_groups(load_results([tmp_path]))
    }
    assert groups == {
        "SASRec (exclude_history=True)": ["s1", "s2"],
        "SASRec (exclude_history=False)": ["s3"],
        "GRU4Rec": ["new1", "new2"],
    }
    table = cmp.comparison_table(load_results([tmp_path]), metrics=METRICS)
    assert table.set_index("label").at["GRU4Rec", "n_seeds"] == 2
    every = cmp.pick_groups(load_results([tmp_path]), keep_all=True)  # --all: one row per run, no grouping
    assert len(every) == 7 and all(len(runs) == 1 for _, runs in every)


def test_seeds_command_runs_one_full_run_per_seed_and_compare_groups_them(tmp_path, monkeypatch):
    """``--seeds=1,2``: two complete runs (results JSON each, seed recorded) that compare shows as one row."""
    from recbole_llm import cli
    from recbole_llm.reporting.compare import pick_groups
    from recbole_llm.reporting.results import load_results
    from tests.fixtures import write_prepared

    write_prepared(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["run_recbole_llm.py"])  # RecBole reads the overrides from sys.argv
    argv = [
        "--model=SASRec",
        "--dataset=tiny",
        f"--data_path={tmp_path / 'data'}",
        "--epochs=1",
        "--seeds=1,2",
        "--state=ERROR",
    ]
    cli._main(argv)
    results = load_results([tmp_path / "results" / "tiny"])
    assert sorted(r["config"]["seed"] for r in results) == [1, 2]
    ((label, runs),) = pick_groups(results)
    assert label == "SASRec" and len(runs) == 2


def test_seeds_share_their_sample_subsets(tmp_path, monkeypatch):
    """``sample_seed`` draws the eval_sample_num subset: two training seeds are tested on the same samples."""
    from recbole_llm.config import Config
    from recbole_llm.quick_start import load_run
    from recbole_llm.utils.results import split_fingerprint
    from tests.fixtures import write_prepared

    write_prepared(tmp_path / "data")
    monkeypatch.setattr(sys, "argv", ["run"])

    def fingerprint(**extra):
        config = Config(
            model="SASRec",
            dataset="tiny",
            config_dict={
                "data_path": str(tmp_path / "data"),
                "eval_sample_num": 4,
                "state": "ERROR",
                **extra,
            },
        )
        return split_fingerprint(load_run(config, quiet=True, with_trainer=False)[1][2].dataset)

    assert fingerprint(seed=1) == fingerprint(seed=2)
    assert fingerprint(seed=1, sample_seed=5) != fingerprint(seed=1, sample_seed=6)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--seeds=1,x"], "give comma-separated integers"),
        (["--seeds=1,1"], "one or more distinct integers"),
        (["--seeds=1,2", "--seed=3"], "--seeds and --seed were both given"),
        (["--seeds=1,2", "--resume=saved/x"], "cannot be combined with --resume"),
    ],
)
def test_seeds_mistakes_are_refused(argv, message, monkeypatch):
    from recbole_llm import cli
    from recbole_llm.utils.errors import UserError

    monkeypatch.setattr(sys, "argv", ["run_recbole_llm.py"])
    with pytest.raises(UserError, match=message):
        cli._main(["--model=SASRec", *argv])


def test_runs_made_before_sample_seed_keep_their_own_samples():
    from recbole_llm.quick_start import recorded_overrides

    old = {"overrides": {"seed": 7}, "config": {"seed": 7}}  # its seed drew its samples
    new = {"overrides": {"seed": 7}, "config": {"seed": 7, "sample_seed": 2020}}
    assert recorded_overrides(old) == {"seed": 7, "sample_seed": 7}
    assert recorded_overrides(new) == {"seed": 7}
    assert recorded_overrides({"overrides": {"seed": 7}}) == {"seed": 7}  # nothing recorded: as given
