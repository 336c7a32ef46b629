"""Eps-sweep sanity checks (Carlini et al. 2019, "On evaluating adversarial robustness", sec. 5):
accuracy must not increase with eps, and an eps that covers the whole input box must reach ~0%.

One gradient attack (the preset's first) is run on up to ``points`` clean-correct inputs at
``eps * (0.5, 1, 2)`` and at the box-covering radius (linf: ``hi - lo``; l2: ``(hi - lo) sqrt(d)``;
l1: ``(hi - lo) d``).
"""
from __future__ import annotations

import math
import zlib
from typing import Callable

import torch
from torch import nn

from fortify.attacks import Attack
from fortify.evaluate import sanity as S
from fortify.evaluate.presets import AttackSpec, build_attack
from fortify.evaluate.report import SanityFlag
from fortify.threat import ThreatModel

FACTORS: tuple[float, ...] = (0.5, 1.0, 2.0)
#: accuracy at the box-covering eps above which ``large_eps_not_broken`` fires
LARGE_EPS_MAX_ACC = 0.1


def box_covering_eps(threat: ThreatModel, dim: int) -> float:
    """The radius whose ball contains the whole input box, for ``dim`` input coordinates."""
    lo, hi = threat.envelope()
    span = hi - lo
    return {"linf": span, "l2": span * math.sqrt(dim), "l1": span * dim}[threat.norm]


def sweep(model: nn.Module, predict: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor,
          threat: ThreatModel, attack: Attack, eps_list: list[float], *, batch_size: int, seed: int) -> list[float]:
    """Accuracy of ``predict`` on ``x (M, ...)``, ``y (M,)`` after ``attack`` on ``model`` at each eps of
    ``eps_list`` (a point counts as broken only inside the threat model); one seed per eps."""
    accs = []
    for eps in eps_list:
        thr = threat.with_eps(eps)
        s = (seed * 7919 + zlib.crc32(f"sweep:{eps:.6g}".encode())) % (2**62)
        torch.manual_seed(s)
        gen = torch.Generator(device=x.device).manual_seed(s)
        robust = 0
        for i in range(0, x.shape[0], batch_size):
            xb, yb = x[i:i + batch_size], y[i:i + batch_size]
            res = attack(model, xb, yb, thr, generator=gen)
            ok = thr.contains(res.x_adv, xb) & (predict(res.x_adv) != yb)
            robust += int((~ok).sum())
        accs.append(robust / max(1, x.shape[0]))
    return accs


def eps_sweep_flags(model: nn.Module, predict: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                    y: torch.Tensor, threat: ThreatModel, spec: AttackSpec | None, *, budget: float = 1.0,
                    batch_size: int = 256, seed: int = 0) -> list[SanityFlag]:
    """``non_monotone_in_eps`` and ``large_eps_not_broken`` for ``threat`` (see module doc).

    ``x (M, ...)``, ``y (M,)``: the points to sweep, correctly classified by ``predict`` (the cascade
    passes its first ``eps_check_points`` clean-correct ones). ``spec``: the attack (None: not run)."""
    names = ("non_monotone_in_eps", "large_eps_not_broken")
    if spec is None:
        return [S.not_run(n, "no gradient attack is registered") for n in names]
    m = x.shape[0]
    if m == 0 or threat.eps == 0:
        return [S.not_run(n, "no correctly classified points or eps = 0") for n in names]
    eps_list = [threat.eps * f for f in FACTORS]
    big = box_covering_eps(threat, x[0].numel())
    attack, _ = build_attack(spec, budget)
    accs = sweep(model, predict, x, y, threat, attack, eps_list + [big], batch_size=batch_size, seed=seed)
    curve = [1.0] + accs[:-1]
    grid = [0.0] + eps_list
    tol = max(1, math.ceil(0.02 * m)) / m
    rises = [(grid[i], grid[i + 1], curve[i], curve[i + 1]) for i in range(len(curve) - 1) if curve[i + 1] > curve[i] + tol]
    ev = {"attack": spec.label, "points": m, "eps": grid, "accuracy": curve}
    return [
        S.make_flag("non_monotone_in_eps", bool(rises), {**ev, "rises": rises}),
        S.make_flag("large_eps_not_broken", accs[-1] > LARGE_EPS_MAX_ACC,
                    {"attack": spec.label, "eps": big, "accuracy": accs[-1], "max_allowed": LARGE_EPS_MAX_ACC}),
    ]
