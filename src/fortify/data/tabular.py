"""Tabular datasets shipped inside scikit-learn (no download): ``breast-cancer`` and ``wine``.

Each feature is min-max scaled to [0, 1] with the range of the whole shipped table: the input
domain's per-feature bounds, so that ``eps`` is a fraction of each feature's range and every
attack stays inside the observed domain. Examples are ``(N, F)``; ``spec.features`` names the
columns. The splits are fixed and stratified (``stratified_split(y, n_test, seed=0)``). The
per-feature mean/std of the train split are written out here (as for the image datasets) so that
importing fortify does not import scikit-learn; the datasets contract test recomputes them.

* ``breast-cancer``: Wisconsin diagnostic breast cancer (569 x 30, 2 classes), 456/113.
* ``wine``: UCI wine recognition (178 x 13, 3 classes), 142/36.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from fortify.data.registry import DatasetSpec, register_dataset
from fortify.data.split import stratified_split
from fortify.errors import DatasetUnavailableError


@functools.lru_cache(maxsize=4)
def _table(which: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn import datasets as skd
    except ImportError:
        raise DatasetUnavailableError(f"{which} needs scikit-learn: run `pip install scikit-learn`") from None
    bunch = skd.load_breast_cancer() if which == "breast-cancer" else skd.load_wine()
    x = np.asarray(bunch.data, dtype=np.float64)
    lo, hi = x.min(0), x.max(0)
    x = (x - lo) / np.where(hi > lo, hi - lo, 1.0)
    return x.astype(np.float32), np.asarray(bunch.target, dtype=np.int64)


def _loader(which: str, n_test: int) -> Callable[[str, Optional[Path]], tuple[np.ndarray, np.ndarray]]:
    def load(split: str, data_dir: Optional[Path]) -> tuple[np.ndarray, np.ndarray]:
        x, y = _table(which)
        train_idx, test_idx = stratified_split(y, n_test, 0)
        idx = train_idx if split == "train" else test_idx
        return x[idx], y[idx]
    return load


_BC_MEASURES = ("radius", "texture", "perimeter", "area", "smoothness", "compactness", "concavity",
                "concave points", "symmetry", "fractal dimension")
_BC_FEATURES = (tuple(f"mean {m}" for m in _BC_MEASURES) + tuple(f"{m} error" for m in _BC_MEASURES)
                + tuple(f"worst {m}" for m in _BC_MEASURES))
register_dataset(DatasetSpec(
    name="breast-cancer", input_shape=(30,), num_classes=2,
    mean=(0.34143, 0.32395, 0.33609, 0.21963, 0.39033, 0.259, 0.20592, 0.24393, 0.37832, 0.26605, 0.10596,
          0.18543, 0.10002, 0.06287, 0.17627, 0.17264, 0.07777, 0.22286, 0.17635, 0.09769, 0.2989, 0.36276,
          0.28584, 0.17245, 0.39934, 0.22156, 0.21706, 0.39636, 0.26482, 0.18971),
    std=(0.1671, 0.14647, 0.16855, 0.15161, 0.12288, 0.16173, 0.1837, 0.19327, 0.13891, 0.14187, 0.10293,
         0.12032, 0.09933, 0.08819, 0.09685, 0.13275, 0.05895, 0.11321, 0.11471, 0.08218, 0.17281, 0.16325,
         0.16858, 0.14226, 0.1477, 0.15679, 0.16544, 0.22663, 0.12547, 0.11928),
    description="Wisconsin breast cancer table from scikit-learn (569 x 30 features, 2 classes), 456/113 split",
    install="pip install scikit-learn", loader=_loader("breast-cancer", 113), sizes={"train": 456, "test": 113},
    classes=("malignant", "benign"), features=_BC_FEATURES,
))
register_dataset(DatasetSpec(
    name="wine", input_shape=(13,), num_classes=3,
    mean=(0.5199, 0.31447, 0.53517, 0.45688, 0.32341, 0.44636, 0.34779, 0.44379, 0.36933, 0.32332, 0.39148,
          0.49445, 0.33806),
    std=(0.20742, 0.22172, 0.14305, 0.17602, 0.15897, 0.21075, 0.20388, 0.23698, 0.17332, 0.19965, 0.1881,
         0.25995, 0.22285),
    description="UCI wine table from scikit-learn (178 x 13 features, 3 classes), 142/36 split",
    install="pip install scikit-learn", loader=_loader("wine", 36), sizes={"train": 142, "test": 36},
    classes=("class_0", "class_1", "class_2"),
    features=("alcohol", "malic_acid", "ash", "alcalinity_of_ash", "magnesium", "total_phenols", "flavanoids",
              "nonflavanoid_phenols", "proanthocyanins", "color_intensity", "hue", "od280/od315_of_diluted_wines",
              "proline"),
))
