"""Trigger reverse-engineering shared by Neural Cleanse and the data-free scan.

For every class ``k`` at once (batched over classes), find a mask ``m_k (1, H, W)`` in [0, 1] and a pattern
``p_k (C, H, W)`` in [0, 1] such that ``x' = (1 - m_k) x + m_k p_k`` is classified as ``k`` for the
reference inputs, with the smallest ``|m_k|_1`` (Wang et al. 2019, "Neural Cleanse", Eq. 2-3):
``min CE(f(x'), k) + lambda_k |m_k|_1``, Adam on the ``tanh`` reparametrisation, and the paper's
cost schedule per class: ``lambda_k`` grows by ``cost_multiplier`` after ``patience`` checks in a row
with the reversed trigger's attack success >= ``asr_threshold`` and shrinks by ``cost_multiplier^1.5``
after ``patience`` checks below it. The smallest-mask trigger that reached the threshold is kept.

Shapes: ``x (N, C, H, W)``; each step draws ``batch`` rows and runs ``K * batch`` rows through the model.
Cost: ``steps * K * batch`` forward/backward rows, plus ``K * N`` rows for the final check.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ReverseOptions:
    """Optimisation budget of the reverse-engineering (Neural Cleanse's defaults scaled to small models)."""

    steps: int = 300
    batch: int = 32
    lr: float = 0.1
    init_cost: float = 1e-3
    asr_threshold: float = 0.99
    check_every: int = 10
    patience: int = 2
    cost_multiplier: float = 1.5


@dataclass
class ReversedTriggers:
    """Per class ``k``: ``masks (K, 1, H, W)``, ``patterns (K, C, H, W)``, ``norms (K,)`` (``|m_k|_1``) and
    ``success (K,)``: the fraction of reference inputs the reversed trigger sends to ``k``; ``reached (K,)``
    (bool): whether class ``k``'s trigger reached ``asr_threshold`` during the search (otherwise its mask is the
    last iterate, not a minimal trigger, and its norm is no evidence either way)."""

    masks: torch.Tensor
    patterns: torch.Tensor
    norms: torch.Tensor
    success: torch.Tensor
    reached: torch.Tensor

    def stamp(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """``x (N, C, H, W)`` with class ``k``'s reversed trigger applied."""
        m, p = self.masks[k].to(x), self.patterns[k].to(x)
        return (1 - m) * x + m * p


def _blend(x: torch.Tensor, m: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """``(K*B, C, H, W)`` rows ``(1 - m_k) x_b + m_k p_k`` for ``x (B, ...)``, ``m (K, 1, H, W)``, ``p (K, C, H, W)``."""
    out = (1 - m[:, None]) * x[None] + m[:, None] * p[:, None]
    return out.reshape(-1, *x.shape[1:])


def reverse_triggers(model: nn.Module, x: torch.Tensor, classes: int, opts: ReverseOptions,
                     gen: torch.Generator) -> ReversedTriggers:
    """Reverse-engineer one minimal trigger per class on reference inputs ``x`` (module docstring).
    ``model`` must already be frozen (gradients flow to the mask and pattern only)."""
    _, c, h, w = x.shape
    k_all = torch.arange(classes, device=x.device)
    mask_p = (torch.rand(classes, 1, h, w, generator=gen) * 0.2 - 2.0).to(x)  # tanh param: mask ~ 0.02
    pat_p = (torch.rand(classes, c, h, w, generator=gen) * 2 - 1).to(x)
    mask_p.requires_grad_(True)
    pat_p.requires_grad_(True)
    opt = torch.optim.Adam([mask_p, pat_p], lr=opts.lr, betas=(0.5, 0.9))
    cost = torch.full((classes,), opts.init_cost, device=x.device)
    up = torch.zeros(classes, device=x.device)
    down = torch.zeros(classes, device=x.device)
    best_norm = torch.full((classes,), float("inf"), device=x.device)
    best_m = torch.zeros(classes, 1, h, w, device=x.device, dtype=x.dtype)
    best_p = torch.zeros(classes, c, h, w, device=x.device, dtype=x.dtype)
    labels = k_all.repeat_interleave(min(opts.batch, x.shape[0]))
    hits = torch.zeros(classes, device=x.device)
    seen = 0
    with torch.enable_grad():
        for step in range(1, opts.steps + 1):
            idx = torch.randint(0, x.shape[0], (min(opts.batch, x.shape[0]),), generator=gen).to(x.device)
            m = (torch.tanh(mask_p) + 1) / 2
            p = (torch.tanh(pat_p) + 1) / 2
            logits = model(_blend(x[idx], m, p))
            ce = F.cross_entropy(logits, labels, reduction="none").view(classes, -1).mean(1)
            l1 = m.flatten(1).sum(1)
            loss = (ce + cost * l1).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                hits += (logits.argmax(1) == labels).float().view(classes, -1).mean(1)
                seen += 1
                if step % opts.check_every:
                    continue
                asr = hits / seen
                hits.zero_()
                seen = 0
                ok = asr >= opts.asr_threshold
                better = ok & (l1 < best_norm)
                best_norm = torch.where(better, l1, best_norm)
                best_m[better], best_p[better] = m[better].detach(), p[better].detach()
                up = torch.where(ok, up + 1, torch.zeros_like(up))
                down = torch.where(ok, torch.zeros_like(down), down + 1)
                grow, shrink = up >= opts.patience, down >= opts.patience
                cost = torch.where(grow, cost * opts.cost_multiplier, cost)
                cost = torch.where(shrink, cost / opts.cost_multiplier ** 1.5, cost)
                up, down = torch.where(grow, 0, up), torch.where(shrink, 0, down)
    with torch.no_grad():
        m = (torch.tanh(mask_p) + 1) / 2
        p = (torch.tanh(pat_p) + 1) / 2
        never = torch.isinf(best_norm)
        best_m[never], best_p[never] = m[never], p[never]
        norms = best_m.flatten(1).sum(1)
        success = torch.zeros(classes, device=x.device)
        ref = x[: min(x.shape[0], 128)]
        for k in range(classes):
            xk = (1 - best_m[k]) * ref + best_m[k] * best_p[k]
            success[k] = (model(xk).argmax(1) == k).float().mean()
    return ReversedTriggers(best_m.detach(), best_p.detach(), norms.detach(), success.detach(), ~never)


__all__ = ["ReverseOptions", "ReversedTriggers", "reverse_triggers"]
