"""Atomic file writes and clear-error JSON reads: the one home of the write-then-rename pattern.

A run may be killed at any moment (SIGKILL, OOM, a full disk); each file is written to a temporary
sibling, fsync'ed and renamed into place, so a reader sees the previous complete file or the new one,
never half of one. Checkpoints, run.json, results JSONs and prepared datasets go through here; tables an
analysis writes (``to_csv`` of a finished frame) and the per-epoch append to ``ig_loss.csv`` do not need to.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _default_mode() -> int:
    """The mode ``open()`` gives a new file: ``0o666`` less the process umask (read back, then restored)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Write via ``write(tmp)`` into a temp file beside ``path``, fsync it, then ``os.replace`` it in.

    The file gets the mode a plain ``open()`` would give it (``0o666`` less the umask), not mkstemp's 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _default_mode())  # mkstemp's 0600 would hide results from the group and others
    finally:
        os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """``text`` as UTF-8, written atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json_atomic(path: str | os.PathLike, payload: Any, **dumps: Any) -> Path:
    """``payload`` as JSON (indent 2, non-ASCII kept readable unless ``dumps`` says otherwise), atomically."""
    options = {"indent": 2, "ensure_ascii": False, **dumps}
    return write_text_atomic(path, json.dumps(payload, **options) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file; a missing, truncated or malformed file raises an error that names it."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist.") from None
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path} is not valid JSON ({err.msg} at line {err.lineno}): the file is truncated or was edited "
            "by hand; restore it or rerun the command that wrote it."
        ) from None


def replace_dir(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Swap a fully written folder ``src`` into ``dst``; a crash in between leaves ``dst.old`` complete."""
    src, dst = Path(src), Path(dst)
    old = dst.with_name(dst.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if dst.exists():
        os.replace(dst, old)
    os.replace(src, dst)
    shutil.rmtree(old, ignore_errors=True)
