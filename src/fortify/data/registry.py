"""Dataset registry, the :class:`DatasetSpec` record, and the cached :func:`load` entry point.

Every dataset is returned the same way: ``x`` float32 ``(N, *input_shape)`` (``(N, C, H, W)`` for
images, ``(N, C, L)`` for signals, ``(N, F)`` for tables) with values in ``[0, 1]``,
``y`` int64 ``(N,)`` with values in ``[0, num_classes)``. Normalisation (``mean``/``std``) is *not*
applied to the data: it lives inside the model (:class:`fortify.models.Normalized`) so that attacks,
certificates and threat models all work in ``[0, 1]`` pixel space.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from fortify.errors import ConfigError, DataFileError
from fortify.registry import Registry
from fortify.validation import strict_keywords

#: ``loader(split, data_dir) -> (x, y)`` with x float32/uint8 numpy ``(N, C, H, W)``, y int ``(N,)``.
Loader = Callable[[str, Optional[Path]], "tuple[np.ndarray, np.ndarray]"]

DEFAULT_DATASET = "mnist-5k"


@dataclass(frozen=True)
class DatasetSpec:
    """Static description of a registered dataset.

    Attributes:
        name: registry name (``"mnist-5k"``).
        input_shape: the shape of one example: ``(C, H, W)`` for images, ``(C, L)`` for signals,
            ``(F,)`` for tables.
        num_classes: number of labels.
        mean, std: per-channel statistics of the *train* split in ``[0, 1]`` space (hard-coded,
            population statistics over all train pixels, checked by the contract tests); feed them
            to :class:`fortify.models.Normalized`.
        description: one line for ``fortify datasets``.
        install: how to make the dataset available when it is missing.
        loader: ``loader(split, data_dir)`` returning numpy ``(x, y)``; uint8 images are scaled /255.
        splits: the split names accepted by :func:`load`.
        sizes: number of examples per split (documentation and tests).
        classes: class names in label order (empty: the labels are their own names).
        features: names of a table's encoded features (empty for images and signals).
    """

    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    description: str
    install: str
    loader: Loader = field(repr=False, compare=False)
    splits: tuple[str, ...] = ("train", "test")
    sizes: dict[str, int] = field(default_factory=dict, compare=False)
    classes: tuple[str, ...] = field(default=(), compare=False)
    features: tuple[str, ...] = field(default=(), compare=False)


DATASETS: Registry[DatasetSpec] = Registry("dataset")

_CACHE: dict[tuple[str, str, Optional[str]], tuple[torch.Tensor, torch.Tensor]] = {}
_LOCK = threading.Lock()


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    """Add ``spec`` to :data:`DATASETS` under ``spec.name`` (duplicate names are a ConfigError)."""
    DATASETS.register(spec.name, spec, help=spec.description)
    return spec


def info(name: str) -> DatasetSpec:
    """Return the :class:`DatasetSpec` of ``name``; unknown names raise UnknownNameError."""
    return DATASETS.get(name)


def clear_cache() -> None:
    """Forget every dataset loaded in this process."""
    with _LOCK:
        _CACHE.clear()


def _to_tensors(spec: DatasetSpec, split: str, x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Convert loader output to float32 ``(N, C, H, W)`` in [0, 1] and int64 ``(N,)``, validating it."""
    n = len(y)
    if x.shape != (n, *spec.input_shape):
        raise DataFileError(
            f"{spec.name}/{split}: expected images of shape (N, {spec.input_shape}), got {x.shape}"
        )
    if x.dtype == np.uint8:
        xt = torch.from_numpy(np.ascontiguousarray(x)).to(torch.float32).div_(255.0)
    else:
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).clone()
    yt = torch.from_numpy(np.asarray(y).astype(np.int64))
    if n == 0:
        raise DataFileError(f"{spec.name}/{split}: the split is empty")
    if not bool(torch.isfinite(xt).all()) or float(xt.min()) < 0.0 or float(xt.max()) > 1.0:
        raise DataFileError(f"{spec.name}/{split}: pixel values outside [0, 1] after scaling")
    if int(yt.min()) < 0 or int(yt.max()) >= spec.num_classes:
        raise DataFileError(f"{spec.name}/{split}: labels outside [0, {spec.num_classes})")
    return xt, yt


@strict_keywords("data.load")
def load(
    name: str,
    split: str = "train",
    *,
    data_dir: str | Path | None = None,
    limit: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load a registered dataset split as tensors.

    Args:
        name: a name in :data:`DATASETS` (``"mnist-5k"`` is the library default).
        split: one of ``info(name).splits`` (``"train"``/``"test"``; ``mnist`` also has ``"val"``).
        data_dir: optional folder with the dataset's files (IDX files for ``mnist`` and
            ``fashion-mnist``, ``mnist_5k.csv.gz`` for ``mnist-5k``); ignored by ``digits``.
        limit: keep only the first ``limit`` examples of the (fixed-order) split; ``>= 1``.
    Returns:
        ``(x, y)``: ``x`` float32 ``(N, C, H, W)`` in ``[0, 1]``, ``y`` int64 ``(N,)``. The tensors
        are fresh copies, so mutating them never corrupts the in-process cache.
    Raises:
        UnknownNameError, ConfigError (bad split/limit/data_dir), DatasetUnavailableError (files or
        packages missing; the message says what to install), DataFileError (corrupt files).
    """
    spec = info(name)
    if not isinstance(split, str) or split not in spec.splits:
        raise ConfigError(f"dataset {name!r} has no split {split!r}; allowed: {', '.join(spec.splits)}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"limit must be a positive integer or None, got {limit!r}")
    root: Path | None = None
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        if not root.is_dir():
            raise ConfigError(f"data_dir {str(root)!r} is not a directory")
        root = root.resolve()
    key = (name, split, str(root) if root is not None else None)
    with _LOCK:
        cached = _CACHE.get(key)
    if cached is None:
        x_np, y_np = spec.loader(split, root)
        cached = _to_tensors(spec, split, x_np, y_np)
        with _LOCK:
            _CACHE[key] = cached
    x, y = cached
    n = len(y) if limit is None else min(limit, len(y))
    return x[:n].clone(), y[:n].clone()


__all__ = ["DATASETS", "DEFAULT_DATASET", "DatasetSpec", "clear_cache", "info", "load", "register_dataset"]
