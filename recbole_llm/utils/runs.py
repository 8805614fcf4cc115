"""Finding a finished run on disk: a results JSON, or a run folder that holds ``run.json``.

The trainer writes ``<run folder>/run.json`` (model, dataset, overrides, checkpoint) and keeps its
checkpoints in ``<run folder>/best`` and ``<run folder>/last``, so a checkpoint folder finds its run's
files one level up. Reloading, resuming and the analyses all look a run up here. Paths a run records
(checkpoint, prepared data, results folder) are stored relative to the file that records them and
absolute (:func:`record_path`), and read back with :func:`resolve_path`: a run works from any working
folder, and after its results and ``saved/`` folders are moved together.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
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


def record_path(target: str | Path, anchor: str | Path) -> dict[str, str]:
    """``{"relative": ..., "absolute": ...}`` for ``target``, relative to the folder ``anchor``.

    Written into results JSONs and ``run.json`` so a run is found again from any working folder (the
    absolute path) and after its results and ``saved/`` folders are moved together (the relative one).
    """
    target = Path(os.path.abspath(target))
    return {"relative": os.path.relpath(target, os.path.abspath(anchor)), "absolute": str(target)}


def resolve_path(
    info: Mapping[str, Any], key: str, anchor: str | Path | None
) -> tuple[Path | None, list[Path]]:
    """``(first existing candidate or None, candidates tried)`` for the path ``key`` a run recorded.

    Tried in order: ``paths[key].relative`` from ``anchor`` (the folder of the results JSON or run folder),
    ``paths[key].absolute``, then ``info[key]`` as written by older versions (relative to the working folder
    it was trained in, so only found from there).
    """
    recorded = (info.get("paths") or {}).get(key) or {}
    tried: list[Path] = []
    if recorded.get("relative") and anchor is not None:
        tried.append(Path(os.path.normpath(Path(anchor) / recorded["relative"])))
    if recorded.get("absolute"):
        tried.append(Path(recorded["absolute"]))
    if isinstance(info.get(key), str) and info[key]:
        tried.append(Path(info[key]))
    unique = list(dict.fromkeys(tried))
    return next((p for p in unique if p.exists()), None), unique
