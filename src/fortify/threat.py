"""The threat model shared by attacks, training, certification and reports.

A :class:`ThreatModel` is data: a norm (``"linf"``, ``"l2"`` or ``"l1"``), a radius ``eps`` and the
valid input box ``bounds`` (default ``(0, 1)``). Tensors are batched, shape ``(N, ...)``; norms are
taken per sample over all non-batch dimensions.

Non-image data adds optional per-feature fields, each broadcastable to *one example's* shape
(``(F,)`` for a table ``(N, F)``): ``bounds = (lo, hi)`` as tensors; ``mask`` (bool, ``True`` where
a feature may move: attacks never change an immutable feature, certifiers give it zero width;
categorical one-hot groups are *held fixed*, not perturbed: :func:`schema_mask`); ``scale`` (> 0,
e.g. the train std) so that ``eps`` and :meth:`ThreatModel.distance` are in standardised units:
the set is ``{x' : ||(x' - x) / scale||_p <= eps, lo <= x' <= hi, x'_i = x_i off the mask}``.
Without them (the scalar case) every method runs exactly the code it always ran.

Projections are onto the *intersection* of the norm ball around ``x`` and the input box; a masked
feature is a box of zero width, so every projection below stays exact with a mask:

* ``linf``: exact (separable: clamp per coordinate, to ``[-eps s_i, eps s_i]`` with a scale).
* ``l1``: exact, by the sort-based method of Duchi et al. 2008 ("Efficient projections onto the
  l1-ball for learning in high dimensions") extended to per-coordinate box caps:
  ``delta_i = sign(z_i) * clamp(|z_i| - lam w_i, 0, c_i)`` (``c_i`` the room to the box in the
  direction of ``z_i``, ``w_i = 1 / s_i``, 1 without a scale) with ``lam >= 0`` the root of the
  piecewise-linear decreasing ``sum_i w_i clamp(...) - eps``, found from the sorted breakpoints.
* ``l2``: exact up to the bisection tolerance (always on the feasible side),
  ``delta_i = clamp(z_i / (1 + mu / s_i^2), a_i, b_i)`` with ``mu >= 0`` found by bisection (the
  standard "scale then clip" is the first bisection step and is only approximate).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Iterable, Literal, Mapping, Sequence, TypeAlias, Union

import torch

from fortify.errors import InputError, ThreatModelError
from fortify.validation import Bounds, broadcasts_to, check_finite_number

Norm = Literal["linf", "l2", "l1"]
NORMS: tuple[str, ...] = ("linf", "l2", "l1")
#: Relative slack used by :meth:`ThreatModel.contains` to absorb float32 rounding.
CONTAINS_RTOL = 1e-5
CONTAINS_ATOL = 1e-6


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1)


def _as_tensor(value: object, name: str, *, boolean: bool = False) -> torch.Tensor:
    """A detached CPU copy of ``value`` (tensor, nested list or numpy array): float64, or bool when
    ``boolean`` (0/1 numbers accepted); ThreatModelError for anything else."""
    try:
        t = value.detach().cpu().clone() if isinstance(value, torch.Tensor) else torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError):
        raise ThreatModelError(f"{name} must be a tensor or a list of numbers, got {value!r}") from None
    if boolean:
        if t.dtype != torch.bool and (t.is_complex() or not bool(((t == 0) | (t == 1)).all())):
            raise ThreatModelError(f"{name} must be boolean (True: the feature may move), got {value!r}")
        return t != 0
    if t.dtype == torch.bool or t.is_complex() or not bool(torch.isfinite(t.to(torch.float64)).all()):
        raise ThreatModelError(f"{name} must hold finite real numbers, got {value!r}")
    return t.to(torch.float64)


@dataclass(frozen=True, eq=False)
class ThreatModel:
    """Perturbation set ``{x' : ||(x' - x) / scale||_norm <= eps, lo <= x' <= hi, x'_i = x_i off mask}``.

    Args:
        norm: ``"linf"``, ``"l2"`` or ``"l1"``.
        eps: radius, a finite real number ``>= 0`` (``bool`` and ``str`` are refused: ``eps=True``
            or ``eps="0.1"`` is a mistake, not 1.0 or 0.1; use :meth:`parse` for text).
        bounds: ``(lo, hi)`` valid input range: finite numbers with ``lo < hi``, or a pair of
            tensors (or lists) broadcastable to one example's shape with ``lo < hi`` everywhere.
        mask: optional bool tensor broadcastable to one example's shape, ``True`` where a feature
            may move (``False``: immutable, never changed by an attack; zero width for certifiers).
        scale: optional positive tensor (per-feature units, e.g. the train std): ``eps`` and
            :meth:`distance` are then in standardised units ``(x' - x) / scale``.

    Every invalid value raises :class:`fortify.errors.ThreatModelError` (a ``ConfigError``). The
    tensors are stored as CPU copies (float64, mask bool) and moved to the input's device on use.
    """

    norm: str
    eps: float
    bounds: Bounds = (0.0, 1.0)
    mask: torch.Tensor | None = None
    scale: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.norm, str) or self.norm not in NORMS:
            raise ThreatModelError(f"unknown norm {self.norm!r}; allowed: {', '.join(NORMS)}")
        eps = check_finite_number(self.eps, "eps", error=ThreatModelError)
        if eps < 0:
            raise ThreatModelError(f"eps must be a finite number >= 0, got {self.eps!r}")
        if isinstance(self.bounds, (str, bytes)) or not hasattr(self.bounds, "__len__") or len(self.bounds) != 2:
            raise ThreatModelError(f"bounds must be a pair (lo, hi), got {self.bounds!r}")
        object.__setattr__(self, "eps", eps)
        if any(isinstance(b, (torch.Tensor, list, tuple)) or type(b).__name__ == "ndarray" for b in self.bounds):
            lo_t, hi_t = (_as_tensor(b, "bounds") for b in self.bounds)
            self._broadcast("bounds", lo_t.shape, hi_t.shape)
            if not bool((lo_t < hi_t).all()):
                raise ThreatModelError("per-feature bounds must have lo < hi for every feature")
            object.__setattr__(self, "bounds", (lo_t, hi_t))
        else:
            lo, hi = (check_finite_number(b, "bounds", error=ThreatModelError) for b in self.bounds)
            if not lo < hi:
                raise ThreatModelError(f"bounds must be finite with lo < hi, got {self.bounds!r}")
            object.__setattr__(self, "bounds", (lo, hi))
        if self.mask is not None:
            object.__setattr__(self, "mask", _as_tensor(self.mask, "mask", boolean=True))
        if self.scale is not None:
            object.__setattr__(self, "scale", _as_tensor(self.scale, "scale"))
            if not bool((self.scale > 0).all()):  # type: ignore[operator]
                raise ThreatModelError("scale must be > 0 for every feature (it divides the perturbation)")
        self._broadcast("bounds, mask and scale", *(t.shape for t in self._tensors()))

    @staticmethod
    def _broadcast(what: str, *shapes: torch.Size) -> None:
        rank = max((len(s) for s in shapes), default=0)
        padded = [(1,) * (rank - len(s)) + tuple(s) for s in shapes]
        for dims in zip(*padded):
            if len(set(dims) - {1}) > 1:
                raise ThreatModelError(f"{what} have shapes {[tuple(s) for s in shapes]} that do not broadcast")

    def _tensors(self) -> list[torch.Tensor]:
        return [t for t in (*self.bounds, self.mask, self.scale) if isinstance(t, torch.Tensor)]

    @property
    def per_feature(self) -> bool:
        """True when any of per-feature bounds, ``mask`` or ``scale`` is set (the scalar fast path otherwise)."""
        return self.mask is not None or self.scale is not None or isinstance(self.bounds[0], torch.Tensor)

    def _key(self) -> tuple[Any, ...]:
        return (self.norm, self.eps) + tuple((tuple(v.shape), tuple(v.flatten().tolist())) if isinstance(
            v, torch.Tensor) else v for v in (*self.bounds, self.mask, self.scale))

    def __eq__(self, other: object) -> bool:
        return self._key() == other._key() if isinstance(other, ThreatModel) else NotImplemented

    def __hash__(self) -> int:  # by value, like __eq__
        return hash(self._key())

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
        or a mapping ``{"norm": "linf", "eps": 0.3[, "bounds": [lo, hi]][, "mask": [...]]
        [, "scale": [...]]}`` (e.g. from a recipe; per-feature ``bounds`` as ``[[lo...], [hi...]]``).
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
                               f"{{norm, eps[, bounds, mask, scale]}}, got {type(threat).__name__} {threat!r}")

    @classmethod
    def _from_mapping(cls, spec: Mapping[Any, Any]) -> "ThreatModel":
        """``{"norm", "eps"[, "bounds", "mask", "scale"]}`` -> ThreatModel; ThreatModelError naming
        unknown / missing keys."""
        allowed = ("norm", "eps", "bounds", "mask", "scale")
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
        return cls(spec["norm"], spec["eps"], bounds, spec.get("mask"), spec.get("scale"))

    def to_spec(self) -> dict[str, Any]:
        """Plain data that :meth:`coerce` reads back to an equal ThreatModel (lists for the tensors)."""
        out: dict[str, Any] = {"norm": self.norm, "eps": self.eps}
        out["bounds"] = [b.tolist() if isinstance(b, torch.Tensor) else b for b in self.bounds]
        out.update({k: v.tolist() for k, v in (("mask", self.mask), ("scale", self.scale)) if v is not None})
        return out

    def __str__(self) -> str:  # NORM:EPS (per-feature fields: see to_spec)
        return f"{self.norm}:{self.eps:g}"

    def with_eps(self, eps: float) -> "ThreatModel":
        """The same set with radius ``eps`` (bounds, mask and scale kept)."""
        if not self.per_feature:
            return ThreatModel(self.norm, eps, self.bounds)
        return replace(self, eps=eps)

    @property
    def dual_norm_p(self) -> float:
        """The exponent q of the dual norm (1/p + 1/q = 1): linf->1, l2->2, l1->inf."""
        return {"linf": 1.0, "l2": 2.0, "l1": math.inf}[self.norm]

    def check_sample_shape(self, x: torch.Tensor, *, name: str = "x") -> None:
        """InputError unless every per-feature tensor broadcasts to one example of ``x (N, ...)``."""
        sample = torch.Size(x.shape[1:])
        for t in self._tensors():
            if not broadcasts_to(t.shape, sample):
                raise InputError(f"the threat model's per-feature tensors have shape {tuple(t.shape)}, which does "
                                 f"not fit {name}'s example shape {tuple(sample)}")

    def box(self, like: torch.Tensor) -> tuple[float, float] | tuple[torch.Tensor, torch.Tensor]:
        """``(lo, hi)``: floats for scalar bounds, else tensors on ``like``'s device and dtype that
        broadcast against one example (or a batch ``(N, ...)``) of ``like``."""
        lo, hi = self.bounds
        if isinstance(lo, torch.Tensor) and isinstance(hi, torch.Tensor):
            return lo.to(like.device, like.dtype), hi.to(like.device, like.dtype)
        return float(lo), float(hi)  # type: ignore[arg-type]

    def envelope(self) -> tuple[float, float]:
        """The smallest scalar box ``(lo, hi)`` containing the (per-feature) bounds: for checks and
        sizes that need one number per side (validation of a batch, the box's diameter)."""
        lo, hi = self.bounds
        return (float(lo.min()) if isinstance(lo, torch.Tensor) else float(lo),
                float(hi.max()) if isinstance(hi, torch.Tensor) else float(hi))

    def free(self, like: torch.Tensor) -> torch.Tensor | None:
        """The mask (True: may move) on ``like``'s device; ``None`` when every feature may move."""
        return None if self.mask is None else self.mask.to(like.device)

    def units(self, like: torch.Tensor) -> torch.Tensor | None:
        """``scale`` on ``like``'s device and dtype; ``None`` without one."""
        return None if self.scale is None else self.scale.to(like.device, like.dtype)

    def standardised(self) -> "ThreatModel":
        """The same set in standardised coordinates ``u = x / scale``: bounds ``lo / s, hi / s``, the
        same mask, no scale (for attacks, which search where eps is isotropic)."""
        if self.scale is None:
            return self
        lo, hi = self.bounds
        return ThreatModel(self.norm, self.eps, (lo / self.scale, hi / self.scale), self.mask, None)

    def clip(self, x_new: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``x_new`` clipped to the box with the immutable features reset to ``x`` (not the ball)."""
        lo, hi = self.box(x)
        out = x_new.clamp(lo, hi)  # type: ignore[arg-type]
        free = self.free(x)
        return out if free is None else torch.where(free, out, x)

    def input_box(self, x: torch.Tensor, eps: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The smallest box around ``x (N, ...)`` containing the set (of radius ``eps``): the linf ball
        of radius ``eps * scale`` intersected with the bounds, zero width on immutable features.
        Certifiers start interval propagation from it."""
        e = self.eps if eps is None else float(eps)
        if not self.per_feature:
            blo, bhi = self.bounds
            return (x - e).clamp(min=blo), (x + e).clamp(max=bhi)  # type: ignore[call-overload]
        lo, hi = self.box(x)
        s = self.units(x)
        r = e if s is None else e * s
        low, high = torch.maximum(x - r, torch.as_tensor(lo).to(x)), torch.minimum(x + r, torch.as_tensor(hi).to(x))
        free = self.free(x)
        return (low, high) if free is None else (torch.where(free, low, x), torch.where(free, high, x))

    def dual_radius(self, eps: float | None = None) -> float:
        """A radius ``r`` with the set inside the *unscaled* ball of radius ``r``: ``eps * max(scale)``
        (``||delta||_p <= max(s) ||delta / s||_p``), ``eps`` without a scale; for dual-norm bounds."""
        e = self.eps if eps is None else float(eps)
        return e if self.scale is None else e * float((self.scale if self.mask is None else self.scale * self.mask).max())

    # ------------------------------------------------------------------ geometry
    def distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Per-sample distance ``||(a - b) / scale||`` in this norm (``scale`` 1 without one); ``(N,)``."""
        if a.shape != b.shape:
            raise InputError(f"distance needs equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
        s = self.units(a)
        d = _flat(a - b) if s is None else _flat((a - b) / s)
        if self.norm == "linf":
            return d.abs().amax(dim=1) if d.shape[1] else d.new_zeros(d.shape[0])
        if self.norm == "l2":
            l2: torch.Tensor = d.norm(p=2, dim=1)
            return l2
        return d.abs().sum(dim=1)

    def contains(self, x_adv: torch.Tensor, x: torch.Tensor, *, atol: float = CONTAINS_ATOL) -> torch.Tensor:
        """Per-sample bool: ``x_adv`` is within ``eps`` of ``x``, inside the bounds and unchanged on
        immutable features (float slack ``atol``)."""
        lo, hi = self.box(x_adv)
        within = self.distance(x_adv, x) <= self.eps * (1 + CONTAINS_RTOL) + atol
        ok = (x_adv >= lo - atol) & (x_adv <= hi + atol)  # type: ignore[operator]
        free = self.free(x)
        if free is not None:
            ok = ok & (free | ((x_adv - x).abs() <= atol))
        return within & _flat(ok).all(dim=1)

    def clip_bounds(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` clamped into the (per-feature) bounds."""
        return x.clamp(*self.box(x))  # type: ignore[arg-type]

    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Euclidean projection of ``x_adv`` onto the ball around ``x`` intersected with the box
        (immutable features: a box of zero width, so they come back equal to ``x``).

        ``x`` must itself lie in the box. Shapes ``(N, ...)``; returns a tensor like ``x_adv``.
        """
        if x_adv.shape != x.shape:
            raise InputError(f"project needs equal shapes, got {tuple(x_adv.shape)} and {tuple(x.shape)}")
        if self.per_feature:
            return self._project_general(x_adv, x)
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
        return (x + delta).clamp(lo, hi)  # type: ignore[arg-type]

    def _project_general(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """:meth:`project` with per-feature bounds, mask and / or scale (see the module docstring)."""
        lo, hi = self.box(x)
        free = self.free(x)
        s = self.units(x)
        z = x_adv - x
        a = (lo - x).clamp(max=0)
        b = (hi - x).clamp(min=0)
        if free is not None:  # an immutable feature is a box of zero width
            a, b = a.masked_fill(~free, 0.0), b.masked_fill(~free, 0.0)
        if self.norm == "linf":
            zc = z.clamp(-self.eps, self.eps) if s is None else torch.maximum(torch.minimum(z, self.eps * s),
                                                                                -self.eps * s)
            delta = torch.maximum(torch.minimum(zc, b), a)
        else:
            w = None if s is None else _flat(torch.broadcast_to(1.0 / s, x.shape))
            if self.norm == "l1":
                delta = _project_l1_box(_flat(z), _flat(a), _flat(b), self.eps, w).reshape(z.shape)
            else:
                delta = _project_l2_box(_flat(z), _flat(a), _flat(b), self.eps, w=w).reshape(z.shape)
        out = torch.minimum(torch.maximum(x + delta, torch.as_tensor(lo).to(x)), torch.as_tensor(hi).to(x))
        return out if free is None else torch.where(free, out, x)

    def random_init(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A random point of the threat set around ``x`` (uniform in the ball, then box-clipped).

        linf: uniform per coordinate. l2: Gaussian direction, radius ``eps * U^(1/d)``.
        l1: uniform in the l1 ball via normalised exponentials with random signs. With a mask: the
        ball of the ``d`` free features; with a scale: mapped by ``delta -> scale * delta`` (still uniform).
        """
        n = x.shape[0]
        d = _flat(x).shape[1]
        dev, dt = x.device, x.dtype
        mask = self.free(x)
        free = None if mask is None else _flat(torch.broadcast_to(mask, x.shape)).to(dt)
        k = d if free is None else int(free[0].sum())
        if self.norm == "linf":
            delta = (torch.rand((n, d), generator=generator, device=dev, dtype=dt) * 2 - 1) * self.eps
            delta = delta if free is None else delta * free
        elif self.norm == "l2":
            g = torch.randn((n, d), generator=generator, device=dev, dtype=dt)
            g = g if free is None else g * free
            g = g / g.norm(dim=1, keepdim=True).clamp_min(1e-12)
            r = torch.rand((n, 1), generator=generator, device=dev, dtype=dt) ** (1.0 / max(k, 1))
            delta = g * r * self.eps
        else:
            e = -torch.log(torch.rand((n, d + 1), generator=generator, device=dev, dtype=dt).clamp_min(1e-12))
            e = e if free is None else torch.cat([e[:, :d] * free, e[:, d:]], dim=1)
            mag = e[:, :d] / e.sum(dim=1, keepdim=True)
            sign = torch.randint(0, 2, (n, d), generator=generator, device=dev).to(dt) * 2 - 1
            delta = mag * sign * self.eps
        s = self.units(x)
        step = delta.reshape(x.shape) if s is None else delta.reshape(x.shape) * s
        return self.clip(x + step, x)

#: what :meth:`ThreatModel.coerce` accepts
ThreatLike: TypeAlias = Union[ThreatModel, str, Mapping[str, Any]]


def schema_mask(schema: Any, immutable: Iterable[str] = (), *, categorical_fixed: bool = True) -> torch.Tensor:
    """The ``mask`` (``(F,)`` bool, True: may move) for a table encoded by a
    :class:`fortify.data.files.TableSchema` (numeric columns, then one one-hot slot per category).

    Categorical features are **held fixed** (not perturbed) by default: a one-hot group moved
    coordinate-wise leaves the set of valid encodings, so ``categorical_fixed=True`` marks every
    ``column=value`` slot immutable; ``immutable`` names further columns (numeric names, or a
    categorical column name for its whole group). Unknown names are a ThreatModelError.
    """
    features: Sequence[str] = tuple(schema.features)
    categorical: Mapping[str, Sequence[str]] = dict(getattr(schema, "categorical", {}) or {})
    fixed = set(immutable)
    known = set(features) | set(categorical)
    unknown = sorted(fixed - known)
    if unknown:
        raise ThreatModelError(f"immutable feature(s) {', '.join(map(repr, unknown))} are not columns of the table; "
                               f"known: {', '.join(sorted(known))}")
    column = [n.split("=", 1)[0] if n.split("=", 1)[0] in categorical and "=" in n else None for n in features]
    return torch.tensor([n not in fixed and not (c is not None and (categorical_fixed or c in fixed))
                         for n, c in zip(features, column)], dtype=torch.bool)



def _project_l1_box(z: torch.Tensor, a: torch.Tensor, b: torch.Tensor, eps: float,
                    w: torch.Tensor | None = None) -> torch.Tensor:
    """Exact projection of rows of ``z`` onto ``{d : sum_i w_i |d_i| <= eps, a <= d <= b}`` (a <= 0 <= b;
    ``w = 1 / scale`` > 0, all ones when ``None``: then the original unweighted arithmetic runs).

    g(lam) = sum_i w_i clamp(|z_i| - lam w_i, 0, c_i) is piecewise linear and non-increasing with
    breakpoints at (|z_i| - c_i) / w_i (slope gains -w_i^2) and |z_i| / w_i (slope loses -w_i^2).
    Sorting the 2d breakpoints and accumulating slopes gives g at every breakpoint; lam is
    interpolated in the interval where g crosses eps. O(d log d) per row.
    """
    absz = z.abs()
    cap = torch.where(z >= 0, b, -a)  # room in the direction of z, >= 0
    mag0 = torch.minimum(absz, cap)  # value at lam = 0 (just the box clip)
    need = (mag0 if w is None else w * mag0).sum(dim=1) > eps
    out = torch.sign(z) * mag0
    if not bool(need.any()):
        return out
    zr, cr = absz[need], cap[need]
    if w is None:
        bps = torch.cat([zr - cr, zr], dim=1)  # (n, 2d)
        events = torch.cat([torch.ones_like(zr), -torch.ones_like(zr)], dim=1)  # slope magnitude change
        g0 = cr.sum(dim=1, keepdim=True)  # g at the smallest breakpoint: every term saturated
    else:
        wr = w[need]
        bps = torch.cat([(zr - cr) / wr, zr / wr], dim=1)
        events = torch.cat([wr * wr, -wr * wr], dim=1)
        g0 = (wr * cr).sum(dim=1, keepdim=True)
    order = torch.argsort(bps, dim=1)
    bps_s = torch.gather(bps, 1, order)
    ev_s = torch.gather(events, 1, order)
    slope = torch.cumsum(ev_s, dim=1)  # magnitude of the slope right of each breakpoint
    gaps = bps_s[:, 1:] - bps_s[:, :-1]
    g = torch.cat([g0, g0 - torch.cumsum(slope[:, :-1] * gaps, dim=1)], dim=1)  # g at each breakpoint
    # first breakpoint index j with g(bp_j) <= eps; lam lies in [bp_{j-1}, bp_j]
    below = g <= eps
    j = torch.argmax(below.to(torch.int8), dim=1).clamp(min=1)
    jm = (j - 1).unsqueeze(1)
    g_prev = torch.gather(g, 1, jm).squeeze(1)
    bp_prev = torch.gather(bps_s, 1, jm).squeeze(1)
    k = torch.gather(slope, 1, jm).squeeze(1).clamp(min=1 if w is None else torch.finfo(z.dtype).tiny)
    lam = (bp_prev + (g_prev - eps) / k).clamp(min=0)
    if w is None:
        mag = (zr - lam.unsqueeze(1)).clamp(min=0)
        mag = torch.minimum(mag, cr)
    else:
        mag = torch.minimum((zr - lam.unsqueeze(1) * wr).clamp(min=0), cr)
        tot = (wr * mag).sum(dim=1, keepdim=True)  # float rounding: never leave the ball (a few ulps)
        mag = torch.where(tot > eps, mag * (eps / tot.clamp_min(torch.finfo(z.dtype).tiny)), mag)
    out[need] = torch.sign(z[need]) * mag
    return out


def _project_l2_box(z: torch.Tensor, a: torch.Tensor, b: torch.Tensor, eps: float, iters: int = 40,
                    w: torch.Tensor | None = None) -> torch.Tensor:
    """Exact projection onto ``{d : ||d * w||_2 <= eps, a <= d <= b}`` by bisection on the multiplier
    (``w = 1 / scale``, ones when ``None``: then the original unweighted arithmetic runs).

    d(mu) = clamp(z / (1 + mu w^2), a, b); ||d(mu) w|| decreases in mu; find mu with ||d(mu) w|| = eps.
    Bracket: ``||d w|| <= ||z w|| / (mu min w^2)``; weighted runs use 60 bisection steps.
    """
    d0 = torch.maximum(torch.minimum(z, b), a)
    need = (d0 if w is None else d0 * w).norm(dim=1) > eps
    if not bool(need.any()):
        return d0
    zr, ar, br = z[need], a[need], b[need]
    if eps == 0:
        d0[need] = 0
        return d0
    wr = None if w is None else w[need]
    w2 = None if wr is None else wr * wr

    def at(mu: torch.Tensor) -> torch.Tensor:
        return torch.maximum(torch.minimum(zr / (1 + mu if w2 is None else 1 + mu * w2), br), ar)

    lo = torch.zeros(zr.shape[0], 1, dtype=z.dtype, device=z.device)
    if wr is None or w2 is None:
        hi = (zr.norm(dim=1, keepdim=True) / eps).clamp(min=1.0)  # at mu=hi, ||z/(1+mu)|| <= eps
    else:
        hi = (zr * wr).norm(dim=1, keepdim=True) / eps / w2.amin(dim=1, keepdim=True) + 1.0
        iters = max(iters, 60)
    for _ in range(iters):
        mid = (lo + hi) / 2
        d = at(mid)
        too_big = (d if wr is None else d * wr).norm(dim=1, keepdim=True) > eps
        lo = torch.where(too_big, mid, lo)
        hi = torch.where(too_big, hi, mid)
    d0[need] = at(hi)
    return d0
