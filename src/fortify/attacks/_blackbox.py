"""Private helpers shared by the black-box attacks (Square, NES, HopSkipJump, Sign-OPT).

* :class:`QueryBudget` wraps an :class:`~fortify.attacks.base.Oracle` with per-sample query
  bookkeeping: every query row is charged to the sample it belongs to, so an attack can stop a
  sample once it is done or out of budget, without any Python loop over the batch.
* :func:`is_adversarial` is the success criterion on hard labels.
* :func:`lp_norm` / :func:`check_*` small vectorised utilities and typed argument checks.
"""
from __future__ import annotations

import math

import torch

from fortify.attacks.base import Oracle
from fortify.errors import ConfigError


class QueryBudget:
    """Per-sample query accounting on top of an oracle.

    Args:
        oracle: the counting oracle handed to ``Attack._run``.
        n: number of samples ``B`` in the attacked batch.
        budget: queries allowed per sample (inside ``_run``).
        device: device of the per-sample counters.
        max_rows: the largest number of rows sent to the model in one forward pass.

    ``spent`` is ``(B,)`` int64: queries charged to each sample so far.
    """

    def __init__(self, oracle: Oracle, n: int, budget: int, device: torch.device, max_rows: int = 8192) -> None:
        self.oracle = oracle
        self.budget = int(budget)
        self.max_rows = int(max_rows)
        self.spent = torch.zeros(n, dtype=torch.long, device=device)

    def remaining(self) -> torch.Tensor:
        """``(B,)`` queries each sample may still make."""
        return self.budget - self.spent

    def affordable(self, idx: torch.Tensor) -> torch.Tensor:
        """``(R,)`` bool: row ``r`` (charged to sample ``idx[r]``) still fits in that sample's budget,
        counting the earlier rows of the same sample in ``idx``."""
        r = idx.shape[0]
        if r == 0:
            return torch.zeros(0, dtype=torch.bool, device=idx.device)
        srt = torch.sort(idx, stable=True)
        pos = torch.arange(r, device=idx.device)
        start = torch.ones(r, dtype=torch.bool, device=idx.device)
        start[1:] = srt.values[1:] != srt.values[:-1]
        first = torch.where(start, pos, torch.zeros_like(pos)).cummax(dim=0).values
        rank = torch.empty_like(pos)
        rank[srt.indices] = pos - first
        return rank < self.remaining()[idx]

    def logits(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Logits ``(R, C)`` of rows ``x (R, ...)``; row ``r`` is charged to sample ``idx[r]``."""
        if x.shape[0] == 0:
            return x.new_zeros((0, self.oracle.num_classes))
        self.spent.index_add_(0, idx, torch.ones_like(idx))
        if x.shape[0] <= self.max_rows:
            return self.oracle.logits(x)
        return torch.cat([self.oracle.logits(c) for c in x.split(self.max_rows)])

    def predict(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Hard labels ``(R,)`` of rows ``x (R, ...)`` charged to samples ``idx (R,)``."""
        if x.shape[0] == 0:
            return torch.zeros(0, dtype=torch.long, device=x.device)
        return self.logits(x, idx).argmax(dim=1)


def is_adversarial(pred: torch.Tensor, y: torch.Tensor, targeted: torch.Tensor | None) -> torch.Tensor:
    """``(R,)`` bool: ``pred != y`` (untargeted) or ``pred == targeted`` (targeted)."""
    return pred == targeted if targeted is not None else pred != y


def flat(t: torch.Tensor) -> torch.Tensor:
    """``(B, ...) -> (B, D)``; also for an empty batch (``B = 0``), where ``reshape(0, -1)`` is ambiguous."""
    return t.reshape(t.shape[0], math.prod(t.shape[1:]))


def view_b(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a per-sample ``(B,)`` tensor to broadcast against ``like (B, ...)``."""
    return v.reshape((-1,) + (1,) * (like.dim() - 1))


def lp_norm(t: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-sample ``linf`` or ``l2`` norm of ``t (B, ...)``; shape ``(B,)``."""
    f = flat(t)
    if norm == "linf":
        return f.abs().amax(dim=1)
    return f.norm(dim=1)


def check_positive_int(name: str, value: object, minimum: int = 1) -> int:
    """Return ``int(value)`` or raise :class:`ConfigError` if it is not an integer ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_positive_float(name: str, value: object, *, allow_zero: bool = False) -> float:
    """Return ``float(value)`` or raise :class:`ConfigError` if it is not a finite positive number."""
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {value!r}") from None
    if not (v == v and abs(v) != float("inf")) or v < 0 or (v == 0 and not allow_zero):
        raise ConfigError(f"{name} must be a finite number {'>=' if allow_zero else '>'} 0, got {value!r}")
    return v


def peer_starts(q: QueryBudget, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Targeted starting points from the batch itself: for sample ``i`` the first peer ``x_j``
    classified as ``target_i`` (one query per sample). Returns ``(x_start (B, ...), found (B,))``;
    ``x_start`` is ``x`` where nothing was found."""
    b = x.shape[0]
    if b < 2:
        return x.clone(), torch.zeros(b, dtype=torch.bool, device=x.device)
    pred = q.predict(x, torch.arange(b, device=x.device))
    match = pred[None, :] == target[:, None]
    found = match.any(dim=1)
    start = x.clone()
    start[found] = x[match.to(torch.int8).argmax(dim=1)[found]]
    return start, found
