"""Input validation shared by every pillar: one place that turns bad tensors into InputError."""
from __future__ import annotations

import torch

from fortify.errors import InputError


def check_images(x: object, bounds: tuple[float, float] = (0.0, 1.0), *, name: str = "x") -> torch.Tensor:
    """Validate a batch of inputs: a floating tensor ``(N, ...)`` with N >= 1, finite, inside ``bounds``."""
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise InputError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() < 2:
        raise InputError(f"{name} must be batched with shape (N, ...), got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise InputError(f"{name} is an empty batch")
    if not bool(torch.isfinite(x).all()):
        raise InputError(f"{name} contains NaN or inf values")
    lo, hi = bounds
    xmin, xmax = float(x.min()), float(x.max())
    if xmin < lo - 1e-6 or xmax > hi + 1e-6:
        raise InputError(f"{name} values must lie in [{lo:g}, {hi:g}], found [{xmin:.4g}, {xmax:.4g}]")
    return x


def check_labels(y: object, n: int, num_classes: int | None = None, *, name: str = "y") -> torch.Tensor:
    """Validate integer labels of shape ``(n,)`` in ``[0, num_classes)``."""
    if not isinstance(y, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(y).__name__}")
    if y.is_floating_point() or y.dtype == torch.bool or y.is_complex():
        raise InputError(f"{name} must be an integer tensor, got dtype {y.dtype}")
    if y.shape != (n,):
        raise InputError(f"{name} must have shape ({n},), got {tuple(y.shape)}")
    if n and int(y.min()) < 0:
        raise InputError(f"{name} contains negative labels")
    if num_classes is not None and n and int(y.max()) >= num_classes:
        raise InputError(f"{name} contains label {int(y.max())} but the model has {num_classes} classes")
    return y.long()


def check_logits(out: object, n: int) -> torch.Tensor:
    """Validate a model's output: a floating tensor ``(n, C)`` with ``C >= 2``."""
    if not isinstance(out, torch.Tensor):
        raise InputError(f"model must return a tensor of logits, got {type(out).__name__}")
    if out.dim() != 2 or out.shape[0] != n or out.shape[1] < 2:
        raise InputError(f"model must return logits of shape ({n}, C) with C >= 2, got {tuple(out.shape)}")
    return out
