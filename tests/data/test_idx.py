"""IDX reader/writer: round trips against the format spec, and every kind of corruption refused."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from fortify.data.idx import parse_idx, read_idx, write_idx
from fortify.errors import ConfigError, DataFileError


@pytest.mark.parametrize("name", ["a-idx3-ubyte", "a-idx3-ubyte.gz"])
@pytest.mark.parametrize(
    "array",
    [
        np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4),
        np.array([-128, 0, 127], dtype=np.int8),
        np.array([[-30000, 1], [2, 30000]], dtype=np.int16),
        np.array([-(2**31), 2**31 - 1, 7], dtype=np.int32),
        np.array([[0.5, -1.25e-3]], dtype=np.float32),
        np.array([np.pi, -np.e], dtype=np.float64),
    ],
    ids=["u8", "i8", "i16", "i32", "f32", "f64"],
)
def test_round_trip_raw_and_gzip(tmp_path: Path, name: str, array: np.ndarray) -> None:
    path = write_idx(tmp_path / name, array)
    raw = path.read_bytes()
    assert (raw[:2] == b"\x1f\x8b") == name.endswith(".gz")
    back = read_idx(path)
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test_writer_matches_spec_bytes(tmp_path: Path) -> None:
    """Independent reference: the header layout from LeCun's MNIST page, built by hand."""
    labels = np.array([7, 2, 1], dtype=np.uint8)
    path = write_idx(tmp_path / "l-idx1-ubyte", labels)
    assert path.read_bytes() == b"\x00\x00\x08\x01" + struct.pack(">I", 3) + bytes([7, 2, 1])
    values = np.array([1, 256], dtype=np.int16)
    path = write_idx(tmp_path / "v", values)
    assert path.read_bytes() == b"\x00\x00\x0b\x01" + struct.pack(">I", 2) + b"\x00\x01\x01\x00"


def _header(code: int, dims: tuple[int, ...]) -> bytes:
    return bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims)


@pytest.mark.parametrize(
    "blob, fragment",
    [
        (b"\x00\x00", "too short"),
        (b"\x01\x00\x08\x01" + struct.pack(">I", 1) + b"\x00", "magic"),
        (_header(0x07, (1,)) + b"\x00", "dtype code"),
        (bytes([0, 0, 8, 0]), "0 dimensions"),
        (bytes([0, 0, 8, 3]) + struct.pack(">I", 5), "truncated IDX header"),
        (_header(0x08, (2, 0)), "zero dimension"),
        (_header(0x08, (4, 4)) + bytes(15), "truncated"),
        (_header(0x08, (4, 4)) + bytes(17), "trailing"),
        (_header(0x0C, (3,)) + bytes(11), "truncated"),
        (_header(0x08, (2**20, 2**20, 2**10)), "implausible"),
    ],
)
def test_corrupt_payloads_raise(blob: bytes, fragment: str) -> None:
    with pytest.raises(DataFileError, match=fragment):
        parse_idx(blob)


def test_truncated_gzip_file_raises(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "x.gz", np.arange(1000, dtype=np.int32))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataFileError, match="gzip"):
        read_idx(path)


def test_truncated_payload_inside_valid_gzip(tmp_path: Path) -> None:
    body = _header(0x08, (10, 10)) + bytes(99)
    path = tmp_path / "y.gz"
    path.write_bytes(gzip.compress(body))
    with pytest.raises(DataFileError, match="truncated"):
        read_idx(path)


def test_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(DataFileError, match="not found"):
        read_idx(tmp_path / "nope")


def test_writer_rejects_unsupported_dtype(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="dtype"):
        write_idx(tmp_path / "b", np.zeros(3, dtype=np.uint16))
    with pytest.raises(ConfigError, match="dimensions"):
        write_idx(tmp_path / "c", np.array(3, dtype=np.uint8))
    assert list(tmp_path.iterdir()) == []
