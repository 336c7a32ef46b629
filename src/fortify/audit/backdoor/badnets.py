"""BadNets (Gu, Dolan-Gavitt & Garg 2017, "BadNets: identifying vulnerabilities in the machine learning
model supply chain"): a small patch stamped on the image.

``x'[:, :, r:r+s, c:c+s] = pattern`` (every channel, or per channel for a ``(C, s, s)`` pattern);
the rest of the image is unchanged. ``size``: the patch side in pixels; ``position``: a corner
(``bottom-right`` default, ``bottom-left``, ``top-right``, ``top-left``) or ``[row, col]`` of its top-left
pixel; ``margin``: pixels between a corner patch and the border; ``pattern``: ``checker`` (alternating
1/0, the paper's MNIST pattern family), ``white`` (all ones) or an explicit ``(s, s)`` / ``(C, s, s)`` array
in [0, 1]. A patch that does not fit the image is an :class:`InputError`.
Shapes: ``(N, C, H, W) -> (N, C, H, W)``; cost O(N s^2).
"""
from __future__ import annotations

from typing import Any

import torch

from fortify.audit.backdoor.base import POISONS, Mode, Poison, check_pattern
from fortify.errors import ConfigError, InputError

CORNERS = ("bottom-right", "bottom-left", "top-right", "top-left")


def checker(size: int) -> torch.Tensor:
    """``(1, size, size)`` alternating 1/0 pattern with ones on the corners."""
    i = torch.arange(size)
    return ((i[:, None] + i[None, :]) % 2 == 0).to(torch.float32).unsqueeze(0)


@POISONS.register("badnets", help="BadNets patch trigger (Gu et al. 2017): size, position, pattern")
class BadNets(Poison):
    """Stamp a ``size x size`` patch (see the module docstring)."""

    def __init__(self, rate: float = 0.1, target: int = 0, mode: Mode = "all-to-one", seed: int = 0,
                 size: int = 3, position: str | list[int] = "bottom-right", pattern: Any = "checker",
                 margin: int = 1) -> None:
        super().__init__(rate, target, mode, seed)
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ConfigError(f"size must be a positive integer (patch side in pixels), got {size!r}")
        if isinstance(margin, bool) or not isinstance(margin, int) or margin < 0:
            raise ConfigError(f"margin must be an integer >= 0, got {margin!r}")
        if isinstance(position, str):
            if position not in CORNERS:
                raise ConfigError(f"position must be one of {', '.join(CORNERS)} or [row, col], got {position!r}")
        elif (not isinstance(position, (list, tuple)) or len(position) != 2
              or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in position)):
            raise ConfigError(f"position must be a corner name or [row, col] of non-negative ints, got {position!r}")
        if isinstance(pattern, str):
            if pattern not in ("checker", "white"):
                raise ConfigError(f"pattern must be checker, white or an array, got {pattern!r}")
            pat = checker(size) if pattern == "checker" else torch.ones(1, size, size)
        else:
            p = check_pattern(pattern)
            assert p is not None
            if tuple(p.shape[1:]) != (size, size):
                raise ConfigError(f"pattern has shape {tuple(p.shape[1:])}, expected ({size}, {size}) for size={size}")
            pat = p
        self.size, self.position, self.margin = size, position, margin
        self._pattern = pat

    def origin(self, h: int, w: int) -> tuple[int, int]:
        """Top-left ``(row, col)`` of the patch in an ``h x w`` image."""
        s, m = self.size, self.margin
        if isinstance(self.position, str):
            r = h - s - m if self.position.startswith("bottom") else m
            c = w - s - m if self.position.endswith("right") else m
            return r, c
        return int(self.position[0]), int(self.position[1])

    def check_image(self, x: torch.Tensor) -> None:
        """InputError when the patch (at its position) does not fit ``(C, H, W)`` or its channels differ."""
        super().check_image(x)
        _, c, h, w = x.shape
        r, col = self.origin(h, w)
        if self.size > min(h, w) or r < 0 or col < 0 or r + self.size > h or col + self.size > w:
            raise InputError(f"the {self.size}x{self.size} trigger at {self.position} does not fit a {h}x{w} image "
                             "(trigger larger than the image)")
        if self._pattern.shape[0] not in (1, c):
            raise InputError(f"the pattern has {self._pattern.shape[0]} channels, the images {c}")

    def mask(self, shape: tuple[int, ...]) -> torch.Tensor:
        """``(1, 1, H, W)`` 0/1 mask of the patch for images of ``shape`` ``(N, C, H, W)``."""
        h, w = shape[-2], shape[-1]
        r, c = self.origin(h, w)
        m = torch.zeros(1, 1, h, w)
        m[..., r:r + self.size, c:c + self.size] = 1.0
        return m

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        r, c = self.origin(x.shape[2], x.shape[3])
        out[:, :, r:r + self.size, c:c + self.size] = self._pattern.to(x).expand(x.shape[1], -1, -1)
        return out
