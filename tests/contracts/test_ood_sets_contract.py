"""Contract tests over the OOD-set registry (parametrized on ``OOD_SETS.names()``, so a new set is covered by
registering it).

Every set: ``(n, *sample_shape)`` float32 in [0, 1] for a grayscale 28x28, an RGB 32x32 and a 8x8 shape; the
same seed gives the same tensor and another seed another one; provenance documented (description, source,
licence). A set whose source is not installed must raise DatasetUnavailableError (the test is then
skipped with that message); ``fooling`` is exercised with a tiny model.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from fortify.audit.ood_sets import OOD_SETS, load_ood
from fortify.errors import ConfigError, DatasetUnavailableError, UnknownNameError


def tiny_model(c: int, h: int, w: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, 4)).eval()


def load_or_skip(name: str, n: int, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    model = tiny_model(*shape) if name == "fooling" else None
    try:
        return load_ood(name, n, shape, seed=seed, model=model)
    except DatasetUnavailableError as exc:
        pytest.skip(f"{name}: {exc}")


@pytest.mark.parametrize("name", OOD_SETS.names())
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (1, 8, 8)], ids=["gray28", "rgb32", "gray8"])
def test_ood_set_contract(name: str, shape: tuple[int, int, int]) -> None:
    x = load_or_skip(name, 12, shape, seed=1)
    assert x.shape == (12, *shape) and x.dtype == torch.float32
    assert torch.isfinite(x).all() and float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert torch.equal(x, load_ood(name, 12, shape, seed=1, model=tiny_model(*shape) if name == "fooling" else None))
    other = load_ood(name, 12, shape, seed=2, model=tiny_model(*shape) if name == "fooling" else None)
    assert not torch.equal(x, other), "another seed gave the same samples"
    assert float(x.std()) > 0.0


@pytest.mark.parametrize("name", OOD_SETS.names())
def test_ood_set_documented_and_bad_arguments(name: str) -> None:
    spec = OOD_SETS.get(name)
    assert spec.description and spec.source and spec.licence and OOD_SETS.help(name)
    for bad_n in (0, -3, 2.0, True):
        with pytest.raises(ConfigError):
            load_ood(name, bad_n, (1, 8, 8))  # type: ignore[arg-type]
    for bad_shape in ((), (1, 0, 8), (1.0, 8, 8)):
        with pytest.raises(ConfigError):
            load_ood(name, 2, bad_shape)  # type: ignore[arg-type]
    if not spec.any_shape:
        with pytest.raises(ConfigError):
            load_ood(name, 2, (64,))


def test_unknown_set_and_fooling_without_model() -> None:
    with pytest.raises(UnknownNameError):
        load_ood("cifar-10", 2, (3, 32, 32))
    with pytest.raises(ConfigError):
        load_ood("fooling", 2, (1, 8, 8))
