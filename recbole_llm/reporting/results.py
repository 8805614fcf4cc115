"""Reading results JSONs back (``utils/results.py`` writes them): which files, and what a run used."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from recbole_llm.utils.errors import UserError


def find_result_files(paths: Iterable[str | Path]) -> list[Path]:
    """Results JSONs given directly or found (non-recursively) in the given folders."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files.extend(sorted(p for p in path.glob("*.json") if p.is_file()))
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(
                f"{path} does not exist: pass results JSONs or folders such as results/ml-100k."
            )
    return files


def load_results(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Parse results JSONs; files that are not run results (no ``test_result``) are skipped with a note."""
    results = []
    paths = list(paths)
    named = {Path(p).resolve() for p in paths if Path(p).is_file()}
    for path in find_result_files(paths):
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            if (
                path.resolve() in named
            ):  # a file named on the command line is refused, one in a folder skipped
                raise UserError(
                    f"{path} is not valid JSON ({err.msg} at line {err.lineno}): the file is truncated or "
                    "was edited by hand; restore it or rerun the command that wrote it."
                ) from None
            print(f"[compare] skipping {path}: not valid JSON ({err})", file=sys.stderr)
            continue
        if not isinstance(data, dict) or not isinstance(data.get("test_result"), dict):
            print(f"[compare] skipping {path}: no test_result (not a results file)", file=sys.stderr)
            continue
        data["_path"] = str(path)
        results.append(data)
    if not results:
        raise FileNotFoundError(
            "No results files found: train a model first (python run_recbole_llm.py ...), which writes "
            "results/<dataset>/<run>-<time>.json, and pass that folder."
        )
    return results


def result_value(result: dict[str, Any], key: str) -> Any:
    """The value a run used: resolved ``hyper_parameters`` first (``beta: ~`` is 0.25 there), then config."""
    resolved = result.get("hyper_parameters") or {}
    if key in resolved:
        return resolved[key]
    config = result.get("config") or {}
    if key in config:
        return config[key]
    return (result.get("overrides") or {}).get(key)


def result_run_name(result: dict[str, Any]) -> str:
    """``SASRec``, ``LLMGenRec-igd-d3``: the ``run`` a results JSON records (older files: the model)."""
    return str(result.get("run") or result.get("model") or "run")
