"""Features for the detectors, taken by forward hooks that are always removed.

* :func:`head` finds the classifier head: the ``nn.Linear`` executed last on one row (forward order), whose input
  is the *penultimate feature* ``h (N, d)`` and whose output must be the logits (``W h + b``), checked on that row;
  otherwise :class:`UnsupportedLayerError` (ReAct, ViM, KNN and Mahalanobis need it).
* :func:`capture` runs the model once and returns the inputs/outputs of chosen modules (hooks removed in a
  ``finally``); :func:`replaced_input` runs the model with the head's input replaced (ReAct's clipping).
* :func:`pooled` flattens a feature map ``(N, C, *spatial)`` to ``(N, C)`` by the spatial mean (Lee et al. 2018).

The model is run by the caller inside :func:`fortify.models.state.frozen`; nothing here changes a flag.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import nn

from fortify.errors import ConfigError, UnsupportedLayerError
from fortify.models.graph import execution_order
from fortify.validation import forward_checked

ACTIVATIONS = (nn.ReLU, nn.LeakyReLU, nn.GELU, nn.ELU, nn.SiLU, nn.Tanh, nn.Sigmoid)


def executed(model: nn.Module, x: torch.Tensor, kinds: tuple[type, ...]) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of the modules of ``kinds`` in the order one forward pass of ``x[:1]`` runs them
    (each once, at its first run; :func:`fortify.models.graph.execution_order`). Cost: one forward of one row."""
    mods: dict[str, nn.Module] = {n: m for n, m in model.named_modules()
                                  if n and isinstance(m, kinds) and isinstance(m, nn.Module)}
    return [(n, mods[n]) for n in dict.fromkeys(execution_order(model, x, list(mods.items())))]


def head(model: nn.Module, x: torch.Tensor) -> nn.Linear:
    """The last executed ``nn.Linear`` whose output is the model's logits (checked on ``x[:1]``)."""
    linears = executed(model, x, (nn.Linear,))
    if not linears:
        raise UnsupportedLayerError(f"{type(model).__name__} has no nn.Linear head: this detector needs the "
                                    "penultimate features (the input of the last linear layer)")
    lin = linears[-1][1]
    assert isinstance(lin, nn.Linear)
    with torch.no_grad(), capture(model, {"head": lin}) as seen:
        logits = forward_checked(model, x[:1])
    out = seen["head"][1]
    if out.shape != logits.shape or not torch.allclose(out, logits, atol=1e-5, rtol=1e-4):
        raise UnsupportedLayerError(f"the last linear layer of {type(model).__name__} ({linears[-1][0]}) does not "
                                    "output the logits (something runs after it): this detector needs logits = "
                                    "W h + b of a penultimate feature h")
    return lin


@contextmanager
def capture(model: nn.Module, modules: dict[str, nn.Module]) -> Iterator[dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """While the block runs, ``seen[name] = (input, output)`` of each module's latest call (input: the first
    positional argument). Hooks removed on exit, also when the block raises."""
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(name: str) -> Callable[..., None]:
        def fn(mod: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            seen[name] = (inputs[0], output)
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in modules.items()]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


@contextmanager
def replaced_input(module: nn.Module, fn: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """While the block runs, ``module`` receives ``fn(input)`` instead of its input (a forward pre-hook, removed
    on exit)."""
    handle = module.register_forward_pre_hook(lambda mod, inputs: (fn(inputs[0]), *inputs[1:]))
    try:
        yield
    finally:
        handle.remove()


def pooled(t: torch.Tensor) -> torch.Tensor:
    """``(N, C, *spatial) -> (N, C)`` by the spatial mean; ``(N, d)`` unchanged; other ranks flattened."""
    if t.dim() == 2:
        return t
    return t.flatten(2).mean(dim=2) if t.dim() > 2 else t.reshape(t.shape[0], -1)


def feature_layers(model: nn.Module, x: torch.Tensor, count: int) -> dict[str, nn.Module]:
    """The last ``count`` activation modules in forward order (ReLU, GELU, ...) plus nothing else; the
    penultimate feature is taken separately from :func:`head`. ``count = 0`` gives none."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ConfigError(f"layers must be an integer >= 0 (earlier activation layers in the ensemble), got {count!r}")
    acts = executed(model, x, ACTIVATIONS)
    return dict(acts[-count - 1:-1]) if count and len(acts) > 1 else {}


__all__ = ["capture", "executed", "feature_layers", "head", "pooled", "replaced_input"]
