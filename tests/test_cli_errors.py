"""Issue 14: every user mistake on the real command line gets one line, exit code 2, and leaves nothing behind.

Each case runs one of the real commands (``run_recbole_llm.py``, ``run_hyper.py``, ``python -m
recbole_llm.recommend / .analysis / .data / .study``) in a subprocess, in a fresh working folder holding the tiny prepared
dataset. Cases that read a finished run get the results JSON of one tiny LLMGenRec run trained once per
module (``RUN`` in the arguments). Most are refused before any model loads (so each takes about the
start-up time). The README's Troubleshooting table lists these cases: ``python -m tests.test_cli_errors``
prints it again.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

from tests.fixtures import write_prepared

REPO = Path(__file__).resolve().parent.parent


# The command of each case; "run" is run_recbole_llm.py with --dataset=tiny --data_path=data first.
COMMANDS = {
    "run": ["run_recbole_llm.py", "--dataset=tiny", "--data_path=data"],
    "run_recbole_llm.py": ["run_recbole_llm.py"],
    "run_hyper.py": ["run_hyper.py", "--dataset=tiny", "--data_path=data"],
    "run_hyper.py, own data": ["run_hyper.py", "--dataset=tiny"],
    "recommend": ["-m", "recbole_llm.recommend"],
    "analysis": ["-m", "recbole_llm.analysis"],
    "data": ["-m", "recbole_llm.data"],
    "study": ["-m", "recbole_llm.study"],
}
RUN = "RUN"  # replaced by the module's finished tiny run (its results JSON)
TRUNCATED = '{"run": "LLMGenRec-sft-d3", "model": "LLMGenRec", "dataset": "ti'
HISTORY = ("--history", "Toy Story (1995)")


class Case(NamedTuple):
    args: tuple[str, ...]  # after the command (COMMANDS[cli])
    files: dict[str, str | None]  # written in the working folder first (None: a copy of the tiny dataset)
    message: str  # the error line contains it
    fix: str  # what to do (README table)
    cli: str = "run"


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
    Case(
        (f"--evaluate={RUN}", "--decodr=constrained"),
        {},
        "Unknown key 'decodr'",
        "`--evaluate` checks keys like a training run: fix the spelling (did you mean decoder?)",
        "run_recbole_llm.py",
    ),
    Case(
        ("--evaluate=cut.json",),
        {"cut.json": TRUNCATED},
        "cut.json is not valid JSON",
        "the results JSON is cut short (a copy that did not finish?): copy it again or pass the run folder",
        "run_recbole_llm.py",
    ),
    Case(
        ("--resume=notes",),
        {"notes/readme.txt": "not a run\n"},
        "notes holds no run.json",
        "pass a run folder under saved/ (it holds run.json)",
        "run_recbole_llm.py",
    ),
    Case(
        ("--model=SASRec", "--params_file=p.hyper", "--learnig_rate=1e-3"),
        {"p.hyper": "hidden_size choice [8, 16]\n"},
        "Unknown key 'learnig_rate'",
        "fixed overrides of every trial are checked like a run's keys",
        "run_hyper.py",
    ),
    Case((RUN, *HISTORY, "--k", "0"), {}, "--k=0 must be between 1 and 10", "give 1..num_beams", "recommend"),
    Case(
        (RUN, *HISTORY, "--k", "-1"), {}, "--k=-1 must be between 1 and 10", "give 1..num_beams", "recommend"
    ),
    Case(
        (RUN, *HISTORY, "--k", "50"),
        {},
        "--k=50 must be between 1 and 10",
        "a generative run lists num_beams items: retrain or re-evaluate with more beams",
        "recommend",
    ),
    Case(
        ("cut.json", *HISTORY),
        {"cut.json": TRUNCATED},
        "cut.json is not valid JSON",
        "copy the results JSON again or pass the run folder",
        "recommend",
    ),
    Case(
        ("compare", "cut.json"),
        {"cut.json": TRUNCATED},
        "cut.json is not valid JSON",
        "copy the results JSON again",
        "analysis",
    ),
    Case(
        ("--model=SASRec", "--dataset=tiny", "--data_path=own"),
        {"own/tiny": None, "own/tiny/tiny.item": "item_id:token\ttitle:token\ni1\tStar\tWars (1977)\n"},
        "own/tiny/tiny.item:2: 3 fields where the header has 2",
        "a hand-written atomic file with a tab inside a field: replace it with a space, or quote the field",
        "run_recbole_llm.py",
    ),
    Case(
        ("--model=SASRec", "--data_path=own", "--params_file=p.hyper"),
        {
            "p.hyper": "hidden_size choice [8, 16]\n",
            "own/tiny": None,
            "own/tiny/tiny.item": "item_id:token\ttitle:token\ni1\tStar\tWars (1977)\n",
        },
        "own/tiny/tiny.item:2: 3 fields where the header has 2",
        "the same check before the first trial",
        "run_hyper.py, own data",
    ),
    Case(
        ("prepare", "steam", "--reviews", "nope.json.gz", "--meta", "nope2.json.gz", "--data-path", "d"),
        {},
        "Steam reviews file not found: nope.json.gz",
        "pass the path of the downloaded raw file",
        "data",
    ),
    Case(
        ("s.yaml",),
        {"s.yaml": "dataset: tiny\nmethods: {A: {model: SASRec}}\nbasis: [A]\n"},
        "study file s.yaml: unknown key(s) basis",
        "use the keys the message lists (dataset, seeds, methods, shared, bases, ...)",
        "study",
    ),
    Case(
        ("nope.yaml",),
        {},
        "study file nope.yaml does not exist",
        "pass a study file such as properties/study/ml-100k.yaml",
        "study",
    ),
]


def table() -> str:
    """The README Troubleshooting rows for :data:`CASES` (command-line mistakes)."""
    rows = ["| command | arguments | message contains | what to do |", "|---|---|---|---|"]
    for case in CASES:
        command = " ".join(COMMANDS[case.cli]).replace("-m ", "python -m ")
        args = " ".join(case.args).replace(RUN, "<results JSON>")
        rows.append(f"| `{command}` | `{args}` | `{case.message}` | {case.fix} |")
    return "\n".join(rows) + "\n"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("prepared")
    write_prepared(folder / "data")
    return folder / "data"


@pytest.fixture(scope="module")
def finished(tmp_path_factory, prepared: Path, tiny_model_path: Path) -> Path:
    """The results JSON of one tiny LLMGenRec run (1 epoch, 4 test samples), for the cases that read a run."""
    from recbole_llm.quick_start import run_recbole_llm

    root = tmp_path_factory.mktemp("finished")
    config = {
        "data_path": str(prepared),
        "llm_path": str(tiny_model_path),
        "checkpoint_dir": str(root / "saved"),
        "results_dir": str(root / "results"),
        "epochs": 1,
        "train_batch_size": 16,
        "eval_sample_num": 4,
        "show_progress": False,
        "state": "ERROR",
        "mixed_precision": "no",
    }
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.setattr(sys, "argv", ["run_recbole_llm.py"])
        result = run_recbole_llm(model="LLMGenRec", dataset="tiny", config_dict=config)
    return Path(result["results_file"])


def _snapshot(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def _run_case(
    case: Case, folder: Path, prepared: Path, run: Path, debug: str = ""
) -> tuple[subprocess.CompletedProcess, set[str]]:
    """``case`` through its real command in ``folder`` (the tiny dataset linked as ``data/``)."""
    (folder / "data").symlink_to(prepared, target_is_directory=True)
    for name, text in case.files.items():
        if text is None:
            shutil.copytree(prepared / "tiny", folder / name)
            continue
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    command, *rest = COMMANDS[case.cli]
    argv = [sys.executable, command if command == "-m" else str(REPO / command), *rest]
    argv += [a.replace(RUN, str(run)) for a in case.args]
    env = {**os.environ, "PYTHONPATH": str(REPO), "RECBOLE_LLM_DEBUG": debug}
    before = _snapshot(folder)
    done = subprocess.run(argv, cwd=folder, env=env, capture_output=True, text=True, timeout=300)
    return done, before


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.cli} {' '.join(c.args)}")
def test_mistake_is_one_line_and_exit_2(case: Case, prepared: Path, tmp_path: Path, request):
    run = request.getfixturevalue("finished") if any(RUN in a for a in case.args) else Path("none")
    run_root = run.parent.parent.parent
    run_before = _snapshot(run_root) if run.is_file() else set()
    done, before = _run_case(case, tmp_path, prepared, run)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and case.message in errors[0], done.stderr[-2000:]
    assert _snapshot(tmp_path) == before  # no saved/, log/, results/ or anything else
    if run.is_file():
        assert _snapshot(run_root) == run_before  # reading the run wrote nothing beside it either


def test_recommend_command_prints_k_items(finished: Path, prepared: Path, tmp_path: Path):
    """The run's path is the command's argument, not a setting (RecBole's Config used to refuse it)."""
    case = Case((str(finished), *HISTORY, "--k", "2"), {}, "", "", "recommend")
    done, before = _run_case(case, tmp_path, prepared, finished)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(done.stdout.splitlines()) == 2 and _snapshot(tmp_path) == before


@pytest.mark.parametrize("debug", ["flag", "env"])
def test_debug_shows_the_traceback(debug: str, prepared: Path, tmp_path: Path):
    """``--debug`` or ``RECBOLE_LLM_DEBUG=1``: the same mistake, with its traceback (for bug reports)."""
    case = CASES[0]._replace(args=(*CASES[0].args, "--debug") if debug == "flag" else CASES[0].args)
    done, _ = _run_case(case, tmp_path, prepared, Path("none"), debug="1" if debug == "env" else "")
    assert done.returncode != 0
    assert "Traceback" in done.stderr and "Unknown key 'learnig_rate'" in done.stderr


def test_readme_table_is_the_cases():
    for doc in ("README.md", "docs/troubleshooting.md"):
        text = (REPO / doc).read_text(encoding="utf-8")
        assert table() in text, f"{doc}: regenerate with: python -m tests.test_cli_errors"


if __name__ == "__main__":
    print(table(), end="")
