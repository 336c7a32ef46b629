"""Steepest-ascent directions per norm: the unit-norm ``d`` maximising ``<g, d>``."""
from __future__ import annotations

import torch


def steepest_ascent(g: torch.Tensor, norm: str, l1_sparsity: float | None = None) -> torch.Tensor:
    """Unit steepest-ascent direction of gradient ``g (B, ...)`` for ``norm``.

    linf: ``sign(g)``. l2: ``g / ||g||_2``. l1: the exact maximiser puts all mass on the largest
    coordinate; with ``l1_sparsity = q`` the mass is spread evenly over the top ``q`` fraction of
    coordinates by ``|g|`` (sparse L1 descent, Tramer & Boneh 2019), normalised to unit L1 norm.
    """
    b = g.shape[0]
    flat = g.reshape(b, -1)
    if norm == "linf":
        return g.sign()
    if norm == "l2":
        return (flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)).reshape(g.shape)
    if norm == "l1":
        d = flat.shape[1]
        k = 1 if l1_sparsity is None else max(1, int(round(l1_sparsity * d)))
        idx = flat.abs().topk(k, dim=1).indices
        out = torch.zeros_like(flat)
        out.scatter_(1, idx, flat.gather(1, idx).sign() / k)
        return out.reshape(g.shape)
    raise ValueError(f"unknown norm {norm!r}")
