"""A restricted unpickler that can rebuild numpy arrays and nothing else.

Pickle runs arbitrary code through ``GLOBAL``/``REDUCE`` opcodes (see the Python docs, "Restricting
Globals"). This unpickler resolves only the globals needed to rebuild plain ``numpy.ndarray``
objects -- ``numpy.core.multiarray._reconstruct`` (or ``numpy._core.multiarray._reconstruct``),
``numpy.ndarray`` and ``numpy.dtype``, plus ``_codecs.encode`` restricted to latin-1 and
argument-less ``bytes()`` (how Python 3 writes ``bytes`` in protocol 0-2 pickles) -- and refuses
every other global and persistent id with :class:`fortify.errors.DataFileError` *before* anything is
called. Containers (tuples, lists, dicts)
and scalars need no globals and are allowed.

``_reconstruct`` is additionally only allowed to build exact ``numpy.ndarray`` instances, so a
pickle cannot smuggle in a subclass with a custom ``__setstate__``.
"""
from __future__ import annotations

import gzip
import io
import pickle
import zlib
from pathlib import Path
from typing import IO, Any, Callable, cast

import numpy as np

from fortify.errors import DataFileError

try:  # numpy >= 2 keeps the implementation in numpy._core
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
except ImportError:  # pragma: no cover - numpy < 2
    from numpy.core.multiarray import _reconstruct as _np_reconstruct  # type: ignore[no-redef]


def _safe_reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    """``_reconstruct`` restricted to exact ``numpy.ndarray`` (no subclasses)."""
    if subtype is not np.ndarray:
        raise DataFileError(f"restricted unpickler: refusing to reconstruct {subtype!r}")
    return cast(np.ndarray, _np_reconstruct(subtype, shape, dtype))  # subtype is exactly ndarray (checked)


def _latin1_encode(text: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as Python 3 emits it for bytes in protocol < 3 pickles, latin-1 only."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1") or errors != "strict":
        raise DataFileError("restricted unpickler: _codecs.encode is allowed only for latin-1 text")
    return text.encode("latin1")


def _empty_bytes(*args: Any) -> bytes:
    """``bytes()`` as Python 3 emits it for ``b""`` in protocol 0-2 pickles; arguments refused."""
    if args:
        raise DataFileError("restricted unpickler: bytes(...) is allowed only without arguments")
    return b""


_ALLOWED: dict[tuple[str, str], Callable[..., Any] | type] = {
    ("numpy.core.multiarray", "_reconstruct"): _safe_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _safe_reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
    ("__builtin__", "bytes"): _empty_bytes,
    ("builtins", "bytes"): _empty_bytes,
}


class NumpyOnlyUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` knows only the numpy array globals above."""

    def find_class(self, module: str, name: str) -> Any:  # noqa: D401 - pickle hook
        """Resolve an allowed global or raise DataFileError naming the refused one."""
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise DataFileError(
                f"restricted unpickler: refusing global {module}.{name} (only numpy arrays allowed)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        """Persistent ids can load arbitrary objects; always refused."""
        raise DataFileError("restricted unpickler: persistent ids are not allowed")


_PARSE_ERRORS = (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
                 KeyError, OverflowError, MemoryError, UnicodeDecodeError)


def _load(stream: IO[bytes] | gzip.GzipFile, source: str, encoding: str) -> Any:
    try:
        return NumpyOnlyUnpickler(stream, encoding=encoding).load()
    except DataFileError as exc:
        raise DataFileError(f"{source}: {exc}") from None
    except (OSError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise DataFileError(f"{source}: corrupt or truncated gzip stream ({exc})") from None
    except _PARSE_ERRORS as exc:
        raise DataFileError(f"{source}: not a valid numpy pickle ({type(exc).__name__}: {exc})") from None


def safe_loads(data: bytes, *, source: str = "<bytes>", encoding: str = "latin1") -> Any:
    """Unpickle ``data`` allowing only numpy arrays and plain containers.

    ``encoding="latin1"`` reads Python-2 pickles whose array payloads are 8-bit strings.
    Any refusal or malformed stream raises DataFileError.
    """
    return _load(io.BytesIO(data), source, encoding)


def safe_load_file(path: str | Path, *, encoding: str = "latin1") -> Any:
    """Read a pickle file (gzip detected by its magic bytes, decompressed as a stream) with the
    numpy-only unpickler; unreadable, corrupt or hostile files raise DataFileError."""
    p = Path(path)
    try:
        fh = open(p, "rb")
    except OSError as exc:
        raise DataFileError(f"cannot read {p}: {exc}") from None
    with fh:
        gzipped = fh.read(2) == b"\x1f\x8b"
        fh.seek(0)
        if not gzipped:
            return _load(fh, str(p), encoding)
        with gzip.GzipFile(fileobj=fh, mode="rb") as stream:
            obj = _load(stream, str(p), encoding)
            try:
                trailing = stream.read(1)
            except (OSError, EOFError, zlib.error) as exc:
                raise DataFileError(f"{p}: corrupt or truncated gzip stream ({exc})") from None
            if trailing:
                raise DataFileError(f"{p}: unexpected data after the pickle")
            return obj


__all__ = ["NumpyOnlyUnpickler", "safe_loads", "safe_load_file"]
