"""``Normalized``: put per-channel input standardisation inside the model.

Keeping ``(x - mean) / std`` in the model means every other part of fortify (threat models, attacks,
certificates, explanations) works in ``[0, 1]`` pixel space, the convention of RobustBench
(Croce et al. 2021) and of the ``eps`` values reported in the robustness literature.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from fortify.errors import ConfigError


def _as_channel_tensor(values: Sequence[float] | torch.Tensor, what: str) -> torch.Tensor:
    t = torch.as_tensor(values, dtype=torch.float32, device="cpu").detach().clone().reshape(-1)
    if t.numel() == 0 or not bool(torch.isfinite(t).all()):
        raise ConfigError(f"{what} must be a non-empty list of finite numbers, got {values!r}")
    return t


class Normalized(nn.Module):
    """Wrap ``model`` so that ``forward(x) = model((x - mean) / std)``.

    Args:
        model: any module taking normalised ``(N, C, H, W)`` inputs; available as ``.inner``.
        mean, std: ``C`` per-channel values (e.g. ``fortify.data.info(name).mean``); stored as
            buffers of shape ``(1, C, 1, 1)`` so they move with ``.to()`` and are saved.
    Shapes: ``x`` ``(N, C, H, W)`` in [0, 1] -> ``model`` output (usually ``(N, num_classes)``).
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self, model: nn.Module, mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise ConfigError(f"Normalized needs an nn.Module, got {type(model).__name__}")
        m, s = _as_channel_tensor(mean, "mean"), _as_channel_tensor(std, "std")
        if m.numel() != s.numel():
            raise ConfigError(f"mean has {m.numel()} channels but std has {s.numel()}")
        if bool((s <= 0).any()):
            raise ConfigError(f"std must be positive, got {s.tolist()}")
        self.inner = model
        self.register_buffer("mean", m.reshape(1, -1, 1, 1))
        self.register_buffer("std", s.reshape(1, -1, 1, 1))

    @property
    def channels(self) -> int:
        """Number of input channels ``C``."""
        return int(self.mean.shape[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, ...)`` in [0, 1] -> ``inner((x - mean) / std)``, statistics over axis 1.

        Images ``(N, C, H, W)`` use the stored ``(1, C, 1, 1)`` buffers as they are; signals
        ``(N, C, L)`` and tables ``(N, F)`` (one "channel" per feature) use them reshaped."""
        if x.dim() == 4:
            return self.inner((x - self.mean) / self.std)
        shape = (1, self.channels) + (1,) * max(x.dim() - 2, 0)
        return self.inner((x - self.mean.reshape(shape)) / self.std.reshape(shape))

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


__all__ = ["Normalized"]
