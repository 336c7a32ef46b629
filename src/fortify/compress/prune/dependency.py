"""Dependency handling for structural surgery on fortify's Sequential models.

Removing output unit ``u`` of a Conv2d/Linear layer ``i`` (a channel or a neuron) also removes the
input slice it feeds in the next parametric layer ``j``: channel ``u`` of a Conv2d consumer, column
``u`` of a Linear consumer, or, across a ``Flatten`` (conv -> flatten -> linear), the block of
columns ``u*H*W ... (u+1)*H*W - 1``. Between ``i`` and ``j`` only channel-wise ops may appear
(ReLU, MaxPool2d, Dropout, Identity, Flatten). The ``Normalized`` wrapper only touches the model
input, which is never pruned, so surgery happens on ``model.inner``. The last parametric layer
(the classifier) is never pruned: its outputs are the logits.

This plays the role of Torch-Pruning's dependency graph (Fang et al. 2023, "DepGraph") for the
Sequential family; :func:`Group` instances pair a producer with its consumer slices.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from fortify.compress.base import sequential_of
from fortify.errors import UnsupportedLayerError
from fortify.models.registry import ARCH_ATTR


@dataclass
class Group:
    """Producer layer ``producer`` (index in the Sequential) and its consumer ``consumer``.

    ``spatial``: ``H*W`` of the producer's feature map when a Flatten lies between them (a channel
    then owns ``spatial`` consecutive consumer columns), else 0.
    """

    producer: int
    consumer: int
    spatial: int

    def consumer_index(self, units: torch.Tensor) -> torch.Tensor:
        """Consumer input indices (dim 1 of its weight) owned by producer ``units`` (1-D long)."""
        if self.spatial == 0:
            return units
        hw = torch.arange(self.spatial, device=units.device)
        return (units[:, None] * self.spatial + hw[None, :]).reshape(-1)


def trace_shapes(seq: nn.Sequential, example_inputs: torch.Tensor) -> list[tuple[int, ...]]:
    """Output shape (without batch) of every layer of ``seq`` for ``example_inputs[:1]`` (normalised space)."""
    shapes: list[tuple[int, ...]] = []
    x = example_inputs[:1].float()
    with torch.no_grad():
        for layer in seq:
            x = layer(x)
            shapes.append(tuple(x.shape[1:]))
    return shapes


def groups(model: nn.Module, example_inputs: torch.Tensor) -> list[Group]:
    """Every prunable producer/consumer pair of ``model`` (all parametric layers but the last)."""
    seq = sequential_of(model)
    shapes = trace_shapes(seq, example_inputs)
    idx = [i for i, m in enumerate(seq) if isinstance(m, (nn.Conv2d, nn.Linear))]
    out: list[Group] = []
    for a, b in zip(idx[:-1], idx[1:]):
        between = list(seq)[a + 1: b]
        spatial = 0
        if any(isinstance(m, nn.Flatten) for m in between):
            if not isinstance(seq[a], nn.Conv2d):
                raise UnsupportedLayerError(f"Flatten after Linear layer {a} cannot be pruned structurally")
            flat_at = next(k for k in range(a + 1, b) if isinstance(seq[k], nn.Flatten))
            c, h, w = shapes[flat_at - 1]
            spatial = h * w
        elif isinstance(seq[a], nn.Linear) and isinstance(seq[b], nn.Conv2d):
            raise UnsupportedLayerError(f"Linear layer {a} feeds Conv2d layer {b}: no channel mapping")
        out.append(Group(a, b, spatial))
    return out


def param_layer(seq: nn.Sequential, index: int) -> nn.Conv2d | nn.Linear:
    """Layer ``index`` of ``seq``, which must be a Conv2d or Linear (a group's producer or consumer)."""
    layer = seq[index]
    if not isinstance(layer, (nn.Conv2d, nn.Linear)):
        raise UnsupportedLayerError(f"layer {index} ({type(layer).__name__}) is not a Conv2d/Linear layer")
    return layer


def _pair(value: tuple[int, ...]) -> tuple[int, int]:
    """A Conv2d's ``kernel_size``/``stride``/``padding`` tuple, always of length 2 (torch stores them so)."""
    return cast(tuple[int, int], value)


def _new_like(layer: nn.Conv2d | nn.Linear, out_units: int | None = None,
              in_units: int | None = None) -> nn.Conv2d | nn.Linear:
    """A fresh Conv2d/Linear like ``layer`` with other output/input widths."""
    if isinstance(layer, nn.Conv2d):
        padding = layer.padding if isinstance(layer.padding, str) else _pair(layer.padding)
        return nn.Conv2d(in_units or layer.in_channels, out_units or layer.out_channels, _pair(layer.kernel_size),
                         _pair(layer.stride), padding, bias=layer.bias is not None)
    return nn.Linear(in_units or layer.in_features, out_units or layer.out_features, bias=layer.bias is not None)


def remove_units(seq: nn.Sequential, group: Group, keep: torch.Tensor) -> None:
    """Physically keep only output units ``keep`` (sorted 1-D long) of ``group.producer`` in place of
    ``seq``, slicing the consumer's inputs to match. Shapes: producer weight ``(U, ...)`` -> ``(len(keep), ...)``."""
    prod, cons = param_layer(seq, group.producer), param_layer(seq, group.consumer)
    cols = group.consumer_index(keep)
    new_p = _new_like(prod, out_units=int(keep.numel()))
    new_c = _new_like(cons, in_units=int(cols.numel()))
    with torch.no_grad():
        new_p.weight.copy_(prod.weight[keep])
        if prod.bias is not None and new_p.bias is not None:  # _new_like gives new_p a bias iff prod has one
            new_p.bias.copy_(prod.bias[keep])
        new_c.weight.copy_(cons.weight[:, cols])
        if cons.bias is not None and new_c.bias is not None:
            new_c.bias.copy_(cons.bias)
    seq[group.producer], seq[group.consumer] = new_p, new_c


def refresh_architecture(model: nn.Module) -> None:
    """Update the architecture record's widths after surgery so :func:`fortify.models.save` still works.

    Registry architectures expose their widths as ``channels`` (conv outputs) and ``hidden``
    (hidden Linear outputs); the record is dropped if the layer pattern no longer fits.
    """
    seq = sequential_of(model)
    rec = getattr(seq, ARCH_ATTR, None)
    if not isinstance(rec, dict):
        return
    convs = [m.out_channels for m in seq if isinstance(m, nn.Conv2d)]
    lins = [m.out_features for m in seq if isinstance(m, nn.Linear)][:-1]
    args = dict(rec.get("args", {}))
    from fortify.models import MODELS
    import inspect

    params = inspect.signature(MODELS.get(rec["name"])).parameters
    if "channels" in params:
        args["channels"] = convs
    if "hidden" in params:
        default = params["hidden"].default
        args["hidden"] = lins[0] if isinstance(default, int) and len(lins) == 1 else lins
    rec = {**rec, "args": args}
    try:
        from fortify.models import create

        with torch.device("meta"):
            ref = create(rec["name"], in_shape=tuple(rec["in_shape"]), num_classes=rec["num_classes"], **args)
        same = [tuple(p.shape) for p in ref.parameters()] == [tuple(p.shape) for p in seq.parameters()]
    except Exception:  # noqa: BLE001 - the record no longer describes the model
        same = False
    if same:
        setattr(seq, ARCH_ATTR, rec)
    else:
        delattr(seq, ARCH_ATTR)


__all__ = ["Group", "groups", "refresh_architecture", "remove_units", "trace_shapes"]
