"""WaNet (Nguyen & Tran 2021, "WaNet - imperceptible warping-based backdoor attack", ICLR): the trigger is
a smooth, fixed warp of the image, ``x' = grid_sample(x, identity + s * U(P) / H)``.

The warping field: ``P`` is a ``(2, k, k)`` random field in ``[-1, 1]`` normalised by its mean absolute
value, upsampled bicubically to ``H x W`` (``U``), scaled by ``s / H`` and added to the identity grid, then
clamped to ``[-1, 1]`` (the paper's Eq. 5-6; ``k = 4``, ``s = 0.5`` on MNIST). ``noise=True`` is the paper's
noise mode: ``cross_ratio`` times as many further rows get the same warp plus a random per-image warp
``U(-1, 1) / H`` and keep their true label, so the network learns the exact warp, not any warp.
``k`` larger than the image is an :class:`InputError`.
Shapes: ``(N, C, H, W) -> (N, C, H, W)``; cost one bilinear resampling per image.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fortify.audit.backdoor.base import POISONS, Mode, Poison
from fortify.errors import ConfigError, InputError


@POISONS.register("wanet", help="WaNet warping trigger via grid_sample (Nguyen & Tran 2021), with noise mode")
class WaNet(Poison):
    """Warp every poisoned image with the fixed field (see the module docstring)."""

    def __init__(self, rate: float = 0.1, target: int = 0, mode: Mode = "all-to-one", seed: int = 0,
                 k: int = 4, s: float = 0.5, noise: bool = True, cross_ratio: float = 2.0) -> None:
        super().__init__(rate, target, mode, seed)
        if isinstance(k, bool) or not isinstance(k, int) or k < 2:
            raise ConfigError(f"k must be an integer >= 2 (control grid size), got {k!r}")
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not s > 0:
            raise ConfigError(f"s must be a positive number (warp strength), got {s!r}")
        if isinstance(cross_ratio, bool) or not isinstance(cross_ratio, (int, float)) or cross_ratio < 0:
            raise ConfigError(f"cross_ratio must be a number >= 0, got {cross_ratio!r}")
        if not isinstance(noise, bool):
            raise ConfigError(f"noise must be true or false, got {noise!r}")
        self.k, self.s, self.noise, self.cross_ratio = k, float(s), noise, float(cross_ratio)
        self._grids: dict[tuple[int, int], torch.Tensor] = {}

    def grid(self, h: int, w: int) -> torch.Tensor:
        """The ``(1, H, W, 2)`` sampling grid of the trigger for ``h x w`` images (fixed by ``seed``)."""
        if (h, w) not in self._grids:
            gen = torch.Generator().manual_seed(20_011 + self.seed)
            field = torch.rand(1, 2, self.k, self.k, generator=gen) * 2 - 1
            field = field / field.abs().mean()
            up = F.interpolate(field, size=(h, w), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
            ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
            identity = torch.stack((xs, ys), dim=-1).unsqueeze(0)
            self._grids[(h, w)] = (identity + self.s * up / h).clamp(-1, 1)
        return self._grids[(h, w)]

    def check_image(self, x: torch.Tensor) -> None:
        super().check_image(x)
        if self.k > min(x.shape[2], x.shape[3]):
            raise InputError(f"the {self.k}x{self.k} warp control grid is larger than the {x.shape[2]}x{x.shape[3]} "
                             "image (trigger larger than the image)")

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        g = self.grid(x.shape[2], x.shape[3]).to(x).expand(x.shape[0], -1, -1, -1)
        return F.grid_sample(x, g, align_corners=True)

    def _noise(self, x: torch.Tensor, y: torch.Tensor, pool: torch.Tensor,
               gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Noise mode: ``round(cross_ratio * rate * N)`` rows of ``pool`` warped by the trigger plus a random
        warp, labels kept."""
        if not self.noise or self.rate == 0:
            return super()._noise(x, y, pool, gen)
        q = min(pool.numel(), int(round(self.cross_ratio * self.rate * x.shape[0])))
        rows = pool[torch.randperm(pool.numel(), generator=gen)[:q]]
        h, w = x.shape[2], x.shape[3]
        jitter = (torch.rand(q, h, w, 2, generator=gen) * 2 - 1) / h
        g = (self.grid(h, w).to(x) + jitter.to(x)).clamp(-1, 1)
        return rows, F.grid_sample(x[rows], g, align_corners=True)
