"""The corruption registry and the tensor helpers the corruption families share.

A :class:`Corruption` is a function ``apply(x, level, rng, gen) -> x'`` on a batch ``(N, C, H, W)`` in
[0, 1], five parameter ``levels`` (severities 1..5, milder to harsher) and the ``default`` severity that
MNIST-C (Mu & Gilmer 2019, arXiv:1906.02337) used for its fixed dataset. Randomness comes only from the
numpy ``rng`` (per-image parameters: angles, signs, line positions, fractals) and the CPU torch ``gen``
(per-pixel noise), both seeded by the caller, so a call is reproducible from ``(x, name, severity, seed)``.

Helpers (all batched, cost linear in ``N*C*H*W``):

* :func:`warp_affine` -- inverse-map affine warp in pixel coordinates, bilinear, zeros outside (as
  ``skimage.transform.warp(order=1, mode="constant")``).
* :func:`gaussian_blur` -- separable Gaussian, truncated at 4 sigma, edge-replicated borders (as
  ``skimage.filters.gaussian`` with its default ``mode="nearest"``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from fortify.errors import ConfigError, InputError
from fortify.registry import Registry
from fortify.validation import check_images

__all__ = ["CORRUPTIONS", "Corruption", "MNIST_C", "SEVERITIES", "check_severity", "corrupt", "gaussian_blur", "register_corruption",
           "warp_affine"]

#: the valid severities
SEVERITIES = (1, 2, 3, 4, 5)
#: MNIST-C's fifteen corruptions, in the paper's order
MNIST_C = ("shot_noise", "impulse_noise", "glass_blur", "motion_blur", "shear", "scale", "rotate", "brightness",
           "translate", "stripe", "fog", "spatter", "dotted_line", "zigzag", "canny_edges")
#: ``apply(x (N, C, H, W) in [0, 1], level, rng, gen) -> (N, C, H, W)``
Apply = Callable[[torch.Tensor, Any, np.random.Generator, torch.Generator], torch.Tensor]


@dataclass(frozen=True)
class Corruption:
    """One corruption: the batched function, its five severity levels and MNIST-C's fixed severity."""

    apply: Apply
    levels: tuple[Any, ...]
    default: int
    description: str

    def level(self, severity: int) -> Any:
        return self.levels[severity - 1]


CORRUPTIONS: Registry[Corruption] = Registry("corruption")


def register_corruption(name: str, levels: tuple[Any, ...], default: int,
                        description: str) -> Callable[[Apply], Apply]:
    """Decorator: register ``fn`` as corruption ``name`` with five ``levels`` and a default severity."""
    if len(levels) != len(SEVERITIES) or default not in SEVERITIES:
        raise ConfigError(f"corruption {name!r} needs {len(SEVERITIES)} levels and a default in 1..5")

    def wrap(fn: Apply) -> Apply:
        CORRUPTIONS.register(name, Corruption(fn, tuple(levels), default, description), help=description)
        return fn

    return wrap


def check_severity(severity: object, name: str) -> int:
    """ConfigError unless ``severity`` is an int in 1..5."""
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or int(severity) not in SEVERITIES:
        raise ConfigError(f"corruption {name!r}: severity must be an int in 1..5, got {severity!r}")
    return int(severity)


def warp_affine(x: torch.Tensor, matrix: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """Inverse-map affine warp: ``out[p] = x[A_n (p - c) + c + t_n]`` with bilinear interpolation.

    ``x`` ``(N, C, H, W)``; ``matrix`` ``(N, 2, 2)`` and ``offset`` ``(N, 2)`` act on pixel coordinates
    ``p = (col, row)``; ``c = ((W - 1) / 2, (H - 1) / 2)`` is the image centre. Samples outside the image
    read 0. Implemented with ``affine_grid`` / ``grid_sample(align_corners=True)`` after conjugating by
    the pixel-to-normalised scaling ``D = diag(2 / (W - 1), 2 / (H - 1))``.
    """
    n, _, h, w = x.shape
    scale = torch.tensor([2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)], dtype=torch.float64)
    a = matrix.to(torch.float64)
    theta_lin = scale.view(1, 2, 1) * a / scale.view(1, 1, 2)
    theta = torch.cat([theta_lin, (scale * offset.to(torch.float64)).unsqueeze(-1)], dim=2)
    grid = F.affine_grid(theta.to(x.dtype).to(x.device), [n, x.shape[1], h, w], align_corners=True)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def _gauss_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, int(4.0 * sigma + 0.5))
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(N, C, H, W)`` with standard deviation ``sigma`` pixels (edge-replicated)."""
    if sigma <= 0:
        return x
    k = _gauss_kernel(sigma).to(x.dtype).to(x.device)
    r = (len(k) - 1) // 2
    n, c, h, w = x.shape
    flat = x.reshape(n * c, 1, h, w)
    flat = F.conv2d(F.pad(flat, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    flat = F.conv2d(F.pad(flat, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
    return flat.reshape(n, c, h, w)


def random_signs(rng: np.random.Generator, n: int) -> torch.Tensor:
    """``n`` independent signs, -1 or +1 with probability 1/2 each (float64)."""
    return torch.from_numpy(rng.choice([-1.0, 1.0], size=n))


def rotation_matrices(angles: torch.Tensor) -> torch.Tensor:
    """``(N, 2, 2)`` rotation matrices ``[[cos, -sin], [sin, cos]]`` in (col, row) coordinates."""
    cos, sin = torch.cos(angles), torch.sin(angles)
    return torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)


def luminance(x: torch.Tensor) -> torch.Tensor:
    """``(N, 1, H, W)``: the image itself for one channel, ITU-R 601 luma for three, the mean otherwise."""
    if x.shape[1] == 3:
        return (x * torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)).sum(
            1, keepdim=True)
    return x.mean(1, keepdim=True)


def pixel_scale(h: int, w: int) -> float:
    """Lengths written for 28x28 MNIST are multiplied by this on other image sizes."""
    return math.sqrt(h * w) / 28.0


def corrupt(x: torch.Tensor, name: str, severity: int | None = None, *, seed: int = 0) -> torch.Tensor:
    """Corrupt a batch ``x`` ``(N, C, H, W)`` in [0, 1] with corruption ``name`` at ``severity``.

    ``severity`` None means MNIST-C's fixed severity for that corruption (``CORRUPTIONS.get(name).default``);
    otherwise an int in 1..5 (ConfigError if not). Deterministic: the same ``(x, name, severity, seed)`` gives
    the same output (numpy PCG64 and a CPU torch generator seeded with ``seed``; image ``i``'s random draws
    depend on ``i`` and ``N``, so corrupt a whole evaluation set in one call to reproduce it). The output
    has ``x``'s dtype and device, values clipped to [0, 1]; ``x`` is not modified and no gradient flows.
    Raises UnknownNameError (unknown name), ConfigError (severity, seed), InputError (``x`` not a finite
    floating ``(N, C, H, W)`` tensor in [0, 1]).
    """
    spec = CORRUPTIONS.get(name)
    level = spec.level(spec.default if severity is None else check_severity(severity, name))
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be a non-negative int, got {seed!r}")
    x = check_images(x, (0.0, 1.0))
    if x.dim() != 4:
        raise InputError(f"corruptions take images (N, C, H, W), got shape {tuple(x.shape)}")
    rng = np.random.default_rng(int(seed))
    gen = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        out = spec.apply(x.detach(), level, rng, gen)
    return out.to(dtype=x.dtype, device=x.device).clamp(0.0, 1.0)
