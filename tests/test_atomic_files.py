"""The one atomic-write helper: replaces in one step, leaves nothing behind, keeps the old file
on failure, ordinary permissions."""

from __future__ import annotations

import os
import stat

import pytest

from rlrt_megatron import atomic_files
from rlrt_megatron.atomic_files import atomic_write, atomic_write_bytes, atomic_write_text


def test_writes_and_replaces_with_no_temporary_left(tmp_path):
    target = tmp_path / "sub" / "out.json"  # parent folders are created
    assert atomic_write_text(target, "first\n") == target
    assert target.read_text() == "first\n"
    atomic_write_bytes(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    atomic_write(target, "é", fsync=False)
    assert target.read_bytes() == "é".encode()
    atomic_write(target, b"raw")
    assert target.read_bytes() == b"raw"
    assert [p.name for p in target.parent.iterdir()] == ["out.json"]


def test_permissions_are_those_of_an_ordinary_write(tmp_path):
    previous = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path, monkeypatch):
    target = tmp_path / "state.json"
    target.write_text("old")

    def refuse(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(atomic_files.os, "replace", refuse)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]
