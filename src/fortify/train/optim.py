"""Optimisers the Trainer builds, including the large-batch ones (LARS, LAMB), and the learning-rate scaling rules.

* :class:`LARS` -- layer-wise adaptive rate scaling (You, Gitman & Ginsburg 2017, "Large batch training of
  convolutional networks", Alg. 1). Per parameter tensor ``w`` with gradient ``g`` (one "layer"):
  ``trust = eta * ||w|| / (||g|| + wd * ||w||)`` (1 when either norm is 0), ``u = trust * (g + wd * w)``,
  ``v <- m * v + u`` (heavy-ball momentum), ``w <- w - lr * v``.
* :class:`LAMB` -- layer-wise adaptive moments (You et al. 2020, "Large batch optimization for deep
  learning: training BERT in 76 minutes", Alg. 2): Adam moments ``m, v`` with bias correction, then
  ``r = m_hat / (sqrt(v_hat) + eps) + wd * w``, ``trust = ||w|| / ||r||`` (1 when either norm is 0) and
  ``w <- w - lr * trust * r``.

Both take the per-group flag ``adapt``: groups with ``adapt=False`` skip the trust ratio (``trust = 1``)
and, as :func:`param_groups` builds them, carry ``weight_decay=0``. :func:`param_groups` puts biases and
the parameters of normalisation layers (BatchNorm, LayerNorm, GroupNorm, InstanceNorm) in that group, as
the papers' reference implementations do ("exclude_from_weight_decay / layer_adaptation").

Learning-rate scaling (:func:`scaled_lr`): ``linear`` multiplies the recipe's ``lr`` by
``batch_size / base_batch_size`` (Goyal et al. 2017, "Accurate, large minibatch SGD", with the gradual
warm-up of ``TrainConfig.warmup``); ``sqrt`` by its square root (Krizhevsky 2014; You et al. 2020 for
LAMB); ``none`` keeps ``lr``.

Cost per step: one norm of every parameter and update tensor on top of SGD/Adam, O(#params).
"""
from __future__ import annotations

import math
from typing import Any, Iterable

import torch
from torch import nn

from fortify.errors import ConfigError

#: module types whose parameters get neither weight decay nor the trust ratio in LARS / LAMB
NORM_TYPES: tuple[type[nn.Module], ...] = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm,
                                           nn.LocalResponseNorm)
LR_SCALINGS = ("none", "linear", "sqrt")


def _trust(w_norm: torch.Tensor, u_norm: torch.Tensor) -> torch.Tensor:
    """``w_norm / u_norm`` where both are positive, else 1 (a zero-initialised layer must still move)."""
    ok = (w_norm > 0) & (u_norm > 0)
    return torch.where(ok, w_norm / torch.where(ok, u_norm, torch.ones_like(u_norm)), torch.ones_like(w_norm))


class LARS(torch.optim.Optimizer):
    """LARS with heavy-ball momentum (see the module doc for the update; ``eta`` = trust coefficient).

    Args: ``params`` (tensors or groups; group key ``adapt`` defaults to True), ``lr`` > 0, ``momentum``
    in [0, 1), ``weight_decay`` >= 0, ``eta`` > 0 (0.001 in the paper for ImageNet; the Trainer uses 1e-3
    too), ``eps`` added to the denominator.
    """

    def __init__(self, params: Iterable[Any], lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 0.0,
                 eta: float = 1e-3, eps: float = 0.0) -> None:
        """Validate hyper-parameters (ConfigError) and build the groups."""
        if lr <= 0 or not 0 <= momentum < 1 or weight_decay < 0 or eta <= 0 or eps < 0:
            raise ConfigError(f"LARS needs lr > 0, momentum in [0, 1), weight_decay >= 0, eta > 0, eps >= 0; got "
                              f"lr={lr}, momentum={momentum}, weight_decay={weight_decay}, eta={eta}, eps={eps}")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, eps=eps,
                                      adapt=True))

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        """One update of every parameter with a gradient (shapes unchanged)."""
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            lr, mom, wd, eta, eps = group["lr"], group["momentum"], group["weight_decay"], group["eta"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                u = g.add(p, alpha=wd) if wd else g.clone()
                if group["adapt"]:
                    w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(g)
                    trust = _trust(eta * w_norm, g_norm + wd * w_norm + eps)
                    u.mul_(trust)
                state = self.state[p]
                if mom:
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = state["momentum_buffer"] = u.clone()
                    else:
                        buf.mul_(mom).add_(u)
                    u = buf
                p.add_(u, alpha=-lr)
        return loss


class LAMB(torch.optim.Optimizer):
    """LAMB (see the module doc for the update). Args: ``lr`` > 0, ``betas`` in [0, 1), ``eps`` > 0,
    ``weight_decay`` >= 0 (decoupled, inside the trust ratio as in the paper)."""

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.0) -> None:
        """Validate hyper-parameters (ConfigError) and build the groups."""
        if lr <= 0 or not all(0 <= b < 1 for b in betas) or eps <= 0 or weight_decay < 0:
            raise ConfigError(f"LAMB needs lr > 0, betas in [0, 1), eps > 0, weight_decay >= 0; got lr={lr}, "
                              f"betas={betas}, eps={eps}, weight_decay={weight_decay}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, adapt=True))

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        """One update of every parameter with a gradient (shapes unchanged)."""
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            (b1, b2), lr, eps, wd = group["betas"], group["lr"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float64)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                t = float(state["step"])
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(b1).add_(p.grad, alpha=1 - b1)
                v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                r = (m / (1 - b1 ** t)) / ((v / (1 - b2 ** t)).sqrt() + eps)
                if wd:
                    r.add_(p, alpha=wd)
                if group["adapt"]:
                    r.mul_(_trust(torch.linalg.vector_norm(p), torch.linalg.vector_norm(r)))
                p.add_(r, alpha=-lr)
        return loss


def is_excluded(module: nn.Module, name: str, p: nn.Parameter) -> bool:
    """True for a bias (``name == "bias"`` or a 1-element/1-D tensor) or a normalisation layer's parameter."""
    return isinstance(module, NORM_TYPES) or name == "bias" or p.dim() <= 1


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two groups of the trainable parameters (module order, each once even if shared): weights
    (``weight_decay``, ``adapt=True``) and biases / norm parameters (``weight_decay=0``, ``adapt=False``)."""
    seen: set[int] = set()
    decay: list[nn.Parameter] = []
    plain: list[nn.Parameter] = []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            (plain if is_excluded(module, name, p) else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay, "adapt": True},
              {"params": plain, "weight_decay": 0.0, "adapt": False}]
    return [g for g in groups if g["params"]]


def scaled_lr(lr: float, batch_size: int, rule: str, base_batch_size: int) -> float:
    """The peak learning rate after the scaling ``rule`` (see the module doc)."""
    if rule not in LR_SCALINGS:
        raise ConfigError(f"lr_scaling must be one of {', '.join(LR_SCALINGS)}; got {rule!r}")
    k = batch_size / base_batch_size
    return lr * (k if rule == "linear" else math.sqrt(k) if rule == "sqrt" else 1.0)


def build(name: str, model: nn.Module, *, lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    """The optimiser ``name`` (``sgd``, ``adam``, ``lars``, ``lamb``) over ``model``'s trainable parameters.

    ``sgd``/``adam``: one group, coupled weight decay on every parameter (as before LARS/LAMB existed);
    ``lars``/``lamb``: :func:`param_groups` (biases and norm parameters excluded). ConfigError when the
    model has no trainable parameter or the name is unknown.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("model has no trainable parameters (requires_grad=True)")
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "lars":
        return LARS(param_groups(model, weight_decay), lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "lamb":
        return LAMB(param_groups(model, weight_decay), lr=lr, weight_decay=weight_decay)
    raise ConfigError(f"unknown optimizer {name!r}; allowed: sgd, adam, lars, lamb")


def all_params(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """Every parameter of every group (for global-norm clipping)."""
    return [p for g in optimizer.param_groups for p in g["params"]]


__all__ = ["LARS", "LAMB", "param_groups", "scaled_lr", "build", "all_params", "is_excluded", "LR_SCALINGS"]
