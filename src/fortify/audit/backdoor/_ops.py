"""Shared helpers of the backdoor package: batched prediction, penultimate activations (forward hooks,
always removed), a small seeded training loop for fine-tuning copies, and layer lookup.

The training loop is the one the mitigations and the clean-label surrogate use on models *they own*
(deep copies): cross-entropy, Adam, fixed minibatch order drawn from a seeded ``torch.Generator``.
"""
from __future__ import annotations

import copy
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from fortify.errors import InputError
from fortify.models.state import eval_mode, frozen, train_mode


def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Logits ``(N, C)`` of ``x (N, ...)`` in eval mode, no gradient, ``batch_size`` rows at a time."""
    with torch.no_grad(), eval_mode(model):
        return torch.cat([model(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)])


def last_module(model: nn.Module, kind: type[nn.Module] | tuple[type[nn.Module], ...]) -> tuple[str, nn.Module]:
    """``(name, module)`` of the last module of ``kind`` in registration order; InputError when none."""
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, kind)]
    if not found:
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise InputError(f"the model has no {names} layer (needed for this analysis)")
    return found[-1]


LAYERS = ("penultimate", "features")


def penultimate(model: nn.Module, x: torch.Tensor, batch_size: int = 512, layer: str = "penultimate") -> torch.Tensor:
    """Activations ``(N, D)`` entering the model's last ``nn.Linear`` (``layer="penultimate"``: the classifier
    head's input, the representation of Chen et al. 2018 and Tran et al. 2018) or its first ``nn.Linear``
    (``"features"``: the flattened convolutional features of a CNN). The hook is always removed."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise InputError("the model has no Linear layer (needed for this analysis)")
    head = linears[-1] if layer == "penultimate" else linears[0]
    feats: list[torch.Tensor] = []

    def grab(_m: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        feats.append(inputs[0].detach().flatten(1))

    handle = head.register_forward_pre_hook(grab)
    try:
        predict_logits(model, x, batch_size)
    finally:
        handle.remove()
    return torch.cat(feats)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of ``x (N, ...)`` classified as ``y (N,)``."""
    if x.shape[0] == 0:
        return float("nan")
    return float((predict_logits(model, x).argmax(1) == y).float().mean())


def fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int = 5, lr: float = 1e-3,
        batch_size: int = 64, seed: int = 0, after_step: Callable[[nn.Module], None] | None = None,
        augment: Callable[[torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]
        | None = None) -> nn.Module:
    """Train ``model`` (owned by the caller: a copy) in place with cross-entropy and Adam.

    ``x (N, ...)``, ``y (N,)``; minibatch order from a generator seeded with ``seed``; ``after_step``
    runs after every optimiser step (e.g. re-applying a pruning mask); ``augment(xb, yb, gen)`` may
    rewrite each minibatch (Neural Cleanse unlearning stamps its trigger there). Returns ``model``.
    Cost: ``epochs * N`` forward/backward rows.
    """
    gen = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    with train_mode(model):
        for _ in range(epochs):
            order = torch.randperm(x.shape[0], generator=gen)
            for i in range(0, x.shape[0], batch_size):
                idx = order[i:i + batch_size]
                xb, yb = x[idx], y[idx]
                if augment is not None:
                    xb, yb = augment(xb, yb, gen)
                loss = F.cross_entropy(model(xb), yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if after_step is not None:
                    with torch.no_grad():
                        after_step(model)
    for p in params:
        p.grad = None
    return model


def owned_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with every parameter trainable (the user's model is never touched)."""
    with frozen(model):
        new = copy.deepcopy(model)
    for p in new.parameters():
        p.requires_grad_(True)
        p.grad = None
    return new


__all__ = ["LAYERS", "accuracy", "fit", "last_module", "owned_copy", "penultimate", "predict_logits"]
