"""Random self-ensemble noise layers (Liu et al. 2018, "Towards robust neural networks via random
self-ensemble", RSE).

* :class:`NoiseLayer` adds ``N(0, std^2)`` noise to its input, in training *and* at inference.
* :func:`add_noise_layers` is a model transform: it returns a deep copy of the model with a noise
  layer in front of every convolution (and optionally every linear layer); the first one gets
  ``init_std`` (0.2 in the paper, on inputs in [0, 1]) and the others ``inner_std`` (0.1). The
  input model is never mutated.
* :class:`SelfEnsemble` averages the softmax of ``n`` noisy forward passes (the RSE prediction) and
  returns its log, so it is a drop-in logits model of shape ``(N, C)``.
* :func:`noise_hooks` installs the same noise temporarily with forward pre-hooks (used by the
  ``rse`` task on a model without noise layers).

Randomness comes from ``NoiseLayer.generator`` when set (the ``rse`` task points every layer at its
call's generator for the duration of the call with :func:`layer_generators`, so resume is exact),
else from torch's global RNG.
"""
from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from fortify.errors import ConfigError


def gaussian_like(x: torch.Tensor, std: float, generator: torch.Generator | None) -> torch.Tensor:
    """``std * N(0, 1)`` shaped like ``x``, drawn on the generator's device then moved to ``x``'s."""
    dev = generator.device if generator is not None else x.device
    return (torch.randn(x.shape, generator=generator, device=dev, dtype=x.dtype) * std).to(x.device)


class NoiseLayer(nn.Module):
    """``x -> x + N(0, std^2)``; shape-preserving, always active (RSE keeps noise at inference)."""

    def __init__(self, std: float) -> None:
        super().__init__()
        if not (isinstance(std, (int, float)) and std >= 0):
            raise ConfigError(f"noise std must be a number >= 0, got {std!r}")
        self.std = float(std)
        self.generator: torch.Generator | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.std == 0:
            return x
        return x + gaussian_like(x, self.std, self.generator)

    def extra_repr(self) -> str:
        return f"std={self.std}"


def _targets(model: nn.Module, linear: bool) -> list[tuple[nn.Module, str, nn.Module]]:
    kinds: tuple[type, ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d) + ((nn.Linear,) if linear else ())
    out = []
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, kinds):
                out.append((parent, name, child))
    return out


def add_noise_layers(model: nn.Module, init_std: float = 0.2, inner_std: float = 0.1,
                     linear: bool = False) -> nn.Module:
    """RSE transform: a deep copy with ``Sequential(NoiseLayer, layer)`` for every conv (and linear)."""
    new = copy.deepcopy(model)
    targets = _targets(new, linear)
    if not targets:
        raise ConfigError("add_noise_layers found no convolution or linear layer to put noise in front of")
    for i, (parent, name, child) in enumerate(targets):
        setattr(parent, name, nn.Sequential(NoiseLayer(init_std if i == 0 else inner_std), child))
    return new


def noise_layers(model: nn.Module) -> list[NoiseLayer]:
    return [m for m in model.modules() if isinstance(m, NoiseLayer)]


@contextmanager
def noise_hooks(model: nn.Module, init_std: float, inner_std: float, generator: torch.Generator | None,
                linear: bool = False) -> Iterator[None]:
    """Temporarily add RSE noise in front of every conv (and linear) layer with pre-hooks."""
    handles = []
    for i, (_, _, layer) in enumerate(_targets(model, linear)):
        std = init_std if i == 0 else inner_std

        def hook(_m: nn.Module, args: tuple, std: float = std) -> tuple:
            return (args[0] + gaussian_like(args[0], std, generator),) + tuple(args[1:])

        handles.append(layer.register_forward_pre_hook(hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def layer_generators(layers: list[NoiseLayer], generator: torch.Generator | None) -> Iterator[None]:
    """Point every NoiseLayer in ``layers`` at ``generator`` inside the block; restore theirs after."""
    saved = [m.generator for m in layers]
    try:
        for m in layers:
            m.generator = generator
        yield
    finally:
        for m, g in zip(layers, saved):
            m.generator = g


class SelfEnsemble(nn.Module):
    """RSE prediction: ``log(mean_k softmax(model(x)))`` over ``n`` noisy passes; ``(N, C)``."""

    def __init__(self, model: nn.Module, n: int = 10) -> None:
        super().__init__()
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"ensemble size n must be an integer >= 1, got {n!r}")
        self.model = model
        self.n = n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.stack([F.softmax(self.model(x), dim=1) for _ in range(self.n)]).mean(dim=0)
        return probs.clamp_min(1e-12).log()


__all__ = ["NoiseLayer", "add_noise_layers", "noise_layers", "noise_hooks", "layer_generators", "SelfEnsemble", "gaussian_like"]
