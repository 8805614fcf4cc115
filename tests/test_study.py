"""``python -m recbole_llm.study``: the study file's checks, the table against two bases by hand, and a real
study of two baselines x two seeds (one process per run) that continues instead of rerunning."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from recbole_llm import study as st
from recbole_llm.utils.errors import UserError
from tests.test_compare_stats import _run


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("dataset: tiny\nmethods: {A: {model: SASRec}}\nbasis: [A]\n", "unknown key(s) basis"),
        ("methods: {A: {model: SASRec}}\n", "give the dataset"),
        ("dataset: tiny\nmethods: {A: {epochs: 1}}\n", "method 'A' needs a model"),
        ("dataset: tiny\nmethods: {A: {model: SASRec, seed: 3}}\n", "sets seed, which the study sets"),
        ("dataset: tiny\nshared: {results_dir: x}\nmethods: {A: {model: SASRec}}\n", "sets results_dir"),
        ("dataset: tiny\nmethods: {A: {model: SASRec}}\nbases: [B]\n", "base(s) B are not methods"),
        ("dataset: tiny\nseeds: [1, 1]\nmethods: {A: {model: SASRec}}\n", "seeds must be distinct integers"),
        ("dataset: tiny\nmethods: {}\n", "give methods"),
        ("dataset: [tiny\n", "not valid YAML"),
    ],
)
def test_study_file_mistakes_name_the_entry_and_the_fix(tmp_path, text, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        st.load_study(_write(tmp_path / "s.yaml", text))


def test_commands_carry_shared_overrides_seed_and_launcher_for_generative_methods_only(tmp_path):
    study = st.load_study(
        _write(
            tmp_path / "s.yaml",
            "dataset: tiny\nseeds: 7\nlauncher: torchrun --nproc_per_node=2\nshared: {eval_sample_num: 50}\n"
            "methods:\n  S: {model: SASRec}\n  L: {model: LLMGenRec, lora_target_modules: [q_proj], zero_shot: True}\n",
        )
    )
    sasrec, llm = (st.run_command(study, m, 7, tmp_path / "out") for m in study.methods)
    assert sasrec[:3] == [sys.executable, "-m", "recbole_llm.cli"]
    assert sasrec[3:] == [
        "--model=SASRec",
        "--dataset=tiny",
        "--eval_sample_num=50",
        "--seed=7",
        f"--results_dir={tmp_path / 'out' / 'results'}",
    ]
    assert llm[:4] == ["torchrun", "--nproc_per_node=2", "-m", "recbole_llm.cli"]
    assert "--lora_target_modules=['q_proj']" in llm and "--zero_shot=True" in llm


def _hand_study(tmp_path: Path, holm: bool) -> tuple[st.Study, Path]:
    """Three methods on six samples: A lists no target, B every target at rank 1, C one target at rank 2."""
    out = tmp_path / "out"
    results = out / "results" / "tiny"
    results.mkdir(parents=True)
    _run(results, "a", "SASRec", [0, 0, 0, 0, 0, 0], seed=1)
    _run(results, "b", "LLMGenRec-sft-d3", [1, 1, 1, 1, 1, 1], seed=1)
    _run(results, "c", "LLMGenRec-igd-d3", [2, 0, 0, 0, 0, 0], seed=1)
    runs = [
        {"method": m, "seed": 1, "args": [], "results_file": f"results/tiny/{f}.json"}
        for m, f in (("A", "a"), ("B", "b"), ("C", "c"))
    ]
    (out / st.MANIFEST).write_text(json.dumps({"runs": runs}))
    text = (
        f"dataset: tiny\nseeds: [1]\nbases: [A, B]\nmetrics: [hit@2, ndcg@2]\nholm: {holm}\n"
        "methods: {C: {model: LLMGenRec}, A: {model: SASRec}, B: {model: LLMGenRec}}\n"
    )
    return st.load_study(_write(tmp_path / "s.yaml", text)), out


def test_table_tests_every_row_against_each_base_by_hand(tmp_path):
    """Exact sign-flip p-values: B vs A differs on 6 samples, all one way: 2/2^6 = 0.03125; C vs A on one
    sample: p = 1; C vs B on 6 samples, all one way (HR@2 1 -> 1 on the first, so 5): 2/2^5 = 0.0625."""
    study, out = _hand_study(tmp_path, holm=False)
    table = st.study_table(study, out).set_index("label")
    assert list(table.index) == ["C", "A", "B"]  # the study file's order
    assert table.at["B", "hit@2_p_vs_A"] == pytest.approx(2 / 64)
    assert table.at["C", "hit@2_p_vs_A"] == pytest.approx(1.0)
    assert table.at["B", "hit@2_vs_A"] == "▲a" and table.at["C", "hit@2_vs_A"] == ""
    assert table.at["A", "hit@2_vs_B"] == "▼b"  # A is significantly below base b = B
    assert table.at["C", "hit@2_p_vs_B"] == pytest.approx(2 / 32)
    assert table.at["C", "hit@2_vs_B"] == ""  # 0.0625: inside the noise
    md = st.to_markdown(table.reset_index(), study)
    assert "| B | 1.0000 [" in md and "▲a" in md and "a = A, b = B" in md and "not corrected" in md


def test_holm_correction_removes_a_mark_that_one_test_alone_would_give(tmp_path):
    """With Holm over the two rows tested against A (p 0.03125 and 1): 0.03125 x 2 = 0.0625 > 0.05."""
    study, out = _hand_study(tmp_path, holm=True)
    table = st.study_table(study, out).set_index("label")
    assert table.at["B", "hit@2_p_holm_vs_A"] == pytest.approx(2 * 2 / 64)
    assert table.at["B", "hit@2_vs_A"] == ""


def test_table_refuses_runs_on_different_test_samples(tmp_path):
    study, out = _hand_study(tmp_path, holm=False)
    path = out / "results" / "tiny" / "c.json"
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "test_fingerprint": "other"}))
    with pytest.raises(UserError, match="different test samples"):
        st.study_table(study, out)


ROOT = Path(__file__).resolve().parent.parent


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """The study command from another folder, importing this checkout (as do the runs it starts)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run(
        [sys.executable, "-m", "recbole_llm.study", *args], cwd=cwd, capture_output=True, text=True, env=env
    )


def test_a_study_of_two_baselines_and_two_seeds_runs_tabulates_and_continues(tmp_path):
    """Real runs, one process each; the second call finds every run finished and starts none."""
    from tests.fixtures import write_prepared

    write_prepared(tmp_path / "data")
    text = (
        f"dataset: tiny\nseeds: [1, 2]\nbases: [SASRec]\n"
        f"shared: {{data_path: {tmp_path / 'data'}, epochs: 1, state: ERROR, show_progress: False, "
        f"checkpoint_dir: {tmp_path / 'saved'}}}\n"
        "methods: {SASRec: {model: SASRec}, GRU4Rec: {model: GRU4Rec}}\n"
    )
    _write(tmp_path / "s.yaml", text)
    first = _cli(["s.yaml", "--output=out"], tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    manifest = json.loads((tmp_path / "out" / st.MANIFEST).read_text())
    assert sorted((r["method"], r["seed"]) for r in manifest["runs"]) == [
        ("GRU4Rec", 1),
        ("GRU4Rec", 2),
        ("SASRec", 1),
        ("SASRec", 2),
    ]
    table = pd.read_csv(tmp_path / "out" / "study.csv")
    assert list(table["label"]) == ["SASRec", "GRU4Rec"] and list(table["n_seeds"]) == [2, 2]
    assert "hit@10_p_holm_vs_SASRec" in table and table["hit@10_lo"].notna().all()
    assert "hit@10_p" not in table and "hit@10_sig" not in table  # only the per-base test columns
    assert (tmp_path / "out" / "study.png").stat().st_size > 0
    assert "[lo, hi]: 95 % interval" in (tmp_path / "out" / "study.md").read_text()
    files = sorted((tmp_path / "out" / "results" / "tiny").glob("*.json"))
    assert len(files) == 4
    again = _cli(["s.yaml", "--output=out"], tmp_path)
    assert again.returncode == 0 and again.stdout.count("finished earlier") == 4
    assert sorted((tmp_path / "out" / "results" / "tiny").glob("*.json")) == files


def test_a_failing_run_stops_the_study_with_one_line_and_how_to_continue(tmp_path):
    from tests.fixtures import write_prepared

    write_prepared(tmp_path / "data")
    text = (
        f"dataset: tiny\nshared: {{data_path: {tmp_path / 'data'}, state: ERROR}}\n"
        "methods: {Bad: {model: SASRec, learnig_rate: 0.1}}\n"
    )
    _write(tmp_path / "s.yaml", text)
    result = _cli(["s.yaml", "--output=out"], tmp_path)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: [study 1/1] Bad, seed 2020 failed (exit code 2)")
    assert "run the same study command again" in last
    assert not (tmp_path / "out" / st.MANIFEST).exists()


def test_the_shipped_study_file_is_valid_and_found_from_any_folder(tmp_path, monkeypatch):
    """properties/study/ml-100k.yaml (the README table) loads; from another folder the packaged copy is used."""
    monkeypatch.chdir(tmp_path)
    study = st.load_study("properties/study/ml-100k.yaml")
    assert [m.label for m in study.methods] == [
        "SASRec",
        "GRU4Rec",
        "Caser",
        "Zero-shot LLM",
        "D3 (SFT)",
        "IGD",
    ]
    assert study.bases == ["SASRec", "D3 (SFT)"] and study.holm is True
    assert all(m.overrides["eval_sample_num"] == 1000 for m in study.methods)
