"""Per-sample feasible boxes for attacks that clip coordinates themselves (see ``fortify.threat``).

For a scalar threat the box is the pair of floats ``threat.bounds`` (the code the attacks always
ran). For a per-feature threat it is a pair of tensors shaped like ``x (B, ...)``: the per-feature
bounds, narrowed to ``[x_i, x_i]`` on immutable features, so that a plain ``clamp(lo, hi)`` keeps
them fixed and respects the bounds.
"""
from __future__ import annotations

import torch

from fortify.threat import ThreatModel

Box = tuple[float, float] | tuple[torch.Tensor, torch.Tensor]


def sample_box(threat: ThreatModel, x: torch.Tensor) -> Box:
    """``(lo, hi)``: floats for a scalar threat, else tensors shaped like ``x (B, ...)``."""
    if not threat.per_feature:
        lo, hi = threat.bounds
        return float(lo), float(hi)  # type: ignore[arg-type]
    blo, bhi = threat.box(x)
    lo_t = torch.broadcast_to(torch.as_tensor(blo).to(x), x.shape)
    hi_t = torch.broadcast_to(torch.as_tensor(bhi).to(x), x.shape)
    free = threat.free(x)
    if free is None:
        return lo_t.clone(), hi_t.clone()
    return torch.where(free, lo_t, x), torch.where(free, hi_t, x)


def flat_box(box: Box, b: int) -> Box:
    """A :func:`sample_box` result viewed as ``(B, D)`` rows (floats unchanged)."""
    lo, hi = box
    if isinstance(lo, torch.Tensor) and isinstance(hi, torch.Tensor):
        return lo.reshape(b, -1), hi.reshape(b, -1)
    return box


def rows(box: Box, idx: torch.Tensor) -> Box:
    """The rows ``idx`` of a per-sample box (floats unchanged)."""
    lo, hi = box
    if isinstance(lo, torch.Tensor) and isinstance(hi, torch.Tensor):
        return lo[idx], hi[idx]
    return box


def span(box: Box) -> float:
    """The widest side of the box (a float; the scalar ``hi - lo`` for a scalar threat)."""
    lo, hi = box
    if isinstance(lo, torch.Tensor) and isinstance(hi, torch.Tensor):
        return float((hi - lo).max()) if hi.numel() else 1.0
    return float(hi) - float(lo)


def clamp(x: torch.Tensor, box: Box) -> torch.Tensor:
    """``x.clamp(lo, hi)`` for floats or tensors (typed for both)."""
    return x.clamp(box[0], box[1])  # type: ignore[arg-type]
