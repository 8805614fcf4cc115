"""The wheel is a real package: it carries the default YAML, installs into a fresh virtual environment
without ray, and its ``recbole-llm`` command run from a folder outside the checkout reads the packaged
defaults, finds its data there and writes ``results/`` and ``saved/`` there.

The fresh environment sees this environment's pinned packages through a ``.pth`` line (CI has no internet
for a second install of torch), never this checkout: it imports the wheel's own copy of ``recbole_llm``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.fixtures import write_prepared

ROOT = Path(__file__).resolve().parent.parent
DEFAULTS = ("objective", "decoder", "llm_path", "num_beams", "topk", "split_protocol", "exclude_history")
SHOW_DEFAULTS = (
    "import json, sys; from recbole_llm.config import Config, properties_dir; "
    "c = Config(model='LLMGenRec', dataset='tiny'); "
    f"print(json.dumps({{'properties': str(properties_dir()), **{{k: c[k] for k in {DEFAULTS!r}}}}}))"
)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a copy of the project's files (the checkout stays free of build/)."""
    tmp = tmp_path_factory.mktemp("wheel")
    project = tmp / "project"
    project.mkdir()
    for name in ("setup.py", "setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, project / name)
    for name in ("recbole_llm", "properties"):
        shutil.copytree(ROOT / name, project / name, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp / "dist"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(out),
            str(project),
        ],
        check=True,
        capture_output=True,
    )
    (path,) = out.glob("recbole_llm-*.whl")
    return path


def test_the_wheel_carries_every_default_file_unchanged_and_the_console_command(wheel):
    with zipfile.ZipFile(wheel) as whl:
        names = set(whl.namelist())
        for file in sorted((ROOT / "properties").rglob("*")):
            if file.is_file():
                packaged = "recbole_llm/properties/" + file.relative_to(ROOT / "properties").as_posix()
                assert packaged in names, f"{packaged} missing from the wheel"
                assert whl.read(packaged) == file.read_bytes()
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        assert "recbole-llm = recbole_llm.cli:main" in whl.read(entry_points).decode()
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        requires = [line for line in whl.read(metadata).decode().splitlines() if line.startswith("Requires-")]
    assert "Requires-Python: <3.13,>=3.11" in requires
    assert not [r for r in requires if "ray" in r.lower() or "recbole" in r.lower()]


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A fresh venv (no pip, no ray) with the wheel installed by pip, its dependencies checked offline."""
    venv = tmp_path_factory.mktemp("venv") / "v"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # This environment's pinned packages, appended after the new venv's own site-packages.
    Path(site, "pinned.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-index", str(wheel)],
        check=True,
        capture_output=True,
    )
    return venv


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RECBOLE_LLM_PROPERTIES")}
    return env | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def test_the_installed_package_is_its_own_copy_and_needs_no_ray(installed, tmp_path):
    probe = (
        "import importlib.util, recbole_llm, recbole_llm.quick_start, recbole_llm.tuning, recbole;"
        "print(recbole_llm.__file__); print(importlib.util.find_spec('ray'))"
    )
    out = subprocess.run(
        [installed / "bin" / "python", "-c", probe], cwd=tmp_path, env=_env(), capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    file, ray = out.stdout.split()
    assert Path(file).is_relative_to(installed) and ray == "None"


def test_the_console_command_runs_outside_the_checkout_with_the_packaged_defaults(
    installed, tiny_model_path, tmp_path
):
    work = tmp_path / "elsewhere"
    write_prepared(work / "dataset")
    installed_defaults = json.loads(
        subprocess.run(
            [installed / "bin" / "python", "-c", SHOW_DEFAULTS],
            cwd=work,
            env=_env(),
            check=True,
            capture_output=True,
            text=True,
        ).stdout.splitlines()[-1]
    )
    checkout_defaults = json.loads(
        subprocess.run(
            [sys.executable, "-c", SHOW_DEFAULTS],
            cwd=ROOT,
            env=_env() | {"PYTHONPATH": str(ROOT)},
            check=True,
            capture_output=True,
            text=True,
        ).stdout.splitlines()[-1]
    )
    assert Path(installed_defaults.pop("properties")).is_relative_to(installed)
    assert Path(checkout_defaults.pop("properties")) == ROOT / "properties"
    assert installed_defaults == checkout_defaults
    assert checkout_defaults["objective"] is not None and checkout_defaults["num_beams"] is not None

    before = set(work.iterdir())
    run = subprocess.run(
        [
            installed / "bin" / "recbole-llm",
            "--model=LLMGenRec",
            "--dataset=tiny",
            f"--llm_path={tiny_model_path}",
            "--epochs=1",
            "--train_batch_size=16",
            "--eval_sample_num=4",
            "--show_progress=False",
            "--mixed_precision=no",
            "--state=ERROR",
        ],
        cwd=work,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    (results_json,) = (work / "results" / "tiny").glob("LLMGenRec-*.json")
    (run_folder,) = (work / "saved").iterdir()
    assert (run_folder / "best").is_dir()
    assert {p.name for p in set(work.iterdir()) - before} <= {"results", "saved", "log", "log_tensorboard"}
    recorded = json.loads(results_json.read_text())["config"]
    for key in ("objective", "decoder", "num_beams", "topk"):
        assert recorded[key] == checkout_defaults[key], key
    assert recorded["llm_path"] == str(tiny_model_path)


def test_readme_params_files_resolve_from_any_folder(monkeypatch, tmp_path):
    from recbole_llm.tuning import resolve_params_file

    monkeypatch.chdir(tmp_path)
    assert (
        resolve_params_file("properties/hyper/SASRec.hyper") == ROOT / "properties" / "hyper" / "SASRec.hyper"
    )
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_params_file("properties/hyper/NoSuch.hyper")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_params_file("elsewhere/SASRec.hyper")  # only the documented folder falls back


def test_no_default_files_is_refused_not_silently_none(monkeypatch, tmp_path):
    from recbole_llm.config import properties_dir

    monkeypatch.setenv("RECBOLE_LLM_PROPERTIES", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="RECBOLE_LLM_PROPERTIES"):
        properties_dir()
