"""Occlusion (Zeiler & Fergus 2014, "Visualizing and understanding convolutional networks").

A window slides over the input; each position replaces the covered features by ``baseline`` and
records the drop of the target logit ``f_t(x) - f_t(x_occluded)``; a feature's attribution is the
mean drop over the windows that cover it. Positions per dimension: ``ceil((size - window) / stride)
+ 1`` starting at 0, the last window clipped at the border, so every feature is covered (Captum's
``Occlusion`` places them the same way).

Windows: for images ``(C, H, W)`` and signals ``(C, L)`` the window spans every channel and
``window`` positions along each spatial dimension (default 3); for tables ``(F,)`` it spans
``window`` consecutive features (default 1: per-feature ablation). ``window`` / ``stride`` may be
an int or one int per spatial dimension. Shapes: ``x (N, *sample) -> (N, *sample)``.
Cost: ``N x positions`` forward passes without gradients (chunked by ``batch_size``).
"""
from __future__ import annotations

import itertools
import math

import torch
from torch import nn

from fortify.errors import ConfigError, InputError
from fortify.explain.attributions._baseline import check_baseline, expand_baseline
from fortify.explain.base import ATTRIBUTIONS, DEFAULT_BATCH_SIZE, Attribution
from fortify.explain.ops import chunks, select, target_scores
from fortify.validation import forward_checked


def _sizes(value: int | tuple[int, ...] | None, dims: int, default: int, name: str) -> tuple[int, ...]:
    if value is None:
        return (default,) * dims
    vals = (value,) * dims if isinstance(value, int) else tuple(value)
    if len(vals) != dims or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in vals):
        raise ConfigError(f"occlusion {name} must be a positive int or {dims} positive ints, got {value!r}")
    return vals


def window_masks(sample: tuple[int, ...], window: tuple[int, ...], stride: tuple[int, ...]) -> torch.Tensor:
    """Bool masks ``(P, *sample)``, one per window position (channels spanned whole when
    ``len(window) == len(sample) - 1``)."""
    spatial = sample[len(sample) - len(window):]
    if any(w > s for w, s in zip(window, spatial)):
        raise InputError(f"occlusion window {window} is larger than the input's {spatial}")
    starts = [range(0, (math.ceil((s - w) / st) + 1) * st, st) for s, w, st in zip(spatial, window, stride)]
    masks = []
    for pos in itertools.product(*starts):
        m = torch.zeros(sample, dtype=torch.bool)
        idx = (slice(None),) * (len(sample) - len(window)) + tuple(slice(p, p + w) for p, w in zip(pos, window))
        m[idx] = True
        masks.append(m)
    return torch.stack(masks)


@ATTRIBUTIONS.register("occlusion", help="drop of the target logit when a sliding window is occluded (Zeiler & Fergus 2014)")
class Occlusion(Attribution):
    """Sliding-window occlusion with a constant or tensor ``baseline`` (default 0)."""

    def __init__(self, window: int | tuple[int, ...] | None = None, stride: int | tuple[int, ...] | None = None,
                 baseline: float | torch.Tensor = 0.0, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        super().__init__(batch_size)
        self.window, self.stride = window, stride
        _sizes(window, 1 if isinstance(window, int) or window is None else len(window), 1, "window")
        _sizes(stride, 1 if isinstance(stride, int) or stride is None else len(stride), 1, "stride")
        self.baseline = check_baseline(baseline)

    def _run(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        sample = tuple(x.shape[1:])
        dims = 1 if len(sample) == 1 else len(sample) - 1
        window = _sizes(self.window, dims, 1 if len(sample) == 1 else 3, "window")
        stride = _sizes(self.stride, dims, 1, "stride")
        masks = window_masks(sample, window, stride).to(x.device)
        n, p = x.shape[0], masks.shape[0]
        base = expand_baseline(self.baseline, x)
        clean = target_scores(model, x, target, self.batch_size)
        drops = []
        with torch.no_grad():
            for s in chunks(n * p, self.batch_size):
                rows = torch.arange(s.start, s.stop, device=x.device)
                i, m = rows % n, masks[rows // n]
                occluded = torch.where(m, base[i], x[i])
                drops.append(clean[i] - select(forward_checked(model, occluded), target[i]))
        drop = torch.cat(drops).reshape(p, n)
        mf = masks.to(x.dtype)
        total = torch.einsum("pn,p...->n...", drop, mf)
        count = mf.sum(dim=0)
        return torch.where(count > 0, total / count.clamp_min(1), torch.zeros_like(total))
