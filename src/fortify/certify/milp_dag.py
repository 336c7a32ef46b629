"""MILP encoding of small ReLU computation graphs (residual ``add`` / ``sub``, channel ``cat``) for
:class:`fortify.certify.milp.MILPVerifier` (Tjeng, Xiao & Tedrake 2019, "Evaluating robustness of
neural networks with mixed integer programming"), and the input-set rows the chain encoding shares.

Basis variables: the input ``x`` (``d``; plus ``p, q`` under l1) and the output ``a_t`` of every
ReLU operator ``t``. Every value ``v`` of the :class:`fortify.certify.dag.Dag` is an affine function
of them, held as ``E_v (1 + nb, *shape_v)`` (row 0 the constant, row ``1 + j`` the coefficient of
basis variable ``j``). A linear operator maps it forward exactly with its own forward pass on a
float64 copy: ``E_out[0] = f(E_in[0])``, ``E_out[1:] = f(E_in[1:]) - f(0)``. So Linear, Conv,
AvgPool, BatchNorm (eval), ``Normalized``, scalar affine maps, flatten / view, ``add`` / ``sub`` and
``cat`` are all dense affine maps on flattened tensors; any other nonlinearity than ReLU (MaxPool,
Sigmoid, ...) is refused with one :class:`UnsupportedLayerError` naming it.

A ReLU ``a = max(z, 0)`` reading value ``v`` (``z = M b + c``) with pre-activation bounds
``l <= z <= u`` of that value (CROWN ∩ IBP, or IBP; tighter bounds, smaller big-M): active
(``l >= 0``) ``a = z``; dead (``u <= 0``) ``a = 0``; unstable, with one binary ``d``:
``a >= z, a >= 0, a <= u d, a <= z - l (1 - d)``. Stable neurons cost no binary.

Variable layout: ``[x | p, q (l1) | a_t for every ReLU | d for the unstable neurons]``; the
expressions do not depend on the image, the bounds and binaries do.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from scipy.optimize import LinearConstraint

from fortify.certify.bounds import InputSet
from fortify.certify.dag import Dag
from fortify.certify.ops import MergeOp, Op, ReLUOp, numel
from fortify.errors import ResourceError, UnsupportedLayerError
from fortify.threat import ThreatModel

#: default bound on the bytes of the live affine expressions (``8 (1 + nb)`` per tensor element)
EXPRESSION_BYTES = 2 << 30
SUPPORTED = ("Linear/Conv/AvgPool/BatchNorm (eval)/Normalized/flatten/view, add/sub/cat, scalar +-*/ and ReLU")


@dataclass
class Problem:
    """One image's MILP: ``cons`` over ``nv`` variables with bounds ``vlo, vhi (nv,)``, integrality
    ``integ (nv,)``; the logits are ``out_w (K, nv) @ v + out_b (K,)``; the input is ``v[:d]``."""

    cons: LinearConstraint
    vlo: np.ndarray
    vhi: np.ndarray
    integ: np.ndarray
    out_w: np.ndarray
    out_b: np.ndarray
    d: int


def f64(op: Op) -> Op:
    """A float64 CPU copy of ``op`` (its tensor attributes converted; the model is untouched)."""
    new = object.__new__(type(op))
    for k, v in vars(op).items():
        setattr(new, k, v.detach().to("cpu", torch.float64) if isinstance(v, torch.Tensor) else v)
    return new


def input_rows(inp: InputSet, i: int, threat: ThreatModel, vlo: np.ndarray, vhi: np.ndarray,
               rows: list[Any], rlo: list[Any], rhi: list[Any]) -> None:
    """The input set of image ``i`` on variables ``[x (d) | p, q (d each, l1 only)]``: ``x`` within
    the input box (linf: the whole set); l1: ``x = x0 + p - q``, ``p, q >= 0``, ``sum(p + q) <= eps``.
    Writes the variable bounds in place and appends rows ``(k, nv)`` with their bounds."""
    x0 = inp.x[i].reshape(-1).double().cpu().numpy()
    lo, hi = inp.lo[i].reshape(-1).double().cpu().numpy(), inp.hi[i].reshape(-1).double().cpu().numpy()
    d, nv = x0.size, vlo.size
    vlo[:d], vhi[:d] = lo, hi
    if threat.norm == "l1":
        vlo[d:3 * d], vhi[d:3 * d] = 0.0, threat.eps
        eq = sp.hstack([sp.eye(d), -sp.eye(d), sp.eye(d), sp.csr_matrix((d, nv - 3 * d))])
        rows.append(eq); rlo.append(x0); rhi.append(x0)
        row = np.zeros((1, nv)); row[0, d:3 * d] = 1.0
        rows.append(sp.csr_matrix(row)); rlo.append([0.0]); rhi.append([threat.eps])


def relu_ops(dag: Dag) -> list[int]:
    """Indices of the ReLU operators of ``dag``; raises :class:`UnsupportedLayerError` (one line,
    naming the operator) for any other nonlinearity (MaxPool, Sigmoid, ...)."""
    for op in dag.ops:
        if not op.linear and not isinstance(op, ReLUOp):
            kind = type(op).__name__.removesuffix("Op")
            raise UnsupportedLayerError(
                f"layer {op.name!r} ({kind}) is not supported by the MILP verifier on graphs; it handles "
                f"{SUPPORTED}; use crown or alpha-crown")
    return [t for t, op in enumerate(dag.ops) if isinstance(op, ReLUOp)]


class DagEncoding:
    """The image-independent part of a DAG's MILP: the ReLU operators, the affine expression of
    every ReLU's input (``pre[k] = (M (n_k, nb), c (n_k,))``) and of the logits, in float64.

    Raises :class:`UnsupportedLayerError` for a nonlinearity other than ReLU (:func:`relu_ops`) and
    :class:`ResourceError` when the expressions would need more than ``memory_budget`` bytes. Cost:
    one forward pass of a batch of ``1 + nb`` through every linear operator (``nb`` variables)."""

    def __init__(self, dag: Dag, norm: str, memory_budget: int = EXPRESSION_BYTES) -> None:
        d = numel(dag.in_shape)
        self.d, self.base = d, 3 * d if norm == "l1" else d
        self.relus = relu_ops(dag)
        sizes = [numel(dag.shape(dag.inputs[t][0])) for t in self.relus]
        self.a_off = [self.base + int(s) for s in np.cumsum([0] + sizes[:-1])] if sizes else []
        self.sizes = sizes
        self.nb = self.base + sum(sizes)
        need = 8 * (1 + self.nb) * max(numel(dag.shape(v)) for v in range(len(dag.ops) + 1)) * 3
        if need > memory_budget:
            raise ResourceError(
                f"milp: the graph is too large for exact verification: its affine expressions need about "
                f"{need / 2**30:.1f} GiB ({self.nb:,} input and ReLU variables); use crown or alpha-crown")
        users = dag.users()
        left = [len(u) for u in users]
        eye = torch.zeros((1 + self.nb, d), dtype=torch.float64)
        eye[1 + torch.arange(d), torch.arange(d)] = 1.0
        vals: dict[int, torch.Tensor] = {0: eye.reshape((1 + self.nb,) + tuple(dag.in_shape))}
        self.pre: list[tuple[np.ndarray, np.ndarray]] = []
        with torch.no_grad():
            for t, (op, ins) in enumerate(zip(dag.ops, dag.inputs)):
                srcs = [vals[v] for v in ins]
                if isinstance(op, ReLUOp):
                    e = srcs[0].reshape(1 + self.nb, -1)
                    self.pre.append((e[1:].T.numpy().copy(), e[0].numpy().copy()))
                    k, n = len(self.pre) - 1, e.shape[1]
                    out = torch.zeros(1 + self.nb, n, dtype=torch.float64)
                    out[1 + self.a_off[k] + torch.arange(n), torch.arange(n)] = 1.0
                    vals[t + 1] = out.reshape(srcs[0].shape)
                else:
                    vals[t + 1] = _affine_step(f64(op), srcs)
                for v in ins:
                    left[v] -= 1
                    if left[v] == 0 and v != 0:
                        del vals[v]
        e = vals[len(dag.ops)].reshape(1 + self.nb, -1)
        self.out_w, self.out_b = e[1:].T.numpy().copy(), e[0].numpy().copy()

    def problem(self, pre_bounds: list[tuple[np.ndarray, np.ndarray]], inp: InputSet, i: int,
                threat: ThreatModel, slack: float) -> Problem:
        """Image ``i``'s MILP given each ReLU's flat pre-activation bounds ``(l, u)`` (widened by
        ``slack * (1 + |.|)`` for float32 rounding)."""
        widened = [(l - slack * (1 + np.abs(l)), u + slack * (1 + np.abs(u))) for l, u in pre_bounds]
        unstable = [np.nonzero((l < 0) & (u > 0))[0] for l, u in widened]
        nb = self.nb
        nv = nb + sum(int(u.size) for u in unstable)
        vlo, vhi, integ = np.full(nv, -np.inf), np.full(nv, np.inf), np.zeros(nv)
        rows: list[Any] = []
        rlo: list[Any] = []
        rhi: list[Any] = []
        input_rows(inp, i, threat, vlo, vhi, rows, rlo, rhi)
        d_off = nb
        for k, ((l, u), idx) in enumerate(zip(widened, unstable)):
            m, c = self.pre[k]
            n, a0 = m.shape[0], self.a_off[k]
            act, dead = l >= 0, u <= 0
            vlo[a0:a0 + n], vhi[a0:a0 + n] = 0.0, np.maximum(u, 0.0)
            # a - M b  (>= c unless dead; == c when active)
            blk = np.zeros((n, nv))
            blk[:, :nb] = -m
            blk[np.arange(n), a0 + np.arange(n)] += 1.0
            rows.append(sp.csr_matrix(blk)); rlo.append(np.where(dead, -np.inf, c)); rhi.append(np.where(act, c, np.inf))
            if idx.size:
                dc = d_off + np.arange(idx.size)
                vlo[dc], vhi[dc], integ[dc] = 0.0, 1.0, 1
                m1 = np.zeros((idx.size, nv))  # a - u d <= 0
                m1[np.arange(idx.size), a0 + idx] = 1.0
                m1[np.arange(idx.size), dc] = -u[idx]
                rows.append(sp.csr_matrix(m1)); rlo.append(np.full(idx.size, -np.inf)); rhi.append(np.zeros(idx.size))
                m2 = blk[idx].copy()  # a - M b - l d <= c - l
                m2[np.arange(idx.size), dc] = -l[idx]
                rows.append(sp.csr_matrix(m2)); rlo.append(np.full(idx.size, -np.inf)); rhi.append(c[idx] - l[idx])
                d_off += idx.size
        if not rows:  # no ReLU under linf: only variable bounds
            rows, rlo, rhi = [sp.csr_matrix((1, nv))], [[-np.inf]], [[np.inf]]
        cons = LinearConstraint(sp.vstack(rows).tocsr(), np.concatenate(rlo), np.concatenate(rhi))
        out_w = np.zeros((self.out_w.shape[0], nv))
        out_w[:, :nb] = self.out_w
        return Problem(cons, vlo, vhi, integ, out_w, self.out_b, self.d)


def _affine_step(op: Op, srcs: list[torch.Tensor]) -> torch.Tensor:
    """``E_out`` of a linear operator from its inputs' expressions ``E (1 + nb, *in_i)``."""
    if isinstance(op, MergeOp):
        out = op.forward_n(srcs)
        zero = op.forward_n([s[:1] * 0 for s in srcs])
    else:
        out = op.forward(srcs[0])
        zero = op.forward(srcs[0][:1] * 0)
    out = out.clone()
    out[1:] -= zero
    return out


__all__ = ["DagEncoding", "EXPRESSION_BYTES", "Problem", "SUPPORTED", "f64", "input_rows", "relu_ops"]
