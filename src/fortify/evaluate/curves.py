"""Robustness curves: accuracy as a function of eps for one norm.

Minimum-norm attacks (FAB, Croce & Hein 2020 "Minimally distorted adversarial examples with a fast
adaptive boundary attack"; DeepFool, Moosavi-Dezfooli et al. 2016) return, per point, the size of
the smallest perturbation they found, so one run gives the whole curve:
``acc(eps) = mean(correct and distance > eps)``. The curve is cross-checked with a fixed-eps attack
at a few eps; points it breaks lower their distance to the one it found, so the reported curve is
the per-sample worst case of both. Without a registered minimum-norm attack every grid eps is
attacked with the fixed-eps attack.
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from fortify import progress
from fortify.attacks import ATTACKS
from fortify.models.state import frozen
from fortify.errors import ConfigError, InputError, ThreatModelError
from fortify.evaluate.eps_checks import box_covering_eps
from fortify.evaluate.presets import build_attack, AttackSpec
from fortify.plotting import pyplot, save_figure
from fortify.threat import NORMS, ThreatModel
from fortify.validation import (
    Bounds,
    check_device, check_images, check_kwargs, check_labels, check_logits, check_model_input, forward_checked,
)

MIN_NORM_ATTACKS: tuple[str, ...] = ("fab", "deepfool")
FIXED_ATTACKS: tuple[str, ...] = ("apgd", "pgd", "fgsm")


@dataclass
class RobustnessCurve:
    """``accuracy[i]`` is the robust accuracy at ``eps[i]``; ``distances (N,)`` per-sample smallest
    adversarial distance found (0 for misclassified points, inf if never broken); ``checks`` holds the
    fixed-eps cross-checks ``{eps, acc_min_norm, acc_combined, newly_broken}``."""

    norm: str
    eps: list[float]
    accuracy: list[float]
    distances: torch.Tensor
    attacks: list[str]
    checks: list[dict[str, Any]] = field(default_factory=list)
    label: str = ""

    def accuracy_at(self, eps: float) -> float:
        return float(((self.distances > eps).float()).mean())

    def to_dict(self) -> dict[str, Any]:
        return {"norm": self.norm, "label": self.label, "eps": list(self.eps), "accuracy": list(self.accuracy),
                "attacks": list(self.attacks), "checks": list(self.checks)}


def _default_grid(norm: str, span: float, dim: int, dist: torch.Tensor, points: int = 21) -> list[float]:
    """``points`` eps from 0 to just past the largest finite distance (or a norm-scaled default)."""
    finite = dist[torch.isfinite(dist) & (dist > 0)]
    if finite.numel():
        top = float(finite.max()) * 1.05
    else:
        top = {"linf": 0.5 * span, "l2": 0.25 * span * math.sqrt(dim), "l1": 0.05 * span * dim}[norm]
    return [top * i / (points - 1) for i in range(points)]


@dataclass(frozen=True)
class CurveOptions:
    """Keyword options of :func:`robustness_curve`: ``budget`` scales attack iterations, ``checks``
    grid eps are cross-checked with a fixed-eps attack, ``batch_size`` points per attack call,
    ``seed`` for the attacks' random numbers (the global RNG is restored afterwards)."""

    budget: float = 1.0
    checks: int = 3
    batch_size: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.checks, bool) or not isinstance(self.checks, int) or self.checks < 0:
            raise ConfigError(f"checks must be an integer >= 0, got {self.checks!r}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if isinstance(self.budget, bool) or not isinstance(self.budget, (int, float)) or not self.budget > 0:
            raise ConfigError(f"budget must be a number > 0, got {self.budget!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"seed must be an integer, got {self.seed!r}")


def _attack_all(model: nn.Module, spec: AttackSpec, x: torch.Tensor, y: torch.Tensor, thr: ThreatModel,
                opts: CurveOptions, bar: progress.Task | None = None, what: str = "") -> torch.Tensor:
    """Distances ``(M,)`` of successful adversarial examples (inf where the attack failed); ``bar`` shows
    ``what`` (default: the attack's label) and the batch."""
    attack, _ = build_attack(spec, opts.budget)
    batch_size = opts.batch_size
    batches = -(-x.shape[0] // batch_size)
    s = (opts.seed * 31 + zlib.crc32(f"{spec.label}:{thr}".encode())) % (2**62)
    torch.manual_seed(s)
    gen = torch.Generator(device=x.device).manual_seed(s)
    out = torch.full((x.shape[0],), float("inf"), dtype=torch.float64)
    for i in range(0, x.shape[0], batch_size):
        if bar is not None:
            bar.update(info=f"{what or spec.label}, batch {i // batch_size + 1}/{batches}")
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        res = attack(model, xb, yb, thr, generator=gen)
        with torch.no_grad():
            ok = (model(res.x_adv).argmax(1) != yb) & thr.contains(res.x_adv, xb)
        d = thr.distance(res.x_adv, xb).double().cpu()
        out[i:i + xb.shape[0]] = torch.where(ok.cpu(), d, torch.tensor(float("inf"), dtype=torch.float64))
    return out


def _check_inputs(model: nn.Module, x: torch.Tensor, bounds: Bounds) -> torch.Tensor:
    """The shared input checks of :mod:`fortify.validation` (typed InputError); returns ``x`` detached."""
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_images(x, bounds)
    check_device(model, x)
    check_model_input(model, x)
    return x.detach()


def robustness_curve(model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str,
                     eps_grid: Sequence[float] | None = None, *, bounds: Bounds = (0.0, 1.0),
                     label: str = "", **options: Any) -> RobustnessCurve:
    """Accuracy vs eps for ``norm`` on ``x (N, ...)``, ``y (N,)`` (see module doc).

    ``eps_grid``: eps values (default: 21 points up to the largest distance found). ``options``: the
    fields of :class:`CurveOptions` (``budget``, ``checks``, ``batch_size``, ``seed``). Inputs are
    validated like an attack's (dtype, sample shape, device, bounds, labels below the class count:
    InputError). Cost: one run of each minimum-norm attack plus ``checks`` fixed-eps attacks.
    Progress (:mod:`fortify.progress`, shown inside ``progress.enabled()``): one unit per attack run."""
    if norm not in NORMS:
        raise ThreatModelError(f"unknown norm {norm!r}; allowed: {', '.join(NORMS)}")
    if eps_grid is not None:
        eps_grid = [float(e) for e in eps_grid]
        if not eps_grid or any(not math.isfinite(e) or e < 0 for e in eps_grid):
            raise ThreatModelError(f"eps_grid must be non-empty, finite and >= 0, got {eps_grid!r}")
    check_kwargs(CurveOptions, options, what="robustness_curve")
    opts = CurveOptions(**options)
    x = _check_inputs(model, x, bounds)
    n, dim = x.shape[0], x[0].numel()
    cap = ThreatModel(norm, box_covering_eps(ThreatModel(norm, 0.0, bounds), dim), bounds)
    rng = torch.random.fork_rng(devices=[x.device.index or 0] if x.is_cuda else [])
    with rng, frozen(model), progress.task(f"curve {label or norm}", unit="attacks") as bar:
        with torch.no_grad():
            logits = check_logits(forward_checked(model, x), n)
        y = check_labels(y, n, logits.shape[1]).to(x.device)
        correct = (logits.argmax(1) == y).cpu()
        idx = correct.nonzero().squeeze(1)
        xs, ys = x[idx.to(x.device)], y[idx.to(y.device)]
        dist_c = torch.full((idx.numel(),), float("inf"), dtype=torch.float64)
        used = [a for a in MIN_NORM_ATTACKS if a in ATTACKS and norm in ATTACKS.get(a).norms]
        fixed = next((a for a in FIXED_ATTACKS if a in ATTACKS and norm in ATTACKS.get(a).norms), None)
        checks = opts.checks
        bar.update(total=len(used) + (checks if fixed is not None else 0))
        for a in used:
            d = _attack_all(model, AttackSpec(a, a), xs, ys, cap, opts, bar)
            dist_c = torch.minimum(dist_c, d)
            bar.advance()
        span = cap.envelope()[1] - cap.envelope()[0]
        grid = eps_grid if eps_grid is not None else _default_grid(norm, span, dim, dist_c)
        positive = sorted(e for e in grid if e > 0)
        if used:
            pick = [positive[round(i * (len(positive) - 1) / max(1, checks - 1))] for i in range(checks)] if positive and checks else []
            check_eps = sorted(set(pick))
        else:
            check_eps = positive
        bar.update(total=len(used) + (len(check_eps) if fixed is not None else 0))
        done = []
        for e in check_eps:
            if fixed is None:
                break
            before = float(((dist_c > e).sum()) / n)
            todo = (dist_c > e).nonzero().squeeze(1)
            newly = 0
            if todo.numel():
                d = _attack_all(model, AttackSpec(fixed, fixed), xs[todo.to(x.device)], ys[todo.to(y.device)],
                                ThreatModel(norm, e, bounds), opts, bar, f"{fixed} at eps {e:.3g}")
                newly = int(torch.isfinite(d).sum())
                dist_c[todo] = torch.minimum(dist_c[todo], d)
            bar.advance()
            done.append({"eps": e, "attack": fixed, "acc_min_norm": before,
                         "acc_combined": float(((dist_c > e).sum()) / n), "newly_broken": newly})
    distances = torch.zeros(n, dtype=torch.float64)
    distances[idx] = dist_c
    acc = [float((distances > e).float().mean()) for e in grid]
    return RobustnessCurve(norm=norm, eps=list(grid), accuracy=acc, distances=distances.float(),
                           attacks=used + ([fixed] if fixed and done else []), checks=done, label=label)


def plot_curves(curves: RobustnessCurve | Sequence[RobustnessCurve] | Mapping[str, RobustnessCurve],
                path: str | Path, *, title: str = "robustness curves") -> Path:
    """Plot accuracy vs eps (one panel per norm, one line per curve, cross-checks as markers) to PNG."""
    if isinstance(curves, RobustnessCurve):
        items = [(curves.label or curves.norm, curves)]
    elif isinstance(curves, Mapping):
        items = list(curves.items())
    else:
        items = [(c.label or f"{c.norm} #{i}", c) for i, c in enumerate(curves)]
    if not items:
        raise ConfigError("plot_curves needs at least one curve")
    norms = sorted({c.norm for _, c in items}, key=NORMS.index)
    fig, axes = pyplot().subplots(1, len(norms), figsize=(4.2 * len(norms), 3.4), squeeze=False)
    for ax, norm in zip(axes[0], norms):
        for lab, c in items:
            if c.norm != norm:
                continue
            line, = ax.plot(c.eps, c.accuracy, label=lab)
            if c.checks:
                ax.scatter([k["eps"] for k in c.checks], [k["acc_combined"] for k in c.checks],
                           color=line.get_color(), marker="x", zorder=3)
        ax.set_xlabel(f"eps ({norm})")
        ax.set_ylabel("robust accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)
