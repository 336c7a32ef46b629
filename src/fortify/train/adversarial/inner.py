"""In-graph inner maximisation for adversarial training (one implementation shared by every task).

Projected steepest ascent (Madry et al. 2018, "Towards deep learning models resistant to adversarial
attacks"), in the norm of the threat model: ``sign`` steps for linf, normalised gradients for l2 and
sparse l1 descent (Tramer & Boneh 2019) for l1, each followed by the exact projection of
:meth:`fortify.ThreatModel.project`. With ``steps=1`` and a random start this is FGSM-RS (Wong et
al. 2020, "Fast is better than free"). :func:`msd_perturb` is the multi steepest descent of Maini et
al. 2020 ("Adversarial robustness against the union of multiple perturbation models").

Shapes: ``x (B, ...)`` in the threat's bounds, ``y (B,)`` int64 -> ``x_adv (B, ...)`` detached.

The model runs in eval mode with frozen parameters for the duration (flags restored afterwards);
gradients are taken with ``torch.autograd.grad`` on the input only, so ``param.grad`` is never
written. All randomness comes from the ``generator`` argument so training resumes bit-exactly.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fortify.models.state import frozen
from fortify.attacks.steps import steepest_ascent
from fortify.errors import ConfigError
from fortify.threat import ThreatModel

#: per-sample loss of the logits (B, C) to maximise, returning (B,)
LossFn = Callable[[torch.Tensor], torch.Tensor]

#: step size relative to eps for a K-step attack: 2.5 * eps / K (Madry et al. 2018).
STEP_FACTOR = 2.5
#: fraction of coordinates moved by one sparse l1 step (Tramer & Boneh 2019 use the top 1-5%).
L1_SPARSITY = 0.02


def default_step_size(threat: ThreatModel, steps: int) -> float:
    """The usual PGD step ``2.5 * eps / steps`` (Madry et al. 2018); 1.25 eps for one step (Wong et al.)."""
    if steps <= 1:
        return 1.25 * threat.eps
    return STEP_FACTOR * threat.eps / steps


def ce_per_sample(y: torch.Tensor) -> LossFn:
    """Cross-entropy of the true labels, per sample."""
    return lambda logits: F.cross_entropy(logits, y, reduction="none")


def kl_per_sample(clean_logits: torch.Tensor) -> LossFn:
    """``KL(p_clean || p_adv)`` per sample (the TRADES inner loss, Zhang et al. 2019)."""
    p_clean = F.softmax(clean_logits.detach(), dim=1)
    log_p_clean = F.log_softmax(clean_logits.detach(), dim=1)
    return lambda logits: (p_clean * (log_p_clean - F.log_softmax(logits, dim=1))).sum(dim=1)


def check_steps(steps: object, name: str = "steps") -> int:
    """Validate an attack step count (an int >= 1)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"{name} must be an integer >= 1, got {steps!r}")
    return steps


def _input_grad(model: nn.Module, x: torch.Tensor, loss_fn: LossFn) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        logits = model(xg)
        loss = loss_fn(logits)
        (g,) = torch.autograd.grad(loss.sum(), xg)
    return g.detach(), loss.detach()


def perturb(
    model: nn.Module,
    x: torch.Tensor,
    loss_fn: LossFn,
    threat: ThreatModel,
    *,
    steps: int,
    step_size: float | None = None,
    random_start: bool = True,
    x_init: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    keep_best: bool = False,
) -> tuple[torch.Tensor, int]:
    """Maximise ``loss_fn(model(x'))`` over the threat set around ``x`` by projected steepest ascent.

    Args:
        model: maps ``(B, ...)`` to logits ``(B, C)``.
        x: clean inputs ``(B, ...)``.
        loss_fn: per-sample loss ``(B, C) -> (B,)`` to maximise (e.g. :func:`ce_per_sample`).
        threat: the perturbation set; ``eps == 0`` returns ``x`` at no cost.
        steps: number of gradient steps (>= 1).
        step_size: absolute step length in the threat's norm; default :func:`default_step_size`.
        random_start: start from ``threat.random_init(x, generator)`` (ignored if ``x_init`` given).
        x_init: explicit starting point ``(B, ...)`` (projected first).
        generator: source of the random start.
        keep_best: return each sample's highest-loss iterate instead of the last one.

    Returns:
        ``(x_adv, grad_evals)`` with ``x_adv`` detached and ``grad_evals = steps * B``.
    """
    steps = check_steps(steps)
    if threat.eps == 0:
        return x.detach(), 0
    alpha = default_step_size(threat, steps) if step_size is None else float(step_size)
    x = x.detach()
    if x_init is not None:
        x_adv = threat.project(x_init.detach(), x)
    elif random_start:
        x_adv = threat.random_init(x, generator)
    else:
        x_adv = x.clone()
    best, best_loss = x_adv, None
    with frozen(model):
        for _ in range(steps):
            g, loss = _input_grad(model, x_adv, loss_fn)
            if keep_best:
                if best_loss is None:
                    best, best_loss = x_adv, loss
                else:
                    better = loss > best_loss
                    best = torch.where(better.view(-1, *([1] * (x.dim() - 1))), x_adv, best)
                    best_loss = torch.where(better, loss, best_loss)
            step = steepest_ascent(g, threat.norm, L1_SPARSITY if threat.norm == "l1" else None)
            x_adv = threat.project(x_adv + alpha * step, x)
        if keep_best:
            assert best_loss is not None, "check_steps guarantees at least one step"
            with torch.no_grad():
                last = loss_fn(model(x_adv))
            better = last > best_loss
            x_adv = torch.where(better.view(-1, *([1] * (x.dim() - 1))), x_adv, best)
    return x_adv.detach(), steps * x.shape[0]


def msd_perturb(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    threats: Sequence[ThreatModel],
    *,
    steps: int,
    step_sizes: Sequence[float] | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, int]:
    """Multi steepest descent (Maini et al. 2020): at each step take the steepest-ascent step of
    every norm from the current point (projected onto that norm's set), keep per sample the one
    with the highest loss. The iterate stays inside the union of the threat sets.

    Shapes: ``x (B, ...)``, ``y (B,)`` -> ``(x_adv (B, ...), grad_evals = steps * B)``; one gradient
    per step is shared by all norms (the candidates only cost forward passes).
    """
    steps = check_steps(steps)
    if not threats:
        raise ConfigError("msd needs at least one threat model")
    sizes = [default_step_size(t, steps) for t in threats] if step_sizes is None else list(step_sizes)
    x = x.detach()
    b = x.shape[0]
    view = (-1,) + (1,) * (x.dim() - 1)
    x_adv = x.clone()
    loss_fn = ce_per_sample(y)
    with frozen(model):
        for _ in range(steps):
            g, _ = _input_grad(model, x_adv, loss_fn)
            best, best_loss = x_adv, torch.full((b,), -float("inf"), device=x.device, dtype=x.dtype)
            for t, a in zip(threats, sizes):
                step = steepest_ascent(g, t.norm, L1_SPARSITY if t.norm == "l1" else None)
                cand = t.project(x_adv + a * step, x)
                with torch.no_grad():
                    cl = loss_fn(model(cand))
                better = cl > best_loss
                best = torch.where(better.view(view), cand, best)
                best_loss = torch.where(better, cl, best_loss)
            x_adv = best
    return x_adv.detach(), steps * b


__all__ = [
    "LossFn",
    "perturb",
    "msd_perturb",
    "ce_per_sample",
    "kl_per_sample",
    "default_step_size",
    "check_steps",
]
