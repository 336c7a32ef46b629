"""Gaussian data augmentation for randomized smoothing (Cohen et al. 2019, "Certified adversarial
robustness via randomized smoothing", Sec. 4: train the base classifier under the noise it will be
smoothed with).

Loss: mean over ``samples`` draws of ``CE(f(x + sigma * N(0, I)), y)``; no clipping to the input
box (the smoothed classifier sees unclipped noise too). Shapes: ``x (B, ...)``, ``y (B,)``;
``logits (B * samples, K)`` are those of the noisy inputs, in the order of ``y.repeat(samples)``
(the first ``B`` rows belong to the first draw).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fortify.errors import ConfigError
from fortify.train.tasks.base import Task, TaskOutput
from fortify.train.tasks.registry import TASKS


@TASKS.register("gaussian_noise", help="Gaussian noise augmentation for randomized smoothing (Cohen et al. 2019)")
class GaussianNoise(Task):
    """Args: ``sigma`` > 0 noise level (use the smoothing sigma), ``samples`` >= 1 draws per input."""

    def __init__(self, sigma: float = 0.25, samples: int = 1) -> None:
        super().__init__()
        try:
            self.sigma = float(sigma)
        except (TypeError, ValueError):
            raise ConfigError(f"sigma must be a number > 0, got {sigma!r}") from None
        if not self.sigma > 0:
            raise ConfigError(f"sigma must be > 0, got {sigma!r}")
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise ConfigError(f"samples must be an int >= 1, got {samples!r}")
        self.samples = samples

    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             generator: torch.Generator | None) -> TaskOutput:
        xs = x.repeat((self.samples,) + (1,) * (x.dim() - 1))
        ys = y.repeat(self.samples)
        dev = generator.device if generator is not None else xs.device
        noise = torch.randn(xs.shape, generator=generator, dtype=xs.dtype, device=dev).to(xs.device)
        logits = model(xs + self.sigma * noise)
        return TaskOutput(F.cross_entropy(logits, ys), logits, {"sigma": self.sigma})
