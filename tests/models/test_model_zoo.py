"""Architectures against their papers' layer lists, argument validation, and the Normalized wrapper."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from fortify import models
from fortify.errors import ConfigError, UnknownNameError


def _layout(model: nn.Module) -> list[tuple]:
    out: list[tuple] = []
    for m in model:
        if isinstance(m, nn.Linear):
            out.append(("fc", m.in_features, m.out_features))
        elif isinstance(m, nn.Conv2d):
            out.append(("conv", m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0], m.padding[0]))
        elif isinstance(m, nn.MaxPool2d):
            out.append(("pool", m.kernel_size))
        else:
            out.append((type(m).__name__,))
    return out


def test_mlp_is_lenet_300_100() -> None:
    assert _layout(models.create("mlp")) == [
        ("Flatten",), ("fc", 784, 300), ("ReLU",), ("fc", 300, 100), ("ReLU",), ("fc", 100, 10)]


def test_small_cnn_is_wong_kolter() -> None:
    assert _layout(models.create("small-cnn")) == [
        ("conv", 1, 16, 4, 2, 1), ("ReLU",), ("conv", 16, 32, 4, 2, 1), ("ReLU",), ("Flatten",),
        ("fc", 1568, 100), ("ReLU",), ("fc", 100, 10)]
    assert _layout(models.create("small-cnn", in_shape=(1, 8, 8)))[5] == ("fc", 32 * 2 * 2, 100)


def test_madry_cnn_is_madry() -> None:
    assert _layout(models.create("madry-cnn")) == [
        ("conv", 1, 32, 5, 1, 2), ("ReLU",), ("pool", 2), ("conv", 32, 64, 5, 1, 2), ("ReLU",), ("pool", 2),
        ("Flatten",), ("fc", 3136, 1024), ("ReLU",), ("fc", 1024, 10)]


def test_lenet5_layout_on_mnist_and_digits() -> None:
    layout = _layout(models.create("lenet5"))
    assert layout[3] == ("conv", 6, 16, 5, 1, 0) and layout[7] == ("fc", 400, 120)
    small = _layout(models.create("lenet5", in_shape=(1, 8, 8)))
    assert small[3] == ("conv", 6, 16, 5, 1, 2) and small[7] == ("fc", 64, 120)


def test_width_arguments_are_recorded_and_applied() -> None:
    model = models.create("small-cnn", channels=(4, 8), hidden=20, num_classes=3)
    assert _layout(model)[-3:] == [("fc", 8 * 7 * 7, 20), ("ReLU",), ("fc", 20, 3)]
    assert models.architecture(model) == {
        "name": "small-cnn", "in_shape": [1, 28, 28], "num_classes": 3,
        "args": {"channels": [4, 8], "hidden": 20}}
    assert models.architecture(nn.Linear(2, 2)) is None


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"in_shape": (28, 28)}, "in_shape"),
        ({"in_shape": (1, 0, 28)}, "in_shape"),
        ({"num_classes": 1}, "num_classes"),
        ({"num_classes": True}, "num_classes"),
        ({"hiden": (3,)}, "unknown argument"),
        ({"channels": (4,)}, "channels"),
        ({"hidden": -1}, "hidden"),
        ({"in_shape": (1, 2, 2)}, "too small"),
    ],
)
def test_bad_arguments_raise_config_error(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        models.create("small-cnn", **kwargs)


def test_unknown_model_name() -> None:
    with pytest.raises(UnknownNameError, match="small-cnn"):
        models.create("vgg-19")


def test_normalized_buffers_and_validation() -> None:
    net = models.Normalized(models.create("mlp", in_shape=(3, 8, 8)), [0.1, 0.2, 0.3], [0.5, 0.5, 0.25])
    assert net.mean.shape == (1, 3, 1, 1) and net.channels == 3
    assert set(dict(net.named_buffers())) == {"mean", "std"}
    x = torch.rand(2, 3, 8, 8)
    manual = (x - torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1)) / torch.tensor([0.5, 0.5, 0.25]).view(1, 3, 1, 1)
    assert torch.allclose(net(x), net.inner(manual), atol=1e-6)
    assert models.architecture(net)["name"] == "mlp"
    with pytest.raises(ConfigError, match="positive"):
        models.Normalized(nn.Identity(), [0.0], [0.0])
    with pytest.raises(ConfigError, match="channels"):
        models.Normalized(nn.Identity(), [0.0, 0.1], [1.0])
    with pytest.raises(ConfigError):
        models.Normalized("not a module", [0.0], [1.0])  # type: ignore[arg-type]
