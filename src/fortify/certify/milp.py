"""Exact verification of small ReLU networks by mixed-integer linear programming (Tjeng, Xiao &
Tedrake 2019, "Evaluating robustness of neural networks with mixed integer programming").

Every ReLU ``a = max(z, 0)`` with pre-activation bounds ``l < 0 < u`` (from CROWN ∩ IBP, which
makes big-M constants small) becomes, with a binary ``d``,
``a >= z, a >= 0, a <= u d, a <= z - l (1 - d)``; stable neurons are linear. Chain models: the
linear operators between two ReLUs are composed into one matrix. Graph models (residual ``add`` /
``sub``, ``cat``, traced by :func:`fortify.certify.graph.build_net`): every value is an affine
expression of the input and the ReLU outputs (:mod:`fortify.certify.milp_dag`), the big-M constants
come from the DAG driver's bounds of each ReLU's input value. The input set is the linf box (variable bounds) or
the l1 ball (``x = x0 + p - q``, ``sum(p + q) <= eps``) intersected with the input box; l2 would
need a quadratic constraint and is not supported. For every ``j != y`` (most threatening first,
skipping rows CROWN already proves) HiGHS (``scipy.optimize.milp``) minimises ``z_y - z_j``.

Per point: ``verified`` (every minimum, or dual bound on timeout, is > 0), ``counterexample`` (a
minimiser whose forward pass is misclassified; returned in ``extra["counterexample"]``),
``timeout`` (time limit hit before a decision) or ``inconclusive`` (MILP minimum <= 0 but the
float32 forward pass at the minimiser is not misclassified: a tie within rounding).
``lower_margin`` is the MILP minimum, or the solver's dual bound where it timed out.
"""
from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np
import scipy.sparse as sp
import torch
from scipy.optimize import Bounds, LinearConstraint, milp
from torch import nn

from fortify import progress
from fortify.certify.base import CERTIFIERS, Certificate, Certifier
from fortify.certify.bounds import InputSet, margin_spec
from fortify.certify.crown import backward_lower, layer_bounds
from fortify.certify.dag import Dag
from fortify.certify.dag import backward as dag_backward
from fortify.certify.dag import layer_bounds as dag_layer_bounds
from fortify.certify.graph import build_net
from fortify.certify.milp_dag import DagEncoding, Problem, f64, input_rows, relu_ops
from fortify.certify.ops import Op, ReLUOp, numel
from fortify.errors import ConfigError, ResourceError, ThreatModelError, UnsupportedLayerError
from fortify.threat import ThreatModel


#: default refusal threshold of :class:`MILPVerifier`: binary variables (unstable ReLUs) of one image.
#: Measured here (HiGHS via scipy, one busy CPU core): LeNet-300-100 on MNIST with 20 unstable ReLUs
#: (linf 0.002) took 39 s for one image, and 57-245 (linf 0.005-0.02) hit a 20 s limit; at 200+ a
#: per-image time limit of seconds only ever reports "timeout", so such a run is refused up front.
MAX_BINARIES = 200


class MILPTooLargeError(ResourceError):
    """The MILP of some image would need more binary variables than the verifier's ``max_binaries``."""


def count_binaries(bounds: Sequence[tuple[torch.Tensor, torch.Tensor]], relus: list[int], n: int) -> torch.Tensor:
    """Binary variables of each image's MILP: its unstable ReLUs (pre-activation bounds ``l < 0 < u``),
    ``(N,)`` int64. Stable neurons are linear constraints and cost no branching."""
    total = torch.zeros(n, dtype=torch.long)
    for t in relus:
        lo, hi = bounds[t]
        total += ((lo < 0) & (hi > 0)).reshape(n, -1).sum(1).cpu()
    return total


def affine_blocks(ops: list[Op]) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[int]]:
    """Compose the linear operators between ReLUs: ``[(W_k (n_k, n_{k-1}), b_k (n_k,))]`` and the
    indices of the ReLU operators (float64)."""
    relus, blocks, start = [], [], 0
    for t, op in enumerate(ops + [None]):  # type: ignore[operator]
        if op is not None and op.linear:
            continue
        if op is not None and not isinstance(op, ReLUOp):
            raise UnsupportedLayerError(f"layer {op.name!r} ({type(op).__name__[:-2]}) is not supported by the MILP "
                                        "verifier; it handles Linear/Conv/BatchNorm/Flatten/AvgPool and ReLU")
        shape = ops[t - 1].out_shape if t > 0 else ops[0].in_shape
        in_shape = ops[start].in_shape if start < len(ops) else shape
        n = numel(shape)
        a = torch.eye(n, dtype=torch.float64).reshape((1, n) + tuple(shape))
        const = torch.zeros(1, n, dtype=torch.float64)
        for op_b in reversed(ops[start:t]):
            const = const + f64(op_b).bias(a)
            a = f64(op_b).back(a)
        blocks.append((a.reshape(n, numel(in_shape)).numpy(), const.reshape(n).numpy()))
        if op is not None:
            relus.append(t)
        start = t + 1
    return blocks, relus


class MILPVerifier(Certifier):
    """Exact MILP verification (HiGHS) with a per-point ``time_limit`` in seconds."""

    norms = ("linf", "l1")

    def __init__(self, time_limit: float = 30.0, slack: float = 1e-5, exact: bool = False,
                 max_binaries: int | None = MAX_BINARIES, intermediate: str = "crown") -> None:
        """``time_limit`` seconds per point; ``slack`` relative widening of the big-M bounds (float32
        rounding); ``exact`` solves every row (the exact minimum margin) instead of skipping rows that
        CROWN already proves; ``max_binaries`` refuses, before any MILP is solved, a batch in which an
        image has more unstable ReLUs than this (branch and bound is exponential in them: past a few
        hundred it only times out); ``None`` removes the limit; ``intermediate``: the pre-activation
        bounds that size the big-M constants and decide which ReLUs are stable (``"crown"``: CROWN ∩
        IBP, fewer binaries; ``"ibp"``: IBP). The optimum does not depend on it, the solve time does."""
        if not time_limit > 0:
            raise ConfigError(f"time_limit must be > 0, got {time_limit!r}")
        if max_binaries is not None and (isinstance(max_binaries, bool) or not isinstance(max_binaries, int)
                                         or max_binaries < 1):
            raise ConfigError(f"max_binaries must be null or an integer >= 1, got {max_binaries!r}")
        self.time_limit, self.slack, self.exact = float(time_limit), float(slack), bool(exact)
        if intermediate not in ("crown", "ibp"):
            raise ConfigError(f"intermediate must be 'crown' or 'ibp', got {intermediate!r}")
        self.max_binaries, self.intermediate = max_binaries, intermediate

    def _check_size(self, bounds: Sequence[tuple[torch.Tensor, torch.Tensor]], relus: list[int], n: int,
                    threat: ThreatModel) -> None:
        """Raise :class:`MILPTooLargeError` when an image's MILP needs more than ``max_binaries`` binaries."""
        if self.max_binaries is None or not relus:
            return
        binaries = count_binaries(bounds, relus, n)
        worst = int(binaries.argmax())
        if int(binaries[worst]) > self.max_binaries:
            raise MILPTooLargeError(
                f"milp: the model is too large for exact verification at {threat}: image {worst} has "
                f"{int(binaries[worst]):,} unstable ReLUs (binary variables), above the limit max_binaries="
                f"{self.max_binaries:,}; use a bound method (crown, alpha-crown), a smaller eps, or raise the "
                f"limit (max_binaries=N; CLI: --max-binaries N)")

    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel) -> Certificate:
        if threat.per_feature:  # the encoding takes a scalar box and a ball in input units
            raise ThreatModelError("milp encodes a scalar input box and an eps ball in input units: a threat with "
                                   "per-feature bounds, a mask or a scale is not supported (use ibp or crown)")
        net = build_net(model, tuple(x.shape[1:]), x)
        inp = InputSet.from_threat(x, threat)
        if isinstance(net, Dag):
            return self._run_dag(model, net, x, y, inp, threat)
        ops = net
        blocks, relus = affine_blocks(ops)
        bounds = layer_bounds(ops, inp, intermediate=self.intermediate)
        k = blocks[-1][0].shape[0]
        c = margin_spec(y, k).to(x.dtype)
        self._check_size(bounds, relus, x.shape[0], threat)
        crown_rows = backward_lower(ops, len(ops), c, bounds, inp)

        def one(i: int) -> tuple[float, str, torch.Tensor | None]:
            pre = [(bounds[t][0][i].reshape(-1).double().cpu().numpy(),
                    bounds[t][1][i].reshape(-1).double().cpu().numpy()) for t in relus]
            return self._one(model, blocks, pre, inp, i, int(y[i]), crown_rows[i], threat)

        return self._loop(one, x, threat)

    def _run_dag(self, model: nn.Module, dag: Dag, x: torch.Tensor, y: torch.Tensor, inp: InputSet,
                 threat: ThreatModel) -> Certificate:
        """A graph model (residual add / sub, cat): :class:`fortify.certify.milp_dag.DagEncoding` with
        the pre-activation bounds of every ReLU's input value (CROWN ∩ IBP, or IBP)."""
        pre_vals = [dag.inputs[t][0] for t in relu_ops(dag)]
        bounds = dag_layer_bounds(dag, inp, intermediate=self.intermediate)
        self._check_size([bounds[v] for v in pre_vals], list(range(len(pre_vals))), x.shape[0], threat)
        enc = DagEncoding(dag, threat.norm)
        c = margin_spec(y, enc.out_w.shape[0]).to(x.dtype)
        crown_rows = dag_backward(dag, {len(dag.ops): c}, c.new_zeros(c.shape[:2]), bounds, inp)

        def one(i: int) -> tuple[float, str, torch.Tensor | None]:
            start = time.monotonic()
            pre = [(bounds[v][0][i].reshape(-1).double().cpu().numpy(),
                    bounds[v][1][i].reshape(-1).double().cpu().numpy()) for v in pre_vals]
            prob = enc.problem(pre, inp, i, threat, self.slack)
            return self._solve(model, prob, inp, i, int(y[i]), crown_rows[i], threat, start)

        return self._loop(one, x, threat)

    def _loop(self, one: Any, x: torch.Tensor, threat: ThreatModel) -> Certificate:
        """Run ``one(i) -> (lower_margin, status, counterexample or None)`` on every image."""
        lows, status, cex = [], [], torch.full_like(x, float("nan"))
        with progress.task(f"certify milp {threat}", total=x.shape[0], unit="images") as bar:
            for i in range(x.shape[0]):
                low, st, xs = one(i)
                lows.append(low)
                status.append(st)
                if xs is not None:
                    cex[i] = xs
                bar.advance(info=f"{status.count('verified')} verified")
        lower = torch.tensor(lows, dtype=x.dtype, device=x.device)
        return Certificate(lower, torch.tensor([s == "verified" for s in status], device=x.device), self.name, status=status,
                           extra={"counterexample": cex})

    def _one(self, model, blocks, pre, inp: InputSet, i: int, y: int, crown_rows: torch.Tensor, threat):
        """Verify point ``i``; returns ``(lower_margin, status, counterexample or None)``."""
        start = time.monotonic()
        d = inp.x[i].numel()
        l1 = threat.norm == "l1"
        sizes = [d] + ([d, d] if l1 else [])
        for (l, _) in pre:
            sizes += [l.size, l.size]
        offs = np.cumsum([0] + sizes)
        nv = int(offs[-1])
        vlo, vhi = np.full(nv, -np.inf), np.full(nv, np.inf)
        integ = np.zeros(nv)
        rows: list[Any] = []
        rlo: list[Any] = []
        rhi: list[Any] = []
        input_rows(inp, i, threat, vlo, vhi, rows, rlo, rhi)
        prev = slice(0, d)
        base = 3 if l1 else 1
        for k, (l, u) in enumerate(pre):
            w, b = blocks[k]
            n = l.size
            l = l - self.slack * (1 + np.abs(l))
            u = u + self.slack * (1 + np.abs(u))
            a_s = slice(int(offs[base + 2 * k]), int(offs[base + 2 * k + 1]))
            d_s = slice(int(offs[base + 2 * k + 1]), int(offs[base + 2 * k + 2]))
            act, dead = l >= 0, u <= 0
            unst = ~(act | dead)
            vlo[a_s], vhi[a_s] = 0.0, np.maximum(u, 0.0)
            vlo[d_s], vhi[d_s] = np.where(act, 1.0, 0.0), np.where(dead, 0.0, 1.0)
            integ[d_s] = 1
            # a - W prev  (>= b always; == b when active)
            m = sp.lil_matrix((n, nv))
            m[:, prev] = -w
            m[:, a_s] = sp.eye(n)
            m = m.tocsr()
            rows.append(m); rlo.append(np.where(dead, -np.inf, b)); rhi.append(np.where(act, b, np.inf))
            idx = np.nonzero(unst)[0]
            if idx.size:
                m1 = sp.lil_matrix((idx.size, nv))  # a - u d <= 0
                m1[np.arange(idx.size), a_s.start + idx] = 1.0
                m1[np.arange(idx.size), d_s.start + idx] = -u[idx]
                rows.append(m1.tocsr()); rlo.append(np.full(idx.size, -np.inf)); rhi.append(np.zeros(idx.size))
                m2 = sp.lil_matrix((idx.size, nv))  # a - W prev - l d <= b - l
                m2[:, prev] = -w[idx]
                m2[np.arange(idx.size), a_s.start + idx] = 1.0
                m2[np.arange(idx.size), d_s.start + idx] = -l[idx]
                rows.append(m2.tocsr()); rlo.append(np.full(idx.size, -np.inf)); rhi.append(b[idx] - l[idx])
            prev = a_s
        cons = LinearConstraint(sp.vstack(rows).tocsr(), np.concatenate(rlo), np.concatenate(rhi))
        wl, bl = blocks[-1]
        out_w = np.zeros((wl.shape[0], nv))
        out_w[:, prev] = wl
        return self._solve(model, Problem(cons, vlo, vhi, integ, out_w, bl, d), inp, i, y, crown_rows, threat, start)

    def _solve(self, model: nn.Module, prob: Problem, inp: InputSet, i: int, y: int, crown_rows: torch.Tensor,
               threat: ThreatModel, start: float) -> tuple[float, str, torch.Tensor | None]:
        """Minimise ``z_y - z_j`` of ``prob`` for every ``j != y`` (most threatening first, rows CROWN
        proves skipped unless ``exact``; ``crown_rows (K-1,)``) within the time left since ``start``;
        returns ``(lower_margin, status, counterexample or None)``."""
        wl, bl, d = prob.out_w, prob.out_b, prob.d
        cons, integ, vlo, vhi = prob.cons, prob.integ, prob.vlo, prob.vhi
        others = [j for j in range(wl.shape[0]) if j != y]
        order = np.argsort(crown_rows.double().cpu().numpy())  # most threatening rows first
        best, timed_out = np.inf, False
        for r in order:
            j = others[int(r)]
            if float(crown_rows[int(r)]) > 0 and not self.exact:
                best = min(best, float(crown_rows[int(r)]))
                continue
            left = self.time_limit - (time.monotonic() - start)
            if left <= 0:
                timed_out = True
                best = min(best, float(crown_rows[int(r)]))
                continue
            obj = wl[y] - wl[j]
            const = float(bl[y] - bl[j])
            res = milp(obj, constraints=cons, integrality=integ, bounds=Bounds(vlo, vhi),
                       options={"time_limit": left, "disp": False})
            if res.status == 0 and res.x is not None:
                val = float(res.fun) + const
                best = min(best, val)
                if val <= 0:
                    xs = torch.tensor(res.x[:d], dtype=inp.x.dtype, device=inp.x.device).reshape(inp.x.shape[1:]).unsqueeze(0)
                    xs = threat.project(xs, inp.x[i:i + 1])
                    with torch.no_grad():
                        pred = int(model(xs).argmax(dim=1))
                    return val, ("counterexample" if pred != y else "inconclusive"), (xs[0] if pred != y else None)
            else:
                timed_out = True
                dual = getattr(res, "mip_dual_bound", None)
                dual = float(dual) + const if dual is not None and np.isfinite(dual) else float(crown_rows[int(r)])
                best = min(best, max(dual, float(crown_rows[int(r)])))
        if best > 0:
            return best, "verified", None
        return best, ("timeout" if timed_out else "inconclusive"), None


CERTIFIERS.register("milp", MILPVerifier, help="exact MILP verification of small ReLU nets (HiGHS)")
