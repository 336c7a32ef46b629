"""Finding and hooking layers: a named module, the last convolution executed, outputs captured."""
from __future__ import annotations

import difflib
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from fortify.errors import ConfigError, UnsupportedLayerError
from fortify.models.graph import execution_order

CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def named_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name`` (``model.named_modules()``); ConfigError naming close ones."""
    modules = dict(model.named_modules())
    if not isinstance(name, str) or name not in modules or name == "":
        names = [n for n in modules if n]
        close = difflib.get_close_matches(str(name), names, n=3, cutoff=0.5)
        hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
        raise ConfigError(f"layer {name!r} does not exist in {type(model).__name__}{hint}; layers: "
                          f"{', '.join(names[:30])}{' ...' if len(names) > 30 else ''}")
    return modules[name]


def last_conv(model: nn.Module, x: torch.Tensor) -> tuple[str, nn.Module]:
    """``(name, module)`` of the convolution executed last on ``x[:1]`` (forward order, not
    registration order: a residual block's shortcut is registered after the convs it skips).
    UnsupportedLayerError when the model runs no ``Conv1d/2d/3d``. Cost: one forward of one row."""
    order = execution_order(model, x, [(n, m) for n, m in model.named_modules() if isinstance(m, CONV)])
    if not order:
        raise UnsupportedLayerError(f"{type(model).__name__} has no convolution layer: Grad-CAM needs one "
                                    "(use saliency or integrated-gradients for fully-connected models)")
    return order[-1], dict(model.named_modules())[order[-1]]


@contextmanager
def capture_outputs(modules: list[nn.Module]) -> Iterator[list[list[torch.Tensor]]]:
    """Record every output of each module (one list per module) while the block runs; hooks removed
    afterwards."""
    seen: list[list[torch.Tensor]] = [[] for _ in modules]
    handles = [m.register_forward_hook(lambda mod, i, o, k=k: seen[k].append(o)) for k, m in enumerate(modules)]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


__all__ = ["CONV", "capture_outputs", "last_conv", "named_layer"]
