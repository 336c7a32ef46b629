"""Difference-of-logits-ratio losses (Croce & Hein 2020, "Reliable evaluation of adversarial
robustness with an ensemble of diverse parameter-free attacks", Sec. 4).

Every function maps logits ``(B, C)`` (and labels ``(B,)``) to a per-sample loss ``(B,)`` to be
*maximised*. ``pi_k`` denotes the index of the k-th largest logit. The losses are invariant to
shifting and (positively) rescaling the logits. For fewer than 3 (4) classes the missing order
statistics are replaced by the smallest logit; with 2 classes DLR is constant and useless.
"""
from __future__ import annotations

import torch


def _sorted_desc(logits: torch.Tensor) -> torch.Tensor:
    return logits.sort(dim=1, descending=True).values


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Untargeted DLR: ``-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3)``; ``(B, C), (B,) -> (B,)``."""
    zs = _sorted_desc(logits)
    c = logits.shape[1]
    zy = logits.gather(1, y[:, None]).squeeze(1)
    top_is_y = logits.argmax(dim=1) == y
    other = torch.where(top_is_y, zs[:, 1], zs[:, 0])
    denom = zs[:, 0] - zs[:, min(2, c - 1)] + 1e-12
    return -(zy - other) / denom


def dlr_targeted_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Targeted DLR: ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)``; ``(B, C), (B,), (B,) -> (B,)``."""
    zs = _sorted_desc(logits)
    c = logits.shape[1]
    zy = logits.gather(1, y[:, None]).squeeze(1)
    zt = logits.gather(1, target[:, None]).squeeze(1)
    denom = zs[:, 0] - 0.5 * (zs[:, min(2, c - 1)] + zs[:, min(3, c - 1)]) + 1e-12
    return -(zy - zt) / denom


def strongest_other(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Index ``argmax_{j != t} z_j`` per sample ``(B,)``: the class a targeted attack must beat."""
    masked = logits.clone()
    masked.scatter_(1, target[:, None], float("-inf"))
    return masked.argmax(dim=1)
