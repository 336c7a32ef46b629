"""Datasets from users' files (fortify.data.files): every format against the arrays that wrote it."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from fortify import data, models
from fortify.data import files
from fortify.errors import ConfigError, DataFileError


def _classes_of(y: np.ndarray) -> set[int]:
    return {int(v) for v in np.unique(y)}


def test_npz_with_splits_round_trips(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    xtr, xte = rng.integers(0, 256, (40, 1, 6, 6), dtype=np.uint8), rng.integers(0, 256, (10, 1, 6, 6), dtype=np.uint8)
    ytr, yte = np.arange(40) % 3, np.arange(10) % 3
    np.savez(tmp_path / "d.npz", x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    spec = files.from_path(tmp_path / "d.npz", name="t-npz")
    assert spec.input_shape == (1, 6, 6) and spec.num_classes == 3 and spec.sizes == {"train": 40, "test": 10}
    x, y = data.load("t-npz", "test")
    assert torch.equal(x, torch.from_numpy(xte).float() / 255) and torch.equal(y, torch.from_numpy(yte))
    assert files.from_path(tmp_path / "d.npz", name="t-npz") is spec  # registered once


def test_npz_pool_is_split_stratified_and_fixed(tmp_path: Path) -> None:
    x = np.random.default_rng(1).random((100, 8)).astype(np.float32)
    y = np.repeat(np.arange(4), 25)
    np.savez(tmp_path / "pool.npz", x=x, y=y)
    splits, _, _ = files.load_splits(tmp_path / "pool.npz", test_fraction=0.2, seed=3)
    (xtr, _), (xte, yte) = splits["train"], splits["test"]
    assert len(yte) == 20 and np.bincount(yte).tolist() == [5, 5, 5, 5]  # stratified
    rows = {r.tobytes() for r in x}
    assert {r.tobytes() for r in xtr} | {r.tobytes() for r in xte} == rows  # a partition of the pool
    again, _, _ = files.load_splits(tmp_path / "pool.npz", test_fraction=0.2, seed=3)
    assert np.array_equal(again["test"][0], xte)


def test_npy_folder_and_bounds(tmp_path: Path) -> None:
    x = np.linspace(-5, 5, 60, dtype=np.float32).reshape(20, 3)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", np.arange(20) % 2)
    with pytest.raises(DataFileError, match=r"\[0, 1\]"):
        files.load_splits(tmp_path)
    splits, _, _ = files.load_splits(tmp_path, bounds=(-5, 5))
    allx = np.concatenate([splits["train"][0], splits["test"][0]])
    assert allx.min() == 0.0 and allx.max() == 1.0


def test_object_arrays_are_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.array([{"a": 1}] * 4, dtype=object), allow_pickle=True)
    np.save(tmp_path / "y.npy", np.arange(4))
    with pytest.raises(DataFileError, match="cannot read"):
        files.load_splits(tmp_path)


def _png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_image_folder_grey_and_rgb(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    grey = {c: [rng.integers(0, 256, (5, 7), dtype=np.uint8) for _ in range(6)] for c in ("cat", "dog")}
    for c, ims in grey.items():
        for i, a in enumerate(ims):
            _png(tmp_path / "g" / c / f"{i}.png", a)
    splits, classes, _ = files.load_splits(tmp_path / "g", test_fraction=0.25)
    assert classes == ["cat", "dog"]
    x = np.concatenate([s[0] for s in splits.values()])
    assert x.shape == (12, 1, 5, 7) and x.dtype == np.uint8
    written = {a.tobytes() for ims in grey.values() for a in ims}
    assert {im[0].tobytes() for im in x} == written  # pixels exactly as written
    _png(tmp_path / "c" / "train" / "a" / "0.png", rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
    _png(tmp_path / "c" / "train" / "b" / "0.png", rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
    _png(tmp_path / "c" / "test" / "a" / "0.png", rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
    _png(tmp_path / "c" / "test" / "b" / "1.png", rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
    splits, classes, _ = files.load_splits(tmp_path / "c")
    assert splits["train"][0].shape == (2, 3, 4, 4) and splits["test"][1].tolist() == [0, 1]


def test_image_folder_mixed_sizes_is_an_error_unless_resized(tmp_path: Path) -> None:
    _png(tmp_path / "a" / "0.png", np.zeros((5, 5), np.uint8))
    _png(tmp_path / "a" / "1.png", np.zeros((5, 5), np.uint8))
    _png(tmp_path / "b" / "0.png", np.zeros((6, 5), np.uint8))
    _png(tmp_path / "b" / "1.png", np.zeros((5, 5), np.uint8))
    with pytest.raises(DataFileError, match="different sizes"):
        files.load_splits(tmp_path)
    splits, _, _ = files.load_splits(tmp_path, image_size=(8, 8), test_fraction=0.5)
    assert splits["train"][0].shape[1:] == (1, 8, 8)


CSV = """age,colour,score,label
30,red,1.5,yes
40,blue,2.5,no
50,red,3.5,yes
60,green,4.5,no
35,blue,2.0,yes
45,green,3.0,no
55,red,4.0,yes
65,blue,5.0,no
"""


def test_csv_numeric_and_categorical(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text(CSV)
    splits, classes, schema = files.load_splits(tmp_path / "t.csv", test_fraction=0.25, seed=0,
                                                bounds={"age": (0, 100), "score": (0, 10)})
    assert classes == ["no", "yes"] and schema is not None
    assert schema.numeric == ("age", "score") and schema.categorical["colour"] == tuple(sorted(schema.categorical["colour"]))
    x = np.concatenate([splits["train"][0], splits["test"][0]])
    assert x.shape[1] == 2 + len(schema.categorical["colour"])
    assert set(np.round(x[:, 0] * 100).astype(int)) <= {30, 35, 40, 45, 50, 55, 60, 65}  # age / 100
    assert (x[:, 2:].sum(1) == 1).all()  # one-hot
    spec = files.from_path(tmp_path / "t.csv", name="t-csv", bounds={"age": (0, 100), "score": (0, 10)},
                           test_fraction=0.25)
    assert spec.input_shape == (x.shape[1],) and spec.features[:2] == ("age", "score") and spec.classes == ("no", "yes")
    net = models.Normalized(models.create("mlp", in_shape=spec.input_shape, num_classes=2, hidden=[8]),
                            spec.mean, spec.std)
    xt, _ = data.load("t-csv", "test")
    assert net(xt).shape == (len(xt), 2)


def test_csv_bad_inputs(tmp_path: Path) -> None:
    (tmp_path / "nolabel.csv").write_text("a,b\n1,2\n3,4\n")
    with pytest.raises(DataFileError, match="no label column"):
        files.load_splits(tmp_path / "nolabel.csv")
    with pytest.raises(DataFileError, match="'c' not found"):
        files.load_splits(tmp_path / "nolabel.csv", label="c")
    schema = files.fit_table_schema(["x", "colour", "label"], [["1", "red", "0"], ["2", "blue", "1"]], label="label")
    with pytest.raises(DataFileError, match="'green', unseen in training"):
        files.encode_table(schema, ["x", "colour", "label"], [["1", "green", "0"]])
    with pytest.raises(DataFileError, match="outside its range"):
        files.encode_table(schema, ["x", "colour", "label"], [["7", "red", "0"]])
    (tmp_path / "ragged.csv").write_text("a,label\n1,0\n2\n")
    with pytest.raises(DataFileError, match="line 3"):
        files.load_splits(tmp_path / "ragged.csv")
    with pytest.raises(ConfigError, match="does not exist"):
        files.load_splits(tmp_path / "missing.csv")


def _cifar_folder(root: Path, n: int = 4) -> np.ndarray:
    root.mkdir()
    rng = np.random.default_rng(3)
    allx = []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        allx.append(x)
        with open(root / name, "wb") as fh:
            pickle.dump({b"data": x, b"labels": [int(v) for v in np.arange(n) % 10]}, fh, protocol=2)
    with open(root / "batches.meta", "wb") as fh:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, fh, protocol=2)
    return np.concatenate(allx)


def test_cifar10_batches_through_the_restricted_unpickler(tmp_path: Path) -> None:
    written = _cifar_folder(tmp_path / "cifar")
    splits, classes, _ = files.load_splits(tmp_path / "cifar")
    assert classes == [f"c{i}" for i in range(10)]
    assert splits["train"][0].shape == (20, 3, 32, 32) and splits["test"][0].shape == (4, 3, 32, 32)
    assert np.array_equal(splits["test"][0].reshape(4, -1), written[-4:])


class _Boom:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("pwned",))


def test_hostile_cifar_batch_is_refused(tmp_path: Path) -> None:
    _cifar_folder(tmp_path / "cifar")
    with open(tmp_path / "cifar" / "test_batch", "wb") as fh:
        pickle.dump({b"data": _Boom(), b"labels": []}, fh, protocol=2)
    with pytest.raises(DataFileError, match="restricted unpickler"):
        files.load_splits(tmp_path / "cifar")


def test_unsupported_file_is_one_config_error(tmp_path: Path) -> None:
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(ConfigError, match="unsupported data file"):
        files.load_splits(tmp_path / "x.txt")
