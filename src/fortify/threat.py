"""The threat model shared by attacks, training, certification and reports.

A :class:`ThreatModel` is data: a norm (``"linf"``, ``"l2"`` or ``"l1"``), a radius ``eps`` and the
valid input box ``bounds`` (default ``(0, 1)``). Tensors are batched, shape ``(N, ...)``; norms are
taken per sample over all non-batch dimensions.

Projections are onto the *intersection* of the norm ball around ``x`` and the input box:

* ``linf``: exact (the problem is separable: clamp per coordinate).
* ``l1``: exact, by the sort-based method of Duchi et al. 2008 ("Efficient projections onto the
  l1-ball for learning in high dimensions") extended to per-coordinate box caps: the solution is
  ``delta_i = sign(z_i) * clamp(|z_i| - lam, 0, c_i)`` with ``c_i`` the room to the box in the
  direction of ``z_i`` and ``lam >= 0`` the root of a piecewise-linear decreasing function found
  from the sorted breakpoints.
* ``l2``: exact, ``delta_i = clamp(z_i / (1 + mu), a_i, b_i)`` with ``mu >= 0`` found by bisection
  (the standard "scale then clip" is the first bisection step and is only approximate).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Mapping, TypeAlias, Union

import torch

from fortify.errors import InputError, ThreatModelError
from fortify.validation import check_finite_number

Norm = Literal["linf", "l2", "l1"]
NORMS: tuple[str, ...] = ("linf", "l2", "l1")
#: Relative slack used by :meth:`ThreatModel.contains` to absorb float32 rounding.
CONTAINS_RTOL = 1e-5
CONTAINS_ATOL = 1e-6


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1)


def _view(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape((-1,) + (1,) * (like.dim() - 1))


@dataclass(frozen=True)
class ThreatModel:
    """Perturbation set ``{x' : ||x' - x||_norm <= eps, lo <= x' <= hi}``.

    Args:
        norm: ``"linf"``, ``"l2"`` or ``"l1"``.
        eps: radius, a finite real number ``>= 0`` (``bool`` and ``str`` are refused: ``eps=True``
            or ``eps="0.1"`` is a mistake, not 1.0 or 0.1; use :meth:`parse` for text).
        bounds: ``(lo, hi)`` valid input range, finite numbers with ``lo < hi``.

    Every invalid value raises :class:`fortify.errors.ThreatModelError` (a ``ConfigError``).
    """

    norm: str
    eps: float
    bounds: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        if not isinstance(self.norm, str) or self.norm not in NORMS:
            raise ThreatModelError(f"unknown norm {self.norm!r}; allowed: {', '.join(NORMS)}")
        eps = check_finite_number(self.eps, "eps", error=ThreatModelError)
        if eps < 0:
            raise ThreatModelError(f"eps must be a finite number >= 0, got {self.eps!r}")
        if isinstance(self.bounds, (str, bytes)) or not hasattr(self.bounds, "__len__") or len(self.bounds) != 2:
            raise ThreatModelError(f"bounds must be a pair (lo, hi), got {self.bounds!r}")
        lo, hi = (check_finite_number(b, "bounds", error=ThreatModelError) for b in self.bounds)
        if not lo < hi:
            raise ThreatModelError(f"bounds must be finite with lo < hi, got {self.bounds!r}")
        object.__setattr__(self, "eps", eps)
        object.__setattr__(self, "bounds", (lo, hi))

    # ------------------------------------------------------------------ parsing / display
    @classmethod
    def parse(cls, spec: str, bounds: tuple[float, float] = (0.0, 1.0)) -> "ThreatModel":
        """Parse ``"linf:0.3"`` / ``"l2:2.0"`` / ``"l1:10"`` (also accepts ``"linf=0.3"``)."""
        if not isinstance(spec, str) or not any(s in spec for s in ":="):
            raise ThreatModelError(f"threat must look like NORM:EPS (e.g. linf:0.3), got {spec!r}")
        norm, _, eps = spec.replace("=", ":").partition(":")
        try:
            value = float(eps)
        except ValueError:
            raise ThreatModelError(f"eps in threat {spec!r} is not a number") from None
        return cls(norm.strip().lower(), value, bounds)

    @classmethod
    def coerce(cls, threat: object, *, where: str = "threat") -> "ThreatModel":
        """The one way every pillar turns user input into a ThreatModel.

        Accepts a :class:`ThreatModel` (returned as is), a ``"linf:0.3"`` string (see :meth:`parse`)
        or a mapping ``{"norm": "linf", "eps": 0.3[, "bounds": [lo, hi]]}`` (e.g. from a recipe).
        Anything else, an unknown mapping key, a missing one or a bad value is a
        :class:`ThreatModelError` whose message starts with ``where`` (the argument or recipe key).
        """
        if isinstance(threat, ThreatModel):
            return threat
        try:
            if isinstance(threat, str):
                return cls.parse(threat)
            if isinstance(threat, Mapping):
                return cls._from_mapping(threat)
        except ThreatModelError as e:
            raise ThreatModelError(f"{where}: {e}") from None
        raise ThreatModelError(f"{where} must be a ThreatModel, a string like 'linf:0.3' or a mapping "
                               f"{{norm, eps[, bounds]}}, got {type(threat).__name__} {threat!r}")

    @classmethod
    def _from_mapping(cls, spec: Mapping[Any, Any]) -> "ThreatModel":
        """``{"norm", "eps"[, "bounds"]}`` -> ThreatModel; ThreatModelError naming unknown / missing keys."""
        allowed = ("norm", "eps", "bounds")
        unknown = sorted(str(k) for k in spec if k not in allowed)
        if unknown:
            raise ThreatModelError(f"unknown threat key(s) {', '.join(map(repr, unknown))}; allowed: "
                                   f"{', '.join(allowed)}")
        missing = [k for k in ("norm", "eps") if k not in spec]
        if missing:
            raise ThreatModelError(f"threat mapping needs {', '.join(map(repr, missing))}, got {dict(spec)!r}")
        bounds = spec.get("bounds", (0.0, 1.0))
        if isinstance(bounds, list):
            bounds = tuple(bounds)
        return cls(spec["norm"], spec["eps"], bounds)

    def __str__(self) -> str:
        return f"{self.norm}:{self.eps:g}"

    def with_eps(self, eps: float) -> "ThreatModel":
        return ThreatModel(self.norm, eps, self.bounds)

    @property
    def dual_norm_p(self) -> float:
        """The exponent q of the dual norm (1/p + 1/q = 1): linf->1, l2->2, l1->inf."""
        return {"linf": 1.0, "l2": 2.0, "l1": math.inf}[self.norm]

    # ------------------------------------------------------------------ geometry
    def distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Per-sample distance ``||a - b||`` in this norm; shape ``(N,)``."""
        if a.shape != b.shape:
            raise InputError(f"distance needs equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
        d = _flat(a - b)
        if self.norm == "linf":
            return d.abs().amax(dim=1) if d.shape[1] else d.new_zeros(d.shape[0])
        if self.norm == "l2":
            l2: torch.Tensor = d.norm(p=2, dim=1)
            return l2
        return d.abs().sum(dim=1)

    def contains(self, x_adv: torch.Tensor, x: torch.Tensor, *, atol: float = CONTAINS_ATOL) -> torch.Tensor:
        """Per-sample bool: ``x_adv`` is within ``eps`` of ``x`` and inside the bounds (float slack)."""
        lo, hi = self.bounds
        within = self.distance(x_adv, x) <= self.eps * (1 + CONTAINS_RTOL) + atol
        fx = _flat(x_adv)
        in_box = ((fx >= lo - atol) & (fx <= hi + atol)).all(dim=1)
        return within & in_box

    def clip_bounds(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(*self.bounds)

    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Euclidean projection of ``x_adv`` onto the ball around ``x`` intersected with the box.

        ``x`` must itself lie in the box. Shapes ``(N, ...)``; returns a tensor like ``x_adv``.
        """
        if x_adv.shape != x.shape:
            raise InputError(f"project needs equal shapes, got {tuple(x_adv.shape)} and {tuple(x.shape)}")
        lo, hi = self.bounds
        z = x_adv - x
        # room to the box in each direction: a = lo - x <= 0 <= b = hi - x
        a = (lo - x).clamp(max=0)
        b = (hi - x).clamp(min=0)
        if self.norm == "linf":
            delta = torch.maximum(torch.minimum(z.clamp(-self.eps, self.eps), b), a)
        elif self.norm == "l1":
            delta = _project_l1_box(_flat(z), _flat(a), _flat(b), self.eps).reshape(z.shape)
        else:
            delta = _project_l2_box(_flat(z), _flat(a), _flat(b), self.eps).reshape(z.shape)
        return (x + delta).clamp(lo, hi)

    def random_init(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A random point of the threat set around ``x`` (uniform in the ball, then box-clipped).

        linf: uniform per coordinate. l2: Gaussian direction, radius ``eps * U^(1/d)``.
        l1: uniform in the l1 ball via normalised exponentials with random signs.
        """
        n = x.shape[0]
        d = _flat(x).shape[1]
        dev, dt = x.device, x.dtype
        if self.norm == "linf":
            delta = (torch.rand(x.shape, generator=generator, device=dev, dtype=dt) * 2 - 1) * self.eps
        elif self.norm == "l2":
            g = torch.randn((n, d), generator=generator, device=dev, dtype=dt)
            g = g / g.norm(dim=1, keepdim=True).clamp_min(1e-12)
            r = torch.rand((n, 1), generator=generator, device=dev, dtype=dt) ** (1.0 / max(d, 1))
            delta = (g * r * self.eps).reshape(x.shape)
        else:
            e = -torch.log(torch.rand((n, d + 1), generator=generator, device=dev, dtype=dt).clamp_min(1e-12))
            mag = e[:, :d] / e.sum(dim=1, keepdim=True)
            sign = torch.randint(0, 2, (n, d), generator=generator, device=dev).to(dt) * 2 - 1
            delta = (mag * sign * self.eps).reshape(x.shape)
        return (x + delta).clamp(*self.bounds)


#: what :meth:`ThreatModel.coerce` accepts
ThreatLike: TypeAlias = Union[ThreatModel, str, Mapping[str, Any]]


def _project_l1_box(z: torch.Tensor, a: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
    """Exact projection of rows of ``z`` onto ``{d : ||d||_1 <= eps, a <= d <= b}`` (a <= 0 <= b).

    g(lam) = sum_i clamp(|z_i| - lam, 0, c_i) is piecewise linear and non-increasing with
    breakpoints at |z_i| - c_i (slope gains -1) and |z_i| (slope loses -1). Sorting the 2d
    breakpoints and accumulating slopes gives g at every breakpoint; lam is interpolated in the
    interval where g crosses eps. O(d log d) per row.
    """
    absz = z.abs()
    cap = torch.where(z >= 0, b, -a)  # room in the direction of z, >= 0
    mag0 = torch.minimum(absz, cap)  # value at lam = 0 (just the box clip)
    need = mag0.sum(dim=1) > eps
    out = torch.sign(z) * mag0
    if not bool(need.any()):
        return out
    zr, cr = absz[need], cap[need]
    n, d = zr.shape
    bps = torch.cat([zr - cr, zr], dim=1)  # (n, 2d)
    events = torch.cat([torch.ones_like(zr), -torch.ones_like(zr)], dim=1)  # slope magnitude change
    order = torch.argsort(bps, dim=1)
    bps_s = torch.gather(bps, 1, order)
    ev_s = torch.gather(events, 1, order)
    slope = torch.cumsum(ev_s, dim=1)  # number of active (slope -1) terms right of each breakpoint
    gaps = bps_s[:, 1:] - bps_s[:, :-1]
    g0 = cr.sum(dim=1, keepdim=True)  # g at the smallest breakpoint: every term saturated
    g = torch.cat([g0, g0 - torch.cumsum(slope[:, :-1] * gaps, dim=1)], dim=1)  # g at each breakpoint
    # first breakpoint index j with g(bp_j) <= eps; lam lies in [bp_{j-1}, bp_j]
    below = g <= eps
    j = torch.argmax(below.to(torch.int8), dim=1).clamp(min=1)
    jm = (j - 1).unsqueeze(1)
    g_prev = torch.gather(g, 1, jm).squeeze(1)
    bp_prev = torch.gather(bps_s, 1, jm).squeeze(1)
    k = torch.gather(slope, 1, jm).squeeze(1).clamp(min=1)
    lam = (bp_prev + (g_prev - eps) / k).clamp(min=0)
    mag = (zr - lam.unsqueeze(1)).clamp(min=0)
    mag = torch.minimum(mag, cr)
    out[need] = torch.sign(z[need]) * mag
    return out


def _project_l2_box(z: torch.Tensor, a: torch.Tensor, b: torch.Tensor, eps: float, iters: int = 40) -> torch.Tensor:
    """Exact projection onto ``{d : ||d||_2 <= eps, a <= d <= b}`` by bisection on the multiplier.

    d(mu) = clamp(z / (1 + mu), a, b); ||d(mu)|| decreases in mu; find mu with ||d(mu)|| = eps.
    """
    d0 = torch.maximum(torch.minimum(z, b), a)
    need = d0.norm(dim=1) > eps
    if not bool(need.any()):
        return d0
    zr, ar, br = z[need], a[need], b[need]
    if eps == 0:
        d0[need] = 0
        return d0
    lo = torch.zeros(zr.shape[0], 1, dtype=z.dtype, device=z.device)
    hi = (zr.norm(dim=1, keepdim=True) / eps).clamp(min=1.0)  # at mu=hi, ||z/(1+mu)|| <= eps
    for _ in range(iters):
        mid = (lo + hi) / 2
        nrm = torch.maximum(torch.minimum(zr / (1 + mid), br), ar).norm(dim=1, keepdim=True)
        too_big = nrm > eps
        lo = torch.where(too_big, mid, lo)
        hi = torch.where(too_big, hi, mid)
    d0[need] = torch.maximum(torch.minimum(zr / (1 + hi), br), ar)
    return d0
