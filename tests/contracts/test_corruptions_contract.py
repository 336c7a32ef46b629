"""Contract tests over the corruption registry (parametrized on ``CORRUPTIONS.names()``, so a new corruption
is covered by registering it).

Every corruption, at its default (MNIST-C) severity and at severities 1 and 5, on grayscale 28x28, 8x8 and RGB
32x24 batches: output shape, dtype and device of the input, values in [0, 1], finite; the same seed gives
the same output and the input is not modified; a non-trivial change at its default severity; a
severity out of 1..5 is a ConfigError, a malformed input an InputError.
"""
from __future__ import annotations

import pytest
import torch

from fortify.audit.corruptions import CORRUPTIONS, MNIST_C, corrupt
from fortify.errors import ConfigError, InputError, UnknownNameError


def digits_like(n: int, c: int, h: int, w: int) -> torch.Tensor:
    """Bright strokes on black, like MNIST (a ring and a bar), plus faint texture."""
    g = torch.Generator().manual_seed(5)
    rows = torch.arange(h).view(-1, 1).float()
    cols = torch.arange(w).view(1, -1).float()
    ring = (((rows - h / 2) ** 2 + (cols - w / 2) ** 2).sqrt() - min(h, w) / 4).abs() < 2
    bar = ((cols - w / 2).abs() < 1.5) & ((rows - h / 2).abs() < h / 3)
    base = torch.stack([ring if i % 2 else bar for i in range(n)]).float().unsqueeze(1).expand(n, c, h, w)
    return (0.9 * base + 0.1 * torch.rand(n, c, h, w, generator=g)).clamp(0, 1).contiguous()


def test_registry_holds_mnist_c() -> None:
    assert set(MNIST_C) <= set(CORRUPTIONS.names())
    assert len(MNIST_C) == 15


@pytest.mark.parametrize("name", CORRUPTIONS.names())
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 24), (1, 8, 8)], ids=["gray28", "rgb32x24", "digits8"])
def test_corruption_contract(name: str, shape: tuple[int, int, int]) -> None:
    x = digits_like(6, *shape)
    before = x.clone()
    spec = CORRUPTIONS.get(name)
    assert spec.default in (1, 2, 3, 4, 5) and len(spec.levels) == 5
    for severity in (None, 1, 5):
        out = corrupt(x, name, severity, seed=3)
        assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
        assert torch.isfinite(out).all() and float(out.min()) >= 0.0 and float(out.max()) <= 1.0
        assert torch.equal(out, corrupt(x, name, severity, seed=3)), "same seed, different output"
    assert torch.equal(x, before), "the input was modified"
    assert float((corrupt(x, name, seed=0) - x).abs().mean()) > 1e-3, "the default severity changes nothing"


@pytest.mark.parametrize("name", CORRUPTIONS.names())
def test_corruption_bad_inputs(name: str) -> None:
    x = digits_like(2, 1, 28, 28)
    for severity in (0, 6, 2.5, True, "3"):
        with pytest.raises(ConfigError):
            corrupt(x, name, severity)  # type: ignore[arg-type]
    with pytest.raises(InputError):
        corrupt(x * 2, name)
    with pytest.raises(InputError):
        corrupt(x.flatten(1), name)
    with pytest.raises(InputError):
        corrupt(torch.full_like(x, float("nan")), name)
    with pytest.raises(ConfigError):
        corrupt(x, name, seed=-1)


def test_unknown_corruption() -> None:
    with pytest.raises(UnknownNameError):
        corrupt(digits_like(1, 1, 28, 28), "snow")
