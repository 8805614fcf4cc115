"""Issue 14: every user mistake on the real command line gets one line, exit code 2, and leaves nothing behind.

Each case runs ``run_recbole_llm.py`` in a subprocess, in a fresh working folder holding the tiny prepared
dataset, and is refused before any model loads (so each case takes about the start-up time). The README's
Troubleshooting table lists these cases: ``python -m tests.test_cli_errors`` prints it again.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

from tests.fixtures import write_prepared

REPO = Path(__file__).resolve().parent.parent


class Case(NamedTuple):
    args: tuple[str, ...]  # after --dataset=tiny --data_path=data
    files: dict[str, str]  # written in the working folder first
    message: str  # the error line contains it
    fix: str  # what to do (README table)


CASES = [
    Case(
        ("--model=LLMGenRec", "--learnig_rate=1e-3"),
        {},
        "Unknown key 'learnig_rate'",
        "fix the spelling the message suggests (did you mean learning_rate?), or list a deliberate extra key in `extra_keys`",
    ),
    Case(
        ("--model=LLMGenRec", "--config_files=my.yaml"),
        {"my.yaml": "learnig_rate: 1e-3\n"},
        "Unknown key 'learnig_rate' in my.yaml",
        "the same check covers YAML files and config_dict",
    ),
    Case(
        ("--model=SASRec", "--objective=igd"),
        {},
        "it is a key of LLMGenRec, not of SASRec",
        "pass the key only to the model that reads it",
    ),
    Case(
        ("--model=SASRecc",),
        {},
        "Unknown model 'SASRecc'. Did you mean SASRec",
        "use a model the message lists (names are case-sensitive)",
    ),
    Case(
        ("--model=LLMGenRec", "--objective", "igd", "extra"),
        {},
        "unexpected argument 'extra'",
        "give settings as `--key=value` or `--key value`",
    ),
    Case(
        ("--model=SASRec", "--epochs=abc"),
        {},
        "epochs='abc' must be an integer >= 1",
        "give a positive integer",
    ),
    Case(("--model=SASRec", "--epochs=0"), {}, "epochs=0 must be an integer >= 1", "give a positive integer"),
    Case(
        ("--model=SASRec", "--train_batch_size=0"),
        {},
        "train_batch_size=0 must be an integer >= 1",
        "give a positive integer (also eval_batch_size, micro_batch_size, num_beams, ...)",
    ),
    Case(
        ("--model=SASRec", "--learning_rate=-1"),
        {},
        "learning_rate=-1 must be a number > 0",
        "give a positive learning rate",
    ),
    Case(
        ("--model=SASRec", "--config_files=bad.yaml"),
        {"bad.yaml": "epochs: [1\n"},
        "config file bad.yaml is not valid YAML",
        "fix the YAML at the line the message names",
    ),
    Case(
        ("--model=SASRec", "--config_files=empty.yaml"),
        {"empty.yaml": ""},
        "config file empty.yaml is empty",
        "give `key: value` lines, or drop the file",
    ),
    Case(
        ("--model=SASRec", "--config_files=nope.yaml"),
        {},
        "config file nope.yaml does not exist",
        "check the path",
    ),
]


def table() -> str:
    """The README Troubleshooting rows for :data:`CASES` (command-line mistakes)."""
    rows = ["| command line | message contains | what to do |", "|---|---|---|"]
    for case in CASES:
        rows.append(f"| `{' '.join(case.args)}` | `{case.message}` | {case.fix} |")
    return "\n".join(rows) + "\n"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("prepared")
    write_prepared(folder / "data")
    return folder / "data"


def _snapshot(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.mark.parametrize("case", CASES, ids=lambda c: " ".join(c.args))
def test_mistake_is_one_line_and_exit_2(case: Case, prepared: Path, tmp_path: Path):
    (tmp_path / "data").symlink_to(prepared, target_is_directory=True)
    for name, text in case.files.items():
        (tmp_path / name).write_text(text)
    before = _snapshot(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO), "RECBOLE_LLM_DEBUG": ""}
    done = subprocess.run(
        [sys.executable, str(REPO / "run_recbole_llm.py"), "--dataset=tiny", "--data_path=data", *case.args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert f"error: {case.message}" in done.stderr or case.message in done.stderr.splitlines()[-1]
    assert _snapshot(tmp_path) == before  # no saved/, log/, results/ or anything else


def test_readme_table_is_the_cases():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert table() in readme, "regenerate with: python -m tests.test_cli_errors"


if __name__ == "__main__":
    print(table(), end="")
