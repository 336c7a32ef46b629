"""ViM, virtual-logit matching (Wang, Li, Feng & Zhang 2022, "ViM: out-of-distribution with virtual-logit
matching").

With the head ``z = W h + b``, the origin ``o = -pinv(W) b``; the principal subspace is spanned by the top ``dim``
eigenvectors of the (uncentred) covariance of ``h - o`` over the training data; the residual ``r(x)`` is the
projection of ``h - o`` onto its orthogonal complement. The virtual logit is ``alpha ||r(x)||`` with ``alpha =
mean max_k z_k / mean ||r||`` over the training data; the score is the log-probability of the virtual class,
``alpha ||r|| - logsumexp(z, alpha ||r||)`` (monotone in the paper's softmax probability). ``dim`` defaults to the
paper's rule: 1000 if ``d >= 2048``, 512 if ``d >= 768``, else ``d // 2``, capped at the numerical rank of the
training features minus one (dead ReLU units would otherwise leave a zero residual everywhere).
Shapes ``x (N, *sample) -> (N,)``. Cost: fit one forward pass and a ``d x d`` eigendecomposition; score one
forward pass plus ``O(d^2)`` per row.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fortify.audit.detect._features import head
from fortify.audit.detect.base import DEFAULT_BATCH_SIZE, DETECTORS, Detector, batched_features
from fortify.audit.detect.knn import penultimate
from fortify.errors import ConfigError, UnsupportedLayerError


def default_dim(d: int) -> int:
    return 1000 if d >= 2048 else 512 if d >= 768 else max(1, d // 2)


@DETECTORS.register("vim", help="virtual logit from the residual of the principal subspace (Wang et al. 2022)")
class ViM(Detector):
    """Log-probability of the virtual class ``alpha ||residual||`` next to the logits."""

    def __init__(self, dim: int | None = None, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        super().__init__(batch_size)
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim < 1):
            raise ConfigError(f"dim must be a positive integer or None, got {dim!r}")
        self.dim = dim

    def _fit(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
        lin = head(model, x)
        h, z = batched_features(lambda b: penultimate(model, lin, b), x, self.batch_size)
        h, z = h.double(), z.double()
        d = h.shape[1]
        w = lin.weight.detach().double()
        b = lin.bias.detach().double() if lin.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64, device=w.device)
        origin = -torch.linalg.pinv(w) @ b
        c = h - origin
        vals, vecs = torch.linalg.eigh(c.T @ c / c.shape[0])  # ascending eigenvalues
        rank = int((vals > 1e-6 * vals.max().clamp(min=1e-300)).sum())
        # default: the paper's rule, kept below the features' numerical rank (dead units leave no residual)
        dim = min(default_dim(d), max(1, rank - 1)) if self.dim is None else self.dim
        if dim >= d:
            raise UnsupportedLayerError(f"ViM needs a principal subspace smaller than the feature dimension: dim={dim} "
                                        f">= d={d}")
        ns = vecs[:, : d - dim]  # the complement of the top-dim principal subspace
        res = (c @ ns).norm(dim=1)
        alpha = float(z.max(dim=1).values.mean() / res.mean().clamp(min=1e-12))
        return {"head": lin, "origin": origin.float(), "ns": ns.float(), "alpha": alpha}

    def _score(self, model: nn.Module, state: dict[str, Any], x: torch.Tensor) -> torch.Tensor:
        h, z = penultimate(model, state["head"], x)
        v = state["alpha"] * ((h - state["origin"].to(h.dtype)) @ state["ns"].to(h.dtype)).norm(dim=1)
        # log p(virtual) = v - logsumexp(z, v) = -softplus(logsumexp(z) - v): no cancellation when v dominates
        return -torch.nn.functional.softplus(torch.logsumexp(z, dim=1) - v)
