"""Per-sample attack losses on logits ``(B, C)``; every function returns ``(B,)`` to be maximised."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def ce_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the true class (untargeted: maximise)."""
    return F.cross_entropy(logits, y, reduction="none")


def margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``max_{j != y} z_j - z_y``: positive exactly when the point is misclassified."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.clone()
    other.scatter_(1, y[:, None], float("-inf"))
    return other.amax(dim=1) - true


def targeted_margin_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``z_t - max_{j != t} z_j``: positive exactly when the point is classified as ``target``."""
    return -margin_loss(logits, target)
