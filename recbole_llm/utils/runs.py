"""Finding a finished run on disk: a results JSON, or a run folder that holds ``run.json``.

The trainer writes ``<run folder>/run.json`` (model, dataset, overrides, checkpoint) and keeps its
checkpoints in ``<run folder>/best`` and ``<run folder>/last``, so a checkpoint folder finds its run's
files one level up. Reloading, resuming and the analyses all look a run up here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recbole_llm.utils.io import read_json

RUN_FILE = "run.json"


def find_in_run(folder: str | Path, name: str = RUN_FILE) -> Path | None:
    """``name`` in a run folder, or in the folder above it (given a checkpoint folder such as ``best/``)."""
    folder = Path(folder)
    return next((p / name for p in (folder, folder.parent) if (p / name).is_file()), None)


def find_run(path: str | Path) -> tuple[dict[str, Any], Path | None]:
    """``(info, run.json)`` of a run given as a results JSON or a run folder.

    A results JSON is its own info (``run.json`` is then ``None``); a folder without ``run.json`` (nor
    one above it) gives ``({}, None)``, and the caller decides whether that is an error.
    """
    path = Path(path)
    if path.is_dir():
        found = find_in_run(path)
        return (read_json(found), found) if found is not None else ({}, None)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: pass a results JSON (results/<dataset>/*.json) or a run folder."
        )
    return read_json(path), None
