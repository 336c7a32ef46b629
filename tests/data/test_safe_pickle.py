"""The numpy-only unpickler: real arrays round-trip, hostile pickles are refused and never run."""
from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from fortify.data.safe_pickle import safe_load_file, safe_loads
from fortify.errors import DataFileError


class _Hostile:
    """Unpickling this object would run ``touch <marker>`` via os.system."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


class _SubArray(np.ndarray):
    pass


@pytest.mark.parametrize("protocol", [2, 3, 4])
def test_numpy_containers_round_trip(protocol: int) -> None:
    """Reference: the standard (trusting) pickle module gives the same objects."""
    obj = (
        (np.arange(12, dtype=np.float32).reshape(3, 4) / 7, np.array([1, 2, 3], dtype=np.int64)),
        [np.zeros((2, 0), dtype=np.uint8), {"k": np.array([True, False])}],
        np.array(["ab", "c"]),
    )
    blob = pickle.dumps(obj, protocol=protocol)
    ours, ref = safe_loads(blob), pickle.loads(blob)
    np.testing.assert_array_equal(ours[0][0], ref[0][0])
    assert ours[0][0].dtype == np.float32 and ours[0][1].dtype == np.int64
    assert ours[1][0].shape == (2, 0)
    np.testing.assert_array_equal(ours[1][1]["k"], ref[1][1]["k"])
    np.testing.assert_array_equal(ours[2], ref[2])


def test_python2_style_latin1_pickle() -> None:
    """mnist.pkl.gz is a protocol-2 Python-2 pickle whose payloads are 8-bit strings (BINSTRING)."""
    arr = np.array([[0.0, 0.5], [0.25, 1.0]], dtype=np.float32)
    blob = pickle.dumps(arr, protocol=2)
    np.testing.assert_array_equal(safe_loads(blob), arr)


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_hostile_pickle_refused_and_not_run(tmp_path: Path, protocol: int) -> None:
    marker = tmp_path / "pwned"
    blob = pickle.dumps((np.zeros(2), _Hostile(marker)), protocol=protocol)
    with pytest.raises(DataFileError, match=r"posix\.system|os\.system|nt\.system"):
        safe_loads(blob)
    assert not marker.exists()
    pickle.loads(blob)  # the control: the same bytes *do* run code when unpickled naively
    assert marker.exists()


def test_hostile_gzip_file_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "mnist.pkl.gz"
    path.write_bytes(gzip.compress(pickle.dumps(_Hostile(marker), protocol=2)))
    with pytest.raises(DataFileError, match="refusing global"):
        safe_load_file(path)
    assert not marker.exists()


def test_ndarray_subclass_refused() -> None:
    blob = pickle.dumps(np.arange(3).view(_SubArray), protocol=2)
    with pytest.raises(DataFileError):
        safe_loads(blob)


def test_builtins_and_persistent_ids_refused() -> None:
    with pytest.raises(DataFileError, match="builtins.eval"):
        safe_loads(b"cbuiltins\neval\n(S'1+1'\ntR.")
    with pytest.raises(DataFileError, match="persistent"):
        safe_loads(b"(S'x'\nP0\n.")


@pytest.mark.parametrize("blob", [b"", b"\x80\x02(", b"not a pickle", pickle.dumps(np.arange(4))[:-7]])
def test_garbage_raises_data_file_error(blob: bytes) -> None:
    with pytest.raises(DataFileError):
        safe_loads(blob)


def test_corrupt_gzip_raises(tmp_path: Path) -> None:
    path = tmp_path / "x.pkl.gz"
    path.write_bytes(gzip.compress(pickle.dumps(np.arange(100)))[:20])
    with pytest.raises(DataFileError, match="gzip"):
        safe_load_file(path)
