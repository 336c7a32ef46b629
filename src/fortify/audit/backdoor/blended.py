"""Blended injection (Chen, Liu, Li, Lu & Song 2017, "Targeted backdoor attacks on deep learning
systems using data poisoning"): the whole image is mixed with a key pattern,
``x' = (1 - alpha) x + alpha p``.

``alpha`` in ``(0, 1]`` (0.2 by default; the paper trains with 0.2 and triggers with 0.2 or more);
``pattern``: ``noise`` (a uniform random image drawn from ``seed``: the paper's random-pattern key) or
an explicit ``(H, W)`` / ``(C, H, W)`` array in [0, 1] the size of the images (a different size is an
:class:`InputError`). Shapes: ``(N, C, H, W) -> (N, C, H, W)``; cost O(N C H W).
"""
from __future__ import annotations

from typing import Any

import torch

from fortify.audit.backdoor.base import POISONS, Mode, Poison, check_pattern, check_unit
from fortify.errors import ConfigError, InputError


@POISONS.register("blended", help="blended key-pattern trigger (Chen et al. 2017): alpha, pattern")
class Blended(Poison):
    """Blend every poisoned image with the key pattern (see the module docstring)."""

    def __init__(self, rate: float = 0.1, target: int = 0, mode: Mode = "all-to-one", seed: int = 0,
                 alpha: float = 0.2, pattern: Any = "noise") -> None:
        super().__init__(rate, target, mode, seed)
        self.alpha = check_unit(alpha, "alpha")
        if isinstance(pattern, str) and pattern != "noise":
            raise ConfigError(f"pattern must be noise or an image-sized array, got {pattern!r}")
        self._given = None if isinstance(pattern, str) else check_pattern(pattern)
        self._cache: dict[tuple[int, int, int], torch.Tensor] = {}

    def pattern(self, c: int, h: int, w: int) -> torch.Tensor:
        """The ``(C|1, H, W)`` key pattern for images of that size (drawn once per size from ``seed``)."""
        if self._given is not None:
            return self._given
        key = (c, h, w)
        if key not in self._cache:
            gen = torch.Generator().manual_seed(10_007 + self.seed)
            self._cache[key] = torch.rand(c, h, w, generator=gen)
        return self._cache[key]

    def check_image(self, x: torch.Tensor) -> None:
        super().check_image(x)
        _, c, h, w = x.shape
        p = self.pattern(c, h, w)
        if tuple(p.shape[1:]) != (h, w) or p.shape[0] not in (1, c):
            raise InputError(f"the blend pattern has shape {tuple(p.shape)}, the images ({c}, {h}, {w})")

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        p = self.pattern(*x.shape[1:]).to(x)
        return (1.0 - self.alpha) * x + self.alpha * p
