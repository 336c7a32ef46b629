"""Input sets, the margin specification and interval bound propagation (IBP).

Input set: ``{x' : ||x' - x||_p <= eps} ∩ [lo, hi]^d``. Every norm ball lies inside the linf ball of
the same radius, so the box ``B = [max(lo, x - eps), min(hi, x + eps)]`` contains the set. The lower
bound of a linear function ``a . x' + c`` over the set is the tighter (larger) of

* the box bound ``a . mid(B) - |a| . rad(B) + c`` (exact for linf), and
* the dual-norm bound ``a . x - eps ||a||_q + c`` with ``1/p + 1/q = 1`` (l2: q = 2, l1: q = inf);

both are valid lower bounds over supersets of the set, so their maximum is sound.

Margin specification: the objective ``z_y - z_j`` for every ``j != y`` is the linear map ``C z``
with ``C (B, K-1, K)`` rows ``e_y - e_j``; it is folded into the last linear layer by starting the
backward pass (CROWN) or the last affine interval step (IBP) from ``C``.

IBP (Gowal et al. 2018, "On the effectiveness of interval bound propagation for training verifiably
robust models"): propagate ``[l, u]`` through every operator; the last affine layer is composed with
``C`` so that the margin bound is ``C W mid - |C W| rad + C b``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from fortify.certify.ops import LinearOp, Op, numel
from fortify.threat import ThreatModel


@dataclass
class InputSet:
    """The threat set around a batch ``x (B, *in)``: box ``[lo, hi]`` plus the norm ball."""

    x: torch.Tensor
    lo: torch.Tensor
    hi: torch.Tensor
    norm: str
    eps: float

    @classmethod
    def from_threat(cls, x: torch.Tensor, threat: ThreatModel, eps: float | None = None) -> "InputSet":
        """The set's tightest box (per-feature bounds, zero width on immutable features, radius
        ``eps * scale``: :meth:`ThreatModel.input_box`) and a sound dual-norm radius
        (:meth:`ThreatModel.dual_radius`; ``eps`` itself for scalar threats, the same code as before)."""
        e = threat.eps if eps is None else float(eps)
        lo, hi = threat.input_box(x, e)
        return cls(x, lo, hi, threat.norm, threat.dual_radius(e))

    def concretize(self, a: torch.Tensor, const: torch.Tensor) -> torch.Tensor:
        """Lower bound of ``a . x' + const`` over the set. ``a (B' , S, *in)`` with ``B'`` 1 or B,
        ``const (B, S)``; returns ``(B, S)``."""
        b = self.x.shape[0]
        af = a.reshape(a.shape[0], a.shape[1], -1)
        mid = ((self.hi + self.lo) / 2).reshape(b, -1, 1)
        rad = ((self.hi - self.lo) / 2).reshape(b, -1, 1)
        box = (af.matmul(mid) - af.abs().matmul(rad)).squeeze(-1)  # (B, S): batched dot products
        if self.norm == "linf":
            return box + const
        x0 = self.x.reshape(b, 1, -1)
        q = 2.0 if self.norm == "l2" else float("inf")
        dual = (af * x0).sum(-1) - self.eps * af.norm(p=q, dim=-1)
        return torch.maximum(box, dual) + const


def margin_spec(y: torch.Tensor, num_classes: int, *, keep_true_row: bool = False) -> torch.Tensor:
    """``C (B, K-1, K)`` with rows ``e_y - e_j`` for ``j != y`` (``(B, K, K)`` with a zero row for
    ``j = y`` when ``keep_true_row``, the layout certified-training losses need)."""
    eye = torch.eye(num_classes, device=y.device)
    c = eye[y].unsqueeze(1) - eye.unsqueeze(0)  # (B, K, K): row j = e_y - e_j
    if keep_true_row:
        return c
    keep = ~torch.nn.functional.one_hot(y, num_classes).bool()
    return c[keep].reshape(y.shape[0], num_classes - 1, num_classes)


def linear_prefix(ops: list[Op]) -> int:
    """Number of leading linear operators (the composite before the first nonlinearity)."""
    k = 0
    while k < len(ops) and ops[k].linear:
        k += 1
    return k


def ibp_intervals(ops: list[Op], inp: InputSet, upto: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Intervals of every intermediate tensor: entry ``t`` bounds the input of ``ops[t]`` (entry 0
    is the input box, the last entry the output of ``ops[upto-1]``). Shapes ``(B, *shape_t)``.
    Under l2/l1 the output of the leading linear block is intersected with its dual-norm interval."""
    upto = len(ops) if upto is None else upto
    k = linear_prefix(ops) if inp.norm != "linf" else -1
    out = [(inp.lo, inp.hi)]
    lo, hi = inp.lo, inp.hi
    for t, op in enumerate(ops[:upto]):
        lo, hi = op.interval(lo, hi)
        if t + 1 == k:
            lo, hi = prefix_dual(ops[:k], inp, lo, hi)
        out.append((lo, hi))
    return out


def prefix_dual(prefix: list[Op], inp: InputSet, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Interval of an affine block ``f`` under an l2/l1 ball: ``f(x) ± eps ||W_i||_q`` intersected
    with the box interval ``[lo, hi]``. Row norms of the composite ``W`` are batch-independent."""
    q = 2.0 if inp.norm == "l2" else float("inf")
    if len(prefix) == 1 and isinstance(prefix[0], LinearOp):
        rn = prefix[0].w.norm(p=q, dim=1)
    else:
        rn = row_norms(prefix, q)
    c = inp.x
    for op in prefix:
        c = op.forward(c)
    return torch.maximum(lo, c - inp.eps * rn), torch.minimum(hi, c + inp.eps * rn)


def row_norms(prefix: list[Op], q: float, chunk: int = 2048) -> torch.Tensor:
    """``||W_i||_q`` of every output neuron ``i`` of a composite linear block, shaped like its output."""
    out_shape = prefix[-1].out_shape
    n_out = numel(out_shape)
    ref = next((t for op in reversed(prefix) for t in vars(op).values() if isinstance(t, torch.Tensor)),
               torch.zeros(()))
    norms = []
    for s in range(0, n_out, chunk):
        e = min(n_out, s + chunk)
        a = torch.zeros(1, e - s, n_out, dtype=ref.dtype, device=ref.device)
        a[0, torch.arange(e - s), torch.arange(s, e)] = 1.0
        a = a.reshape((1, e - s) + tuple(out_shape))
        for op in reversed(prefix):
            a = op.back(a)
        norms.append(a.reshape(e - s, -1).norm(p=q, dim=1))
    return torch.cat(norms).reshape(out_shape)


def ibp_margin(ops: list[Op], inp: InputSet, c: torch.Tensor) -> torch.Tensor:
    """IBP lower bound of ``C z`` over the set, with ``C (B, S, K)`` folded into the last affine
    layer when it is a Linear (tighter than bounding the logits first); a network without any
    nonlinearity is one affine map, bounded exactly over the set. Returns ``(B, S)``."""
    if linear_prefix(ops) == len(ops):
        a, const = c, c.new_zeros(c.shape[:2])
        for op in reversed(ops):
            const = const + op.bias(a)
            a = op.back(a)
        return inp.concretize(a, const)
    if ops and isinstance(ops[-1], LinearOp) and len(ops) > 1:
        lo, hi = ibp_intervals(ops, inp, upto=len(ops) - 1)[-1]
        last = ops[-1]
        w = c.matmul(last.w)  # (B, S, n)
        mid, rad = ((hi + lo) / 2).unsqueeze(1), ((hi - lo) / 2).unsqueeze(1)
        bias = c.matmul(last.b) if last.b is not None else 0.0
        return (w * mid).sum(-1) - (w.abs() * rad).sum(-1) + bias
    lo, hi = ibp_intervals(ops, inp)[-1]
    cp, cn = c.clamp(min=0), c.clamp(max=0)
    return (cp * lo.unsqueeze(1)).sum(-1) + (cn * hi.unsqueeze(1)).sum(-1)
