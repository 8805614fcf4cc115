"""recbole_llm.utils.io: atomic writes (content, mode, no leftovers) and clear-error JSON reads."""

from __future__ import annotations

import os
import stat

import pytest

from recbole_llm.utils.io import (
    atomic_write,
    read_json,
    replace_dir,
    write_json_atomic,
    write_text_atomic,
)


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_write_gives_the_umask_mode_not_mkstemps_0600(tmp_path, umask_027):
    path = atomic_write(tmp_path / "sub" / "a.bin", lambda tmp: tmp.write_bytes(b"\x00\x01"))
    assert path == tmp_path / "sub" / "a.bin" and path.read_bytes() == b"\x00\x01"
    assert _mode(path) == 0o640  # 0o666 & ~0o027, what open() would give
    os.umask(0o022)
    assert _mode(write_text_atomic(tmp_path / "b.txt", "x")) == 0o644
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left


def test_write_text_and_json_atomic_content_by_hand(tmp_path):
    text = write_text_atomic(tmp_path / "t.txt", "héllo\n")
    assert text.read_bytes() == "héllo\n".encode()
    payload = {"b": [1, 2.5], "a": "é"}
    path = write_json_atomic(tmp_path / "p.json", payload)
    assert path.read_text(encoding="utf-8") == '{\n  "b": [\n    1,\n    2.5\n  ],\n  "a": "é"\n}\n'
    compact = write_json_atomic(tmp_path / "c.json", payload, indent=None, sort_keys=True, ensure_ascii=True)
    assert compact.read_text() == '{"a": "\\u00e9", "b": [1, 2.5]}\n'
    assert read_json(path) == payload and read_json(compact) == payload


def test_atomic_write_keeps_the_previous_file_when_writing_fails(tmp_path):
    path = write_text_atomic(tmp_path / "keep.txt", "old")

    def broken(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, broken)
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_read_json_names_a_missing_or_broken_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.json does not exist"):
        read_json(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text('{"a": 1')
    with pytest.raises(ValueError, match=r"broken\.json is not valid JSON .*line 1.*truncated"):
        read_json(broken)


def test_replace_dir_swaps_a_folder_and_leaves_no_old_copy(tmp_path):
    dst, src = tmp_path / "last", tmp_path / "new"
    dst.mkdir()
    (dst / "step").write_text("1")
    src.mkdir()
    (src / "step").write_text("2")
    replace_dir(src, dst)
    assert (dst / "step").read_text() == "2" and not src.exists() and not (tmp_path / "last.old").exists()
    fresh = tmp_path / "fresh"
    (tmp_path / "src2").mkdir()
    replace_dir(tmp_path / "src2", fresh)  # no previous folder: a plain rename
    assert fresh.is_dir() and sorted(p.name for p in tmp_path.iterdir()) == ["fresh", "last"]
