"""Contract every registered dataset must meet (skipped with the reason when it is not installed).

The same ``data.load`` call must give: float32 ``(N, *input_shape)`` in [0, 1] (images ``(C, H, W)``,
signals ``(C, L)``, tables ``(F,)``),
int64 labels in ``[0, num_classes)``, the documented split sizes, a deterministic order, disjoint
train/test images, and train statistics equal to the hard-coded ``spec.mean``/``spec.std``.
"""
from __future__ import annotations

import pytest
import torch

from fortify import data
from fortify.errors import DatasetUnavailableError

NAMES = data.DATASETS.names()
CASES = [(n, s) for n in NAMES for s in data.info(n).splits]


def _load(name: str, split: str, **kw: object) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        return data.load(name, split, **kw)  # type: ignore[arg-type]
    except DatasetUnavailableError as exc:
        pytest.skip(f"{name} unavailable: {exc}")


def test_registry_has_the_documented_datasets() -> None:
    assert {"mnist-5k", "digits", "mnist", "fashion-mnist", "mnist1d", "breast-cancer", "wine"} <= set(NAMES)
    assert data.DEFAULT_DATASET == "mnist-5k"


@pytest.mark.parametrize("name", NAMES)
def test_spec_is_complete(name: str) -> None:
    spec = data.info(name)
    assert spec.name == name and spec.description and spec.install
    assert 1 <= len(spec.input_shape) <= 3 and all(d >= 1 for d in spec.input_shape) and spec.num_classes >= 2
    assert len(spec.mean) == len(spec.std) == spec.input_shape[0]  # per channel (per feature for tables)
    assert not spec.classes or len(spec.classes) == spec.num_classes
    assert not spec.features or len(spec.features) == spec.input_shape[0]
    assert all(0 < s < 1 for s in spec.std) and all(0 < m < 1 for m in spec.mean)
    assert "train" in spec.splits and "test" in spec.splits
    assert set(spec.sizes) == set(spec.splits)


@pytest.mark.parametrize("name, split", CASES)
def test_split_contract(name: str, split: str) -> None:
    spec = data.info(name)
    x, y = _load(name, split)
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.shape == (spec.sizes[split], *spec.input_shape) and y.shape == (spec.sizes[split],)
    assert x.is_contiguous()
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert float(x.max()) > 0.5  # really scaled to [0, 1], not to [0, 1/255]
    assert int(y.min()) >= 0 and int(y.max()) < spec.num_classes
    assert len(torch.unique(y)) == spec.num_classes  # every class present in every full split
    x2, y2 = _load(name, split, limit=64)
    assert torch.equal(x2, x[:64]) and torch.equal(y2, y[:64])  # deterministic order


@pytest.mark.parametrize("name", NAMES)
def test_train_statistics_match_spec(name: str) -> None:
    spec = data.info(name)
    x, _ = _load(name, "train")
    total = torch.zeros(x.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    axes = tuple(i for i in range(x.dim()) if i != 1)
    for chunk in x.split(5000):  # float64 accumulation without a float64 copy of the whole split
        c64 = chunk.double()
        total += c64.sum(dim=axes)
        squares += c64.square().sum(dim=axes)
    count = x.numel() // x.shape[1]
    mean = total / count
    std = (squares / count - mean.square()).sqrt()
    assert torch.allclose(mean, torch.tensor(spec.mean, dtype=torch.float64), atol=5e-5)
    assert torch.allclose(std, torch.tensor(spec.std, dtype=torch.float64), atol=5e-5)


@pytest.mark.parametrize("name", NAMES)
def test_train_and_test_are_disjoint(name: str) -> None:
    xtr, _ = _load(name, "train", limit=5000)
    xte, _ = _load(name, "test", limit=2000)
    train_rows = {r.numpy().tobytes() for r in xtr.flatten(1)}
    assert not any(r.numpy().tobytes() in train_rows for r in xte.flatten(1))
