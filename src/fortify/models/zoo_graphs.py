"""Architectures beyond plain stacks: a pre-activation ResNet, a DenseNet-style concat net (images),
a 1-D conv net for signals and a tabular MLP with BatchNorm.

Every factory takes ``in_shape`` and ``num_classes`` like :mod:`fortify.models.zoo` and carries
``example_shapes``: the example shapes it is tested on (the models contract reads them).

- ``resnet-mnist``: pre-activation ResNet (He et al. 2016, "Identity mappings in deep residual
  networks"): stem conv3x3, stages of pre-activation basic blocks (BN-ReLU-conv3x3-BN-ReLU-conv3x3
  plus the identity, or a 1x1 conv shortcut on a change of shape), final BN-ReLU,
  AdaptiveAvgPool(1), Flatten, Linear. Defaults: widths (16, 32, 64), one block per stage, strides
  1/2/2: 77,562 parameters (77,418 with ``bn=False``: no BatchNorm, e.g. for certified training;
  the count does not depend on the image size).
- ``dense-mnist``: DenseNet-style (Huang et al. 2017, "Densely connected convolutional networks"):
  stem conv3x3, two dense blocks of 3 BN-ReLU-conv3x3 layers with growth 12 whose outputs are
  concatenated to their inputs, a transition BN-ReLU-conv1x1-avgpool2 between them, then BN-ReLU,
  AdaptiveAvgPool(1), Flatten, Linear.
- ``signal-cnn``: 1-D convnet for signals ``(C, L)``: conv16 k5 p2, ReLU, maxpool2, conv32 k5 p2,
  ReLU, maxpool2, flatten, fc64, ReLU, fc.
- ``tabular-mlp``: for tables ``(F,)``: (Linear, BatchNorm1d, ReLU) x 2 of width 64, Linear.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn

from fortify.errors import ConfigError
from fortify.models.registry import MODELS
from fortify.models.zoo import _check_size, _conv_out, _image, _widths

IMAGE_SHAPES: tuple[tuple[int, ...], ...] = ((1, 28, 28), (1, 8, 8))


def _shapes(*shapes: tuple[int, ...]) -> Callable[[Any], Any]:
    """Attach ``example_shapes`` to a factory (read by the models contract)."""

    def deco(fn: Any) -> Any:
        fn.example_shapes = tuple(shapes)
        return fn

    return deco


def _norm(c: int, bn: bool) -> nn.Module:
    return nn.BatchNorm2d(c) if bn else nn.Identity()


class PreActBlock(nn.Module):
    """Pre-activation basic block: ``x + conv(relu(bn(conv(relu(bn(x))))))``; a 1x1 conv on the
    pre-activated input replaces the identity when the stride or the width changes (He et al. 2016).
    ``(N, C_in, H, W) -> (N, C_out, H / stride, W / stride)``."""

    def __init__(self, c_in: int, c_out: int, stride: int, bn: bool = True) -> None:
        super().__init__()
        self.bn1, self.relu1 = _norm(c_in, bn), nn.ReLU()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=not bn)
        self.bn2, self.relu2 = _norm(c_out, bn), nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=not bn)
        self.shortcut = nn.Conv2d(c_in, c_out, 1, stride, bias=not bn) if stride != 1 or c_in != c_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(x))
        skip = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(self.relu2(self.bn2(out)))
        return out + skip


class PreActResNet(nn.Module):
    """Stem conv3x3, ``stages`` of :class:`PreActBlock`, BN-ReLU, global average pool, Linear."""

    def __init__(self, c: int, widths: Sequence[int], blocks: Sequence[int], strides: Sequence[int],
                 num_classes: int, bn: bool) -> None:
        super().__init__()
        self.stem = nn.Conv2d(c, widths[0], 3, 1, 1, bias=not bn)
        layers: list[nn.Module] = []
        prev = widths[0]
        for w, n, s in zip(widths, blocks, strides):
            for i in range(n):
                layers.append(PreActBlock(prev, w, s if i == 0 else 1, bn))
                prev = w
        self.stages = nn.Sequential(*layers)
        self.bn, self.relu = _norm(prev, bn), nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(prev, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn(self.stages(self.stem(x))))
        return self.fc(self.flatten(self.pool(out)))


@MODELS.register("resnet-mnist", help="pre-activation ResNet for MNIST-sized inputs (He et al. 2016), < 1M params")
@_shapes(*IMAGE_SHAPES)
def resnet_mnist(in_shape: tuple[int, int, int] = (1, 28, 28), num_classes: int = 10,
                 widths: Sequence[int] = (16, 32, 64), blocks: Sequence[int] = (1, 1, 1),
                 strides: Sequence[int] = (1, 2, 2), bn: bool = True) -> nn.Module:
    """Pre-activation ResNet (He et al. 2016). Shapes on 28x28 with the defaults:
    ``(N,1,28,28) -> stem (N,16,28,28) -> (N,16,28,28) -> (N,32,14,14) -> (N,64,7,7) -> pool
    (N,64,1,1) -> (N,64) -> (N,num_classes)``. The global average pool is an AdaptiveAvgPool2d(1)."""
    n = len(widths) if isinstance(widths, Sequence) else 1
    ws, bs, ss = _widths(widths, n, "widths"), _widths(blocks, n, "blocks"), _widths(strides, n, "strides")
    if not isinstance(bn, bool):
        raise ConfigError(f"bn must be true or false, got {bn!r}")
    c, h, w = _image(in_shape, "resnet-mnist")
    for s in ss:
        h, w = _conv_out(h, 3, s, 1), _conv_out(w, 3, s, 1)
    _check_size(h, w, "resnet-mnist")
    return PreActResNet(c, ws, bs, ss, num_classes, bn)


class DenseLayer(nn.Module):
    """``cat([x, conv3x3(relu(bn(x)))], channels)``: ``(N, C, H, W) -> (N, C + growth, H, W)``."""

    def __init__(self, c_in: int, growth: int) -> None:
        super().__init__()
        self.bn, self.relu = nn.BatchNorm2d(c_in), nn.ReLU()
        self.conv = nn.Conv2d(c_in, growth, 3, 1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.conv(self.relu(self.bn(x)))], 1)


class DenseNet(nn.Module):
    """Stem, dense blocks with transitions (BN-ReLU-conv1x1-avgpool2) between them, head."""

    def __init__(self, c: int, stem: int, growth: int, layers: Sequence[int], num_classes: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(c, stem, 3, 1, 1, bias=False)
        mods: list[nn.Module] = []
        prev = stem
        for i, n in enumerate(layers):
            for _ in range(n):
                mods.append(DenseLayer(prev, growth))
                prev += growth
            if i + 1 < len(layers):
                out = prev // 2
                mods += [nn.BatchNorm2d(prev), nn.ReLU(), nn.Conv2d(prev, out, 1, bias=False), nn.AvgPool2d(2)]
                prev = out
        self.features = nn.Sequential(*mods)
        self.head = nn.Sequential(nn.BatchNorm2d(prev), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(prev, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(self.stem(x)))


@MODELS.register("dense-mnist", help="DenseNet-style concat net (Huang et al. 2017): 2 dense blocks, growth 12")
@_shapes(*IMAGE_SHAPES)
def dense_mnist(in_shape: tuple[int, int, int] = (1, 28, 28), num_classes: int = 10, stem: int = 16,
                growth: int = 12, layers: Sequence[int] = (3, 3)) -> nn.Module:
    """DenseNet-style net (Huang et al. 2017). Shapes on 28x28 with the defaults: ``(N,1,28,28) ->
    stem (N,16,28,28) -> block (N,52,28,28) -> transition (N,26,14,14) -> block (N,62,14,14) ->
    (N,62) -> (N,num_classes)``."""
    (s,), (g,) = _widths(stem, 1, "stem"), _widths(growth, 1, "growth")
    n = len(layers) if isinstance(layers, Sequence) else 1
    ls = _widths(layers, n, "layers")
    c, h, w = _image(in_shape, "dense-mnist")
    for _ in range(n - 1):
        h, w = h // 2, w // 2
    _check_size(h, w, "dense-mnist")
    return DenseNet(c, s, g, ls, num_classes)


def _signal_shape(in_shape: Sequence[int], name: str) -> tuple[int, int]:
    if len(in_shape) != 2:
        raise ConfigError(f"{name} takes signals (C, L); got in_shape {tuple(in_shape)}")
    return int(in_shape[0]), int(in_shape[1])


@MODELS.register("signal-cnn", help="1-D convnet for signals (C, L): conv16-conv32 k5 with max-pooling, fc64")
@_shapes((1, 40), (3, 64))
def signal_cnn(in_shape: tuple[int, int] = (1, 40), num_classes: int = 10, channels: Sequence[int] = (16, 32),
               hidden: int = 64) -> nn.Sequential:
    """``conv1d(C->16, k5, p2), ReLU, maxpool2, conv1d(16->32, k5, p2), ReLU, maxpool2, flatten, fc64,
    ReLU, fc(num_classes)``: ``(N, C, L) -> (N, 16, L/2) -> (N, 32, L/4) -> (N, 32 L/4) -> (N, 64) ->
    (N, num_classes)``."""
    c1, c2 = _widths(channels, 2, "channels")
    (f1,) = _widths(hidden, 1, "hidden")
    c, length = _signal_shape(in_shape, "signal-cnn")
    out = length // 2 // 2
    if out < 1:
        raise ConfigError(f"signal-cnn: the signal is too short (length {length}; at least 4)")
    return nn.Sequential(
        nn.Conv1d(c, c1, 5, padding=2), nn.ReLU(), nn.MaxPool1d(2),
        nn.Conv1d(c1, c2, 5, padding=2), nn.ReLU(), nn.MaxPool1d(2),
        nn.Flatten(), nn.Linear(c2 * out, f1), nn.ReLU(), nn.Linear(f1, num_classes),
    )


@MODELS.register("tabular-mlp", help="MLP for tables (F,): (Linear-BatchNorm1d-ReLU) x 2, width 64")
@_shapes((10,), (30,))
def tabular_mlp(in_shape: tuple[int] = (10,), num_classes: int = 2, hidden: Sequence[int] = (64, 64)) -> nn.Sequential:
    """``(N, F) -> [Linear, BatchNorm1d, ReLU] per hidden width -> Linear -> (N, num_classes)``."""
    if len(in_shape) != 1:
        raise ConfigError(f"tabular-mlp takes tables (F,); got in_shape {tuple(in_shape)}")
    n = len(hidden) if isinstance(hidden, Sequence) else 1
    widths = _widths(hidden, n, "hidden")
    layers: list[nn.Module] = []
    prev = int(in_shape[0])
    for w in widths:
        layers += [nn.Linear(prev, w), nn.BatchNorm1d(w), nn.ReLU()]
        prev = w
    layers.append(nn.Linear(prev, num_classes))
    return nn.Sequential(*layers)


__all__ = ["DenseNet", "PreActBlock", "PreActResNet", "dense_mnist", "resnet_mnist", "signal_cnn", "tabular_mlp"]
