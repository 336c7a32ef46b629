"""Contract every registered architecture must meet, on MNIST-sized and digits-sized inputs.

Shapes and dtypes of logits, plain ``nn.Sequential`` of walkable layers, gradients reach the input,
published parameter counts, save/load round trip with identical outputs (bare and Normalized), and
``Normalized`` equal to normalising by hand.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from fortify import models

NAMES = models.MODELS.names()
SHAPES = [(1, 28, 28), (1, 8, 8)]
WALKABLE = (nn.Linear, nn.Conv2d, nn.ReLU, nn.Flatten, nn.MaxPool2d)
#: Parameter counts from the papers' layer sizes on 28x28 MNIST, 10 classes (computed by hand).
PUBLISHED = {
    "mlp": 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10,  # 266,610 (LeNet-300-100)
    "lenet5": 156 + 2416 + 400 * 120 + 120 + 120 * 84 + 84 + 84 * 10 + 10,  # 61,706
    "small-cnn": 272 + 8224 + 32 * 7 * 7 * 100 + 100 + 1010,  # 166,406 (Wong & Kolter)
    "madry-cnn": 832 + 51264 + 64 * 7 * 7 * 1024 + 1024 + 10250,  # 3,274,634 (Madry et al.)
    # Gowal et al. 2018 "medium": conv32 k3, conv32 k4 s2, conv64 k3, conv64 k4 s2, fc512, fc512, fc10
    "dm-medium": 320 + 16416 + 18496 + 65600 + 64 * 7 * 7 * 512 + 512 + 262656 + 5130,  # 1,974,762
}


def test_registry_has_the_documented_models() -> None:
    assert {"mlp", "lenet5", "small-cnn", "madry-cnn"} <= set(NAMES)
    assert PUBLISHED["mlp"] == 266_610


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", SHAPES, ids=["28x28", "8x8"])
def test_forward_contract(name: str, shape: tuple[int, int, int]) -> None:
    model = models.create(name, in_shape=shape, num_classes=10)
    assert isinstance(model, nn.Sequential)
    assert all(isinstance(m, WALKABLE) for m in model), [type(m).__name__ for m in model]
    x = torch.rand(5, *shape, requires_grad=True)
    out = model(x)
    assert out.shape == (5, 10) and out.dtype == torch.float32
    assert bool(torch.isfinite(out).all())
    (grad,) = torch.autograd.grad(out[:, 3].sum(), x)
    assert grad.shape == x.shape and float(grad.abs().sum()) > 0
    # the rows are independent: a batch gives the same logits as single examples
    assert torch.allclose(model(x[2:3]), out[2:3], atol=1e-5)
    assert models.create(name, in_shape=shape, num_classes=3)(x).shape == (5, 3)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_parameter_counts(name: str) -> None:
    model = models.create(name)
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED[name]
    assert models.KNOWN_PARAM_COUNTS[name] == PUBLISHED[name]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", SHAPES, ids=["28x28", "8x8"])
def test_save_load_round_trip_identical_outputs(tmp_path: Path, name: str, shape: tuple[int, int, int]) -> None:
    model = models.create(name, in_shape=shape, num_classes=10)
    path = models.save(model, tmp_path / "m.safetensors", meta={"dataset": "digits"})
    back = models.load(path)
    assert not back.training and type(back) is type(model)
    assert models.architecture(back) == models.architecture(model)
    x = torch.rand(4, *shape)
    model.eval()
    assert torch.equal(back(x), model(x))
    for (k1, v1), (k2, v2) in zip(model.state_dict().items(), back.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)


@pytest.mark.parametrize("name", NAMES)
def test_normalized_equals_manual_normalisation_and_round_trips(tmp_path: Path, name: str) -> None:
    mean, std = (0.1307,), (0.3081,)
    inner = models.create(name, in_shape=(1, 8, 8))
    net = models.Normalized(inner, mean, std).eval()
    x = torch.rand(6, 1, 8, 8)
    assert net.inner is inner
    assert torch.allclose(net(x), inner((x - 0.1307) / 0.3081), atol=1e-6)
    back = models.load(models.save(net, tmp_path / "n.safetensors"))
    assert isinstance(back, models.Normalized)
    assert torch.equal(back(x), net(x))
    meta = models.read_meta(tmp_path / "n.safetensors")
    assert meta["normalization"]["mean"] == pytest.approx(list(mean))
    assert meta["architecture"]["name"] == name and meta["in_shape"] == [1, 8, 8]
