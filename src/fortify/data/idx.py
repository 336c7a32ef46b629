"""Reader and writer for the IDX file format used by MNIST and Fashion-MNIST.

Format (LeCun et al., "Gradient-based learning applied to document recognition", 1998;
http://yann.lecun.com/exdb/mnist/): a 4-byte magic ``0x00 0x00 <dtype code> <ndim>``, then ``ndim``
big-endian uint32 dimension sizes, then the payload in big-endian row-major order. Dtype codes:
``0x08`` uint8, ``0x09`` int8, ``0x0B`` int16, ``0x0C`` int32, ``0x0D`` float32, ``0x0E`` float64.

Files may be raw or gzip-compressed (detected from the gzip magic bytes, not the file name). Every
inconsistency (bad magic, unknown dtype code, zero dims, payload too short or too long, broken gzip
stream) raises :class:`fortify.errors.DataFileError`; nothing is guessed.
"""
from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from fortify.io import write_atomic
from fortify.errors import ConfigError, DataFileError

#: IDX dtype code -> big-endian numpy dtype.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"
#: Refuse headers announcing more than this many elements (defends against absurd dims).
_MAX_ELEMENTS = 2**34


def _read_bytes(path: Path) -> bytes:
    """Return the decompressed content of ``path`` (gzip detected by magic bytes)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataFileError(f"IDX file not found: {path}") from None
    except OSError as exc:
        raise DataFileError(f"cannot read IDX file {path}: {exc}") from None
    if raw[:2] == _GZIP_MAGIC:
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataFileError(f"corrupt or truncated gzip stream in {path}: {exc}") from None
    return raw


def parse_idx(data: bytes, *, source: str = "<bytes>") -> np.ndarray:
    """Parse the bytes of an (uncompressed) IDX file into a native-endian array of shape ``dims``."""
    if len(data) < 4:
        raise DataFileError(f"{source}: too short for an IDX header ({len(data)} bytes)")
    zero0, zero1, code, ndim = data[0], data[1], data[2], data[3]
    if zero0 != 0 or zero1 != 0:
        raise DataFileError(f"{source}: bad IDX magic {data[:4].hex()} (must start with 0000)")
    if code not in IDX_DTYPES:
        raise DataFileError(f"{source}: unknown IDX dtype code 0x{code:02x}")
    if ndim == 0:
        raise DataFileError(f"{source}: IDX header declares 0 dimensions")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise DataFileError(f"{source}: truncated IDX header (need {header_len} bytes, have {len(data)})")
    dims = struct.unpack(f">{ndim}I", data[4:header_len])
    if any(d == 0 for d in dims):
        raise DataFileError(f"{source}: IDX header has a zero dimension {dims}")
    count = 1
    for d in dims:
        count *= d
    if count > _MAX_ELEMENTS:
        raise DataFileError(f"{source}: IDX header declares an implausible size {dims}")
    dtype = IDX_DTYPES[code]
    expected = count * dtype.itemsize
    payload = len(data) - header_len
    if payload != expected:
        kind = "truncated" if payload < expected else "has trailing bytes"
        raise DataFileError(
            f"{source}: IDX payload {kind}: dims {dims} need {expected} bytes, found {payload}"
        )
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=header_len).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (raw or gzip) and return a native-endian numpy array shaped like its dims.

    Example: ``train-images-idx3-ubyte`` gives ``uint8 (60000, 28, 28)``; the labels file gives
    ``uint8 (60000,)``.
    """
    p = Path(path)
    return parse_idx(_read_bytes(p), source=str(p))


def write_idx(path: str | os.PathLike[str], array: np.ndarray, *, compress: bool | None = None) -> Path:
    """Write ``array`` as an IDX file, atomically (temp file + ``os.replace``).

    ``compress=None`` compresses when the name ends in ``.gz``. Used by tests and to export data.
    Raises ConfigError for dtypes IDX cannot hold or 0-d / >255-d arrays.
    """
    arr = np.asarray(array)
    code = next((c for c, dt in IDX_DTYPES.items() if dt.newbyteorder("=") == arr.dtype), None)
    if code is None:
        allowed = ", ".join(str(dt.newbyteorder("=")) for dt in IDX_DTYPES.values())
        raise ConfigError(f"IDX cannot store dtype {arr.dtype}; allowed: {allowed}")
    if not 1 <= arr.ndim <= 255:
        raise ConfigError(f"IDX needs 1..255 dimensions, got {arr.ndim}")
    header = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    body = header + np.ascontiguousarray(arr, dtype=IDX_DTYPES[code]).tobytes()
    p = Path(path)
    if compress is None:
        compress = p.name.endswith(".gz")
    if compress:
        body = gzip.compress(body, mtime=0)
    return write_atomic(p, body, what="IDX file")


__all__ = ["IDX_DTYPES", "parse_idx", "read_idx", "write_idx"]
