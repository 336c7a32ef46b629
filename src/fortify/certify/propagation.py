"""IBP and CROWN certifiers, and the differentiable margin bounds that certified training uses.

``margin_lower_bound(model, x, y, threat, method)`` returns ``(B, K)`` lower bounds of
``z_y - z_j`` for every class ``j`` (0 for ``j = y``) and is differentiable in the model's
parameters for ``method`` in ``ibp`` / ``crown-ibp``; the certifiers take the minimum over
``j != y`` under ``torch.no_grad`` with memory-aware chunking of the batch.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fortify import progress
from fortify.certify.base import CERTIFIERS, Certificate, Certifier
from fortify.certify.bounds import InputSet, ibp_margin, margin_spec
from fortify.certify.crown import _row_bytes, crown_margin
from fortify.certify.dag import Dag
from fortify.certify.dag import crown_margin as dag_crown_margin
from fortify.certify.dag import ibp_margin as dag_ibp_margin
from fortify.certify.graph import build_net
from fortify.errors import ConfigError, ThreatModelError
from fortify.threat import ThreatModel

BOUND_METHODS = ("ibp", "crown", "crown-ibp")


@dataclass(frozen=True)
class BoundOptions:
    """Options of the CROWN bounds of :func:`margin_lower_bound`.

    * ``memory_budget``: bytes of backward temporaries per chunk of specification rows;
    * ``intersect_ibp``: take the elementwise maximum with the IBP bound (both sound);
    * ``alpha_steps`` / ``alpha_rows``: Adam steps on the final pass's lower ReLU slopes, and the
      number of lowest margin rows per sample they optimise (0: all rows;
      :func:`fortify.certify.crown.optimize_slopes`).
    """

    memory_budget: int = 2 << 30
    intersect_ibp: bool = True
    alpha_steps: int = 0
    alpha_rows: int = 0


_OPTION_NAMES = tuple(f.name for f in dataclasses.fields(BoundOptions))


def margin_lower_bound(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    threat: ThreatModel,
    method: str = "ibp",
    *,
    eps: float | None = None,
    keep_true_row: bool = True,
    options: BoundOptions | None = None,
    **option_kwargs: Any,
) -> torch.Tensor:
    """Lower bounds of ``z_y - z_j`` over the threat set: ``(B, K)`` (zero column at ``y``) or
    ``(B, K-1)`` without it. ``method``: ``ibp`` (Gowal et al. 2018), ``crown`` (CROWN intermediate
    and final bounds), ``crown-ibp`` (IBP intermediate bounds, CROWN final bound; Zhang et al. 2020).
    ``eps`` overrides ``threat.eps`` (eps ramps). ``options``: :class:`BoundOptions`; its fields may
    also be given as keywords (``memory_budget=``, ``intersect_ibp=``, ``alpha_steps=``,
    ``alpha_rows=``), which override ``options``. Slope optimisation (``alpha_steps > 0``) is for
    CROWN methods only and not differentiable in the model; the bound is differentiable in the
    model's parameters otherwise. Does not change the model's mode. Cost: IBP one forward pass of
    intervals; CROWN one backward pass per refined layer (see :mod:`fortify.certify.crown`)."""
    unknown = sorted(set(option_kwargs) - set(_OPTION_NAMES))
    if unknown:
        raise ConfigError(f"unknown bound option(s) {', '.join(unknown)}; allowed: {', '.join(_OPTION_NAMES)}")
    opts = dataclasses.replace(options or BoundOptions(), **option_kwargs)
    if method not in BOUND_METHODS:
        raise ConfigError(f"unknown bound method {method!r}; allowed: {', '.join(BOUND_METHODS)}")
    e = threat.eps if eps is None else float(eps)
    if not math.isfinite(e) or e < 0:
        raise ThreatModelError(f"eps must be a finite number >= 0, got {eps!r}")
    net = build_net(model, tuple(x.shape[1:]), x)
    out_shape = net.out_shape if isinstance(net, Dag) else (net[-1].out_shape if net else None)
    if out_shape is None or len(out_shape) != 1:
        raise ConfigError(f"the model must end in a layer producing logits (N, K); got output shape "
                          f"{out_shape if out_shape is not None else 'unchanged input'}")
    c = margin_spec(y, out_shape[0], keep_true_row=keep_true_row).to(x.dtype)
    inp = InputSet.from_threat(x, threat, e)
    inter = "crown" if method == "crown" else "ibp"
    if isinstance(net, Dag):  # residual / concat graphs: the DAG driver
        if method == "ibp":
            return dag_ibp_margin(net, inp, c)
        low, _ = dag_crown_margin(net, inp, c, intermediate=inter, intersect_ibp=opts.intersect_ibp,
                                  memory_budget=opts.memory_budget, alpha_steps=opts.alpha_steps,
                                  alpha_rows=opts.alpha_rows)
        return low
    if method == "ibp":
        return ibp_margin(net, inp, c)
    low, _ = crown_margin(net, inp, c, intermediate=inter, intersect_ibp=opts.intersect_ibp,
                          memory_budget=opts.memory_budget, alpha_steps=opts.alpha_steps, alpha_rows=opts.alpha_rows)
    return low


def robust_logits(lower: torch.Tensor) -> torch.Tensor:
    """Worst-case logits from a ``(B, K)`` margin lower bound: ``-lower`` (``z_y - z_j >= lower_j``
    means cross-entropy on ``-lower`` upper-bounds the worst-case cross-entropy; Wong & Kolter 2018)."""
    return -lower


def _count(v: object, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ConfigError(f"{name} must be an int >= 0, got {v!r}")
    return v


class _BoundCertifier(Certifier):
    method: str = "ibp"
    #: defaults of the final-pass slope optimisation (CROWN certifiers)
    default_alpha_steps: int = 0
    default_alpha_rows: int = 0

    def __init__(self, batch_size: int = 256, memory_budget: int = 2 << 30, intersect_ibp: bool = True,
                 alpha_steps: int | None = None, alpha_rows: int | None = None) -> None:
        if int(batch_size) < 1 or int(memory_budget) < 1 << 20:
            raise ConfigError("batch_size must be >= 1 and memory_budget >= 1 MiB")
        self.batch_size = int(batch_size)
        self.memory_budget = int(memory_budget)
        self.intersect_ibp = bool(intersect_ibp)
        steps = self.default_alpha_steps if alpha_steps is None else alpha_steps
        rows = self.default_alpha_rows if alpha_rows is None else alpha_rows
        self.alpha_steps = _count(steps, "alpha_steps")
        self.alpha_rows = _count(rows, "alpha_rows")
        if self.method == "ibp" and self.alpha_steps:
            raise ConfigError("alpha_steps needs a CROWN method (ibp has no linear relaxation to optimise)")

    def _chunk(self, model: nn.Module, x: torch.Tensor) -> int:
        """Batch chunk: at most ``batch_size``, and small enough that 16 specification rows of the
        widest backward pass fit into ``memory_budget`` (CROWN only)."""
        if self.method == "ibp":
            return self.batch_size
        net = build_net(model, tuple(x.shape[1:]), x)
        per_sample = 32 * (net.row_bytes() if isinstance(net, Dag) else _row_bytes(net, len(net)))
        return max(1, min(self.batch_size, self.memory_budget // max(per_sample, 1)))

    def _run(self, model, x, y, threat):
        chunk = self._chunk(model, x)
        options = BoundOptions(self.memory_budget, self.intersect_ibp, self.alpha_steps, self.alpha_rows)
        lows = []
        with progress.task(f"certify {self.name} {threat}", total=-(-x.shape[0] // chunk), unit="chunks") as bar:
            for s in range(0, x.shape[0], chunk):
                low = margin_lower_bound(model, x[s:s + chunk], y[s:s + chunk], threat, self.method,
                                         keep_true_row=False, options=options)
                lows.append(low.amin(dim=1))
                bar.advance(info=f"{min(s + chunk, x.shape[0])}/{x.shape[0]} images")
        lower = torch.cat(lows)
        return Certificate(lower_margin=lower, certified=lower > 0, method=self.name)


@CERTIFIERS.register("ibp", help="interval bound propagation (Gowal et al. 2018)")
class IBPCertifier(_BoundCertifier):
    """Interval bound propagation with the margin folded into the last linear layer."""

    method = "ibp"


@CERTIFIERS.register("crown", help="CROWN backward linear bounds, adaptive ReLU slopes (Zhang et al. 2018)")
class CROWNCertifier(_BoundCertifier):
    """CROWN with CROWN intermediate bounds (adaptive slopes ``1[u > -l]``); the result is
    intersected with IBP by default. The final pass then takes 3 steps of slope optimisation on the
    2 lowest margin rows of each sample (``alpha_steps=3, alpha_rows=2``; +8-22% time on
    small-cnn and madry-cnn, benchmarks/certify.py): CROWN-Ada's slope choice is a heuristic and is not monotone in the intermediate
    bounds, so without it a bound can come out looser than another CROWN implementation's on a
    few images; ``alpha_steps=0`` gives plain CROWN-Ada."""

    method = "crown"
    default_alpha_steps = 3
    default_alpha_rows = 2


@CERTIFIERS.register("alpha-crown", help="CROWN with optimised final-pass ReLU slopes (alpha-CROWN, Xu et al. 2021)")
class AlphaCROWNCertifier(_BoundCertifier):
    """CROWN intermediate bounds, then 20 Adam steps on the lower ReLU slopes of the final pass for
    every margin row (alpha-CROWN restricted to the final specification: the intermediate bounds
    are CROWN-Ada's, not re-optimised). Tighter than ``crown``, several times its final-pass cost."""

    method = "crown"
    default_alpha_steps = 20
    default_alpha_rows = 0


@CERTIFIERS.register("crown-ibp", help="IBP intermediate bounds + CROWN final bound (Zhang et al. 2020)")
class CROWNIBPCertifier(_BoundCertifier):
    """Cheap CROWN variant: IBP pre-activation bounds, CROWN on the margin only."""

    method = "crown-ibp"
