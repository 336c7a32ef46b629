"""The one atomic writer: ordinary permissions, never half-written, old file kept on failure, typed errors."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from fortify.errors import OutputError
from fortify.io import atomic_target, write_atomic


def test_written_with_the_umask_permissions_and_no_temporary_left(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        path = write_atomic(tmp_path / "a.json", "{}\n")
        write_atomic(tmp_path / "b.bin", b"\x00\x01", fsync=True)
    finally:
        os.umask(old)
    assert path.read_text() == "{}\n" and (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert (path.stat().st_mode & 0o777) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.bin"]


def test_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "state.safetensors"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_target(path) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("boom")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.safetensors"]


def test_os_errors_become_one_output_error_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match=r"cannot write model file .*no-such-folder"):
        write_atomic(tmp_path / "no-such-folder" / "m.safetensors", b"x", what="model file")
    folder = tmp_path / "taken"
    folder.mkdir()
    with pytest.raises(OutputError, match="taken"):  # os.replace onto a folder
        write_atomic(folder, b"x")
    assert folder.is_dir() and not any(folder.iterdir())
