"""The built-in architectures, as plain ``nn.Sequential`` stacks of standard layers.

All factories take ``in_shape=(C, H, W)`` and ``num_classes`` and map ``(N, C, H, W)`` to logits
``(N, num_classes)``. Widths are arguments (defaults = the published sizes) so that structurally
pruned models can be described, saved and rebuilt.

- ``mlp``: LeNet-300-100 (LeCun et al. 1998; the pruning benchmark of Han et al. 2015):
  784-300-100-10 with ReLU, 266,610 parameters on MNIST.
- ``lenet5``: LeNet-5 (LeCun et al. 1998) with the modern substitutions ReLU and max-pooling:
  conv6 k5 p2, pool, conv16 k5, pool, fc120, fc84, fc10; 61,706 parameters on MNIST.
- ``small-cnn``: the "small" network of Wong & Kolter 2018 (ICML, provable defenses):
  conv16 k4 s2 p1, conv32 k4 s2 p1, fc100, fc10; 166,406 parameters on MNIST.
- ``madry-cnn``: the MNIST network of Madry et al. 2018 (ICLR, PGD adversarial training):
  conv32 k5 p2, pool, conv64 k5 p2, pool, fc1024, fc10; 3,274,634 parameters on MNIST.
- ``dm-medium``: the "medium" network of Gowal et al. 2018 (IBP) / Zhang et al. 2020 (CROWN-IBP):
  conv32 k3, conv32 k4 s2, conv64 k3, conv64 k4 s2, fc512, fc512, fc10; 1,974,762 parameters on MNIST.
"""
from __future__ import annotations

import math
from typing import Sequence

from torch import nn

from fortify.errors import ConfigError
from fortify.models.registry import MODELS


def _widths(value: object, n: int, what: str) -> tuple[int, ...]:
    """Validate a width argument: an int (n == 1) or a sequence of ``n`` positive ints."""
    items = (value,) if isinstance(value, int) and not isinstance(value, bool) else value
    if (
        not isinstance(items, Sequence)
        or len(items) != n
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in items)
    ):
        raise ConfigError(f"{what} must be {n} positive int(s), got {value!r}")
    return tuple(int(v) for v in items)


def _conv_out(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """Spatial output size of a convolution or pooling window: ``floor((s + 2p - k) / stride) + 1``."""
    return (size + 2 * padding - kernel) // stride + 1


def _image(in_shape: Sequence[int], name: str) -> tuple[int, int, int]:
    """``(C, H, W)`` of an image architecture; other shapes are a ConfigError naming the model."""
    if len(in_shape) != 3:
        raise ConfigError(f"{name} takes images (C, H, W); got in_shape {tuple(in_shape)} (use mlp for tables)")
    return int(in_shape[0]), int(in_shape[1]), int(in_shape[2])


def _check_size(h: int, w: int, name: str) -> None:
    if h < 1 or w < 1:
        raise ConfigError(f"{name}: the input is too small for this architecture (feature map {h}x{w})")


@MODELS.register("mlp", help="LeNet-300-100 multilayer perceptron (784-300-100-10, ReLU)")
def mlp(in_shape: tuple[int, ...] = (1, 28, 28), num_classes: int = 10,
        hidden: Sequence[int] = (300, 100)) -> nn.Sequential:
    """LeNet-300-100 (LeCun et al. 1998): Flatten, then Linear+ReLU per hidden width, then Linear.

    Shapes: ``(N, C, H, W) -> (N, C*H*W) -> (N, 300) -> (N, 100) -> (N, num_classes)``; any example
    shape is flattened the same way (``(N, F)`` tables, ``(N, C, L)`` signals).
    ``hidden`` may have any length >= 1 (it is validated as a list of positive ints).
    """
    if isinstance(hidden, int) and not isinstance(hidden, bool):
        hidden = (hidden,)
    if not isinstance(hidden, Sequence) or len(hidden) == 0:
        raise ConfigError(f"hidden must be a non-empty list of positive ints, got {hidden!r}")
    widths = _widths(hidden, len(hidden), "hidden")
    layers: list[nn.Module] = [nn.Flatten()]
    prev = math.prod(in_shape)
    for w in widths:
        layers += [nn.Linear(prev, w), nn.ReLU()]
        prev = w
    layers.append(nn.Linear(prev, num_classes))
    return nn.Sequential(*layers)


@MODELS.register("lenet5", help="LeNet-5 (LeCun 1998) with ReLU and max-pooling")
def lenet5(in_shape: tuple[int, int, int] = (1, 28, 28), num_classes: int = 10,
           channels: Sequence[int] = (6, 16), hidden: Sequence[int] = (120, 84)) -> nn.Sequential:
    """LeNet-5 (LeCun et al. 1998), ReLU/max-pool variant.

    ``conv(C->6, k5, p2), ReLU, maxpool2, conv(6->16, k5, p), ReLU, maxpool2, flatten, fc120, ReLU,
    fc84, ReLU, fc(num_classes)``. ``p = 0`` (the original C3 layer) when the pooled map is at least
    6 pixels wide, else ``p = 2`` so small inputs (8x8 digits) keep a 2x2 map. On 28x28 the shapes
    are ``(N,1,28,28) -> (N,6,14,14) -> (N,16,5,5) -> (N,400) -> (N,120) -> (N,84) -> (N,10)``.
    """
    c1, c2 = _widths(channels, 2, "channels")
    f1, f2 = _widths(hidden, 2, "hidden")
    c, h, w = _image(in_shape, "lenet5")
    h, w = _conv_out(h, 5, 1, 2) // 2, _conv_out(w, 5, 1, 2) // 2
    _check_size(h, w, "lenet5")
    pad2 = 0 if min(h, w) >= 6 else 2
    h, w = _conv_out(h, 5, 1, pad2) // 2, _conv_out(w, 5, 1, pad2) // 2
    _check_size(h, w, "lenet5")
    return nn.Sequential(
        nn.Conv2d(c, c1, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 5, padding=pad2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(c2 * h * w, f1), nn.ReLU(),
        nn.Linear(f1, f2), nn.ReLU(),
        nn.Linear(f2, num_classes),
    )


@MODELS.register("small-cnn", help="Wong & Kolter 2018 small convnet (conv16-conv32-fc100)")
def small_cnn(in_shape: tuple[int, int, int] = (1, 28, 28), num_classes: int = 10,
              channels: Sequence[int] = (16, 32), hidden: int = 100) -> nn.Sequential:
    """Small convnet of Wong & Kolter 2018 ("Provable defenses via the convex outer polytope").

    ``conv(C->16, k4, s2, p1), ReLU, conv(16->32, k4, s2, p1), ReLU, flatten, fc100, ReLU,
    fc(num_classes)``. Shapes on 28x28: ``(N,1,28,28) -> (N,16,14,14) -> (N,32,7,7) -> (N,1568)
    -> (N,100) -> (N,10)``; on 8x8 the maps are 4x4 then 2x2.
    """
    c1, c2 = _widths(channels, 2, "channels")
    (f1,) = _widths(hidden, 1, "hidden")
    c, h, w = _image(in_shape, "small-cnn")
    for _ in range(2):
        h, w = _conv_out(h, 4, 2, 1), _conv_out(w, 4, 2, 1)
        _check_size(h, w, "small-cnn")
    return nn.Sequential(
        nn.Conv2d(c, c1, 4, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(c1, c2, 4, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(c2 * h * w, f1), nn.ReLU(),
        nn.Linear(f1, num_classes),
    )


@MODELS.register("madry-cnn", help="Madry et al. 2018 MNIST convnet (conv32-conv64-fc1024)")
def madry_cnn(in_shape: tuple[int, int, int] = (1, 28, 28), num_classes: int = 10,
              channels: Sequence[int] = (32, 64), hidden: int = 1024) -> nn.Sequential:
    """MNIST network of Madry et al. 2018 ("Towards deep learning models resistant to adversarial attacks").

    ``conv(C->32, k5, p2), ReLU, maxpool2, conv(32->64, k5, p2), ReLU, maxpool2, flatten, fc1024,
    ReLU, fc(num_classes)``. Shapes on 28x28: ``(N,1,28,28) -> (N,32,14,14) -> (N,64,7,7) ->
    (N,3136) -> (N,1024) -> (N,10)``; on 8x8 the maps are 4x4 then 2x2.
    """
    c1, c2 = _widths(channels, 2, "channels")
    (f1,) = _widths(hidden, 1, "hidden")
    c, h, w = _image(in_shape, "madry-cnn")
    for _ in range(2):
        h, w = _conv_out(h, 5, 1, 2) // 2, _conv_out(w, 5, 1, 2) // 2
        _check_size(h, w, "madry-cnn")
    return nn.Sequential(
        nn.Conv2d(c, c1, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(c2 * h * w, f1), nn.ReLU(),
        nn.Linear(f1, num_classes),
    )


@MODELS.register("dm-medium",
                 help="Gowal et al. 2018 IBP 'medium' convnet (conv32-conv32s2-conv64-conv64s2-fc512-fc512)")
def dm_medium(in_shape: tuple[int, int, int] = (1, 28, 28), num_classes: int = 10,
              channels: Sequence[int] = (32, 32, 64, 64), hidden: Sequence[int] = (512, 512)) -> nn.Sequential:
    """The "medium" network of Gowal et al. 2018 ("On the effectiveness of interval bound
    propagation"), also used by Zhang et al. 2020 (CROWN-IBP): four convolutions without pooling.

    ``conv(C->32, k3, p1), ReLU, conv(32->32, k4, s2, p1), ReLU, conv(32->64, k3, p1), ReLU,
    conv(64->64, k4, s2, p1), ReLU, flatten, fc512, ReLU, fc512, ReLU, fc(num_classes)``. Shapes on
    28x28: ``(N,1,28,28) -> (N,32,28,28) -> (N,32,14,14) -> (N,64,14,14) -> (N,64,7,7) -> (N,3136)
    -> (N,512) -> (N,512) -> (N,10)``.
    """
    c1, c2, c3, c4 = _widths(channels, 4, "channels")
    f1, f2 = _widths(hidden, 2, "hidden")
    c, h, w = _image(in_shape, "dm-medium")
    for _ in range(2):
        h, w = _conv_out(h, 4, 2, 1), _conv_out(w, 4, 2, 1)
        _check_size(h, w, "dm-medium")
    return nn.Sequential(
        nn.Conv2d(c, c1, 3, padding=1), nn.ReLU(),
        nn.Conv2d(c1, c2, 4, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(c2, c3, 3, padding=1), nn.ReLU(),
        nn.Conv2d(c3, c4, 4, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(c4 * h * w, f1), nn.ReLU(),
        nn.Linear(f1, f2), nn.ReLU(),
        nn.Linear(f2, num_classes),
    )


#: Parameter counts of the default widths on ``(1, 28, 28)`` inputs with 10 classes (from the papers'
#: layer sizes; checked by the contract tests).
KNOWN_PARAM_COUNTS: dict[str, int] = {
    "mlp": 266_610,
    "lenet5": 61_706,
    "small-cnn": 166_406,
    "madry-cnn": 3_274_634,
    "dm-medium": 1_974_762,
}

__all__ = ["KNOWN_PARAM_COUNTS", "dm_medium", "lenet5", "madry_cnn", "mlp", "small_cnn"]
