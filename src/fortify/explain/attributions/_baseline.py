"""Baselines (reference inputs) shared by integrated gradients, DeepLIFT, occlusion and metrics."""
from __future__ import annotations

import torch

from fortify.errors import ConfigError, InputError
from fortify.validation import broadcasts_to


def check_baseline(value: object) -> float | torch.Tensor:
    """A finite number or a finite floating tensor (checked against ``x`` at call time)."""
    if isinstance(value, torch.Tensor):
        if not value.is_floating_point() or not bool(torch.isfinite(value).all()):
            raise ConfigError("baseline must be a finite floating-point tensor")
        return value.detach()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not torch.isfinite(torch.tensor(float(value))):
        raise ConfigError(f"baseline must be a finite number or a tensor, got {value!r}")
    return float(value)


def expand_baseline(baseline: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The baseline as a tensor shaped like ``x (N, *sample)``: a number everywhere, or a tensor that
    broadcasts to ``x`` (one example's shape, or ``(N, *sample)``). InputError if it does not fit."""
    if not isinstance(baseline, torch.Tensor):
        return torch.full_like(x, baseline)
    if not broadcasts_to(baseline.shape, x.shape):
        raise InputError(f"baseline of shape {tuple(baseline.shape)} does not broadcast to x of shape {tuple(x.shape)}")
    return torch.broadcast_to(baseline.to(device=x.device, dtype=x.dtype), x.shape).clone()


__all__ = ["check_baseline", "expand_baseline"]
