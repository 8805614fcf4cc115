"""The README documents every LLMGenRec key, every dataset YAML, and CI runs the README's test command."""

import re
from pathlib import Path

import recbole
import yaml

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
RECBOLE_MODELS = Path(recbole.__file__).resolve().parent / "properties" / "model"


def test_every_llmgenrec_key_is_documented():
    keys = yaml.safe_load((ROOT / "properties" / "model" / "LLMGenRec.yaml").read_text())
    missing = [k for k in keys if f"`{k}`" not in README]
    assert not missing, f"README lacks LLMGenRec.yaml keys: {missing}"


def test_every_key_of_the_llm_initialised_baselines_is_documented():
    for model in ("SASRecLLM", "GRU4RecLLM"):
        keys = yaml.safe_load((ROOT / "properties" / "model" / f"{model}.yaml").read_text())
        base = yaml.safe_load((RECBOLE_MODELS / f"{model[:-3]}.yaml").read_text())  # SASRec's own keys
        missing = [k for k in keys if k not in base and f"`{k}`" not in README]
        assert not missing, f"README lacks {model}.yaml keys: {missing}"


def test_every_objective_and_decoder_row_is_in_the_papers_table():
    for word in (
        "--objective=sft",
        "--objective=pos",
        "--objective=cft",
        "--objective=cetrec",
        "--objective=igd",
    ):
        assert word in README
    for word in ("--decoder=bigrec", "--decoder=constrained", "--decoder=d3", "--temporal_embedding=sinpe"):
        assert word in README


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.M)
    assert "make test" in README and "make demo" in README


def test_demo_commands_in_readme_match_the_makefile():
    makefile = (ROOT / "Makefile").read_text()
    for flag in re.findall(r"--epochs=\d+", makefile):
        assert flag in README, f"Makefile demo uses {flag}, README does not say so"


def test_no_placeholder_left_in_readme():
    markers = re.findall(r"<!-- ([A-Z-]+) -->", README)
    unfilled = [m for m in markers if not m.endswith(("-START", "-END"))]
    assert not unfilled, f"README still has unfilled placeholders: {unfilled}"
