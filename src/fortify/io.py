"""The one atomic writer: every file fortify writes goes through a temporary file and ``os.replace``.

A reader never sees a half-written file and an old file survives a failed write. ``mkstemp`` creates
its file 0600; the result gets the permissions of an ordinary file under the process umask (0644
under umask 022), like every other file of a run. OS errors become :class:`OutputError` naming the
file, so the CLI prints one line.
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from fortify.errors import OutputError


def _ordinary_mode() -> int:
    """``0666`` less the process umask (read without changing it for long)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_target(path: str | os.PathLike[str], *, what: str = "file") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on a clean exit it replaces ``path``, else it is removed.

    For writers that need a file name (``safetensors.save_file``); :func:`write_atomic` for bytes/text.
    """
    dest = Path(path)
    try:
        fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
        os.close(fd)
    except OSError as exc:
        raise OutputError(f"cannot write {what} {str(dest)!r}: {exc.strerror or exc}") from None
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, _ordinary_mode())
        os.replace(tmp, dest)
    except OSError as exc:
        raise OutputError(f"cannot write {what} {str(dest)!r}: {exc.strerror or exc}") from None
    finally:
        if tmp.exists():
            tmp.unlink()


def write_atomic(path: str | os.PathLike[str], data: bytes | str, *, what: str = "file",
                 fsync: bool = False) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` atomically; ``fsync`` before the rename for durable files."""
    blob = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_target(path, what=what) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(blob)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
    return Path(path)


__all__ = ["atomic_target", "write_atomic"]
