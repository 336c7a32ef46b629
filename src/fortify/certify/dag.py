"""IBP and CROWN on general computation graphs (residual ``add``, channel ``cat``): the DAG driver.

A :class:`Dag` holds operators in topological order; operator ``t`` reads the values
``inputs[t]`` (value 0 is the network input, value ``t + 1`` the output of operator ``t``) and the
last operator produces the logits. Chains (every operator reading the one before) never reach this
module: :func:`fortify.certify.graph.build_net` returns them as the operator list of the chain
driver (:mod:`fortify.certify.crown`, with its windowed / pooled strategies), so their bounds are
exactly the chain driver's.

* IBP (Gowal et al. 2018): one forward pass of intervals in topological order; joins
  (:class:`fortify.certify.ops.MergeOp`) combine their inputs' intervals exactly.
* CROWN (Zhang et al. 2018) on a DAG, as in auto_LiRPA (Xu et al. 2020, "Automatic perturbation
  analysis for scalable certified robustness and beyond"): back-substitution keeps one linear
  coefficient ``A_v (B', S, *shape_v)`` per value; operators are visited in reverse topological
  order, each takes the coefficient of its output (the *sum* over all its users, complete once
  every user has been visited) and hands its step's result to its inputs -- a join splits it
  (``add``: the same ``A`` to both inputs; ``cat``: a slice per input). At the input the linear
  function is concretised over the threat set.
* Intermediate bounds: every value read by a nonlinear operator and produced by a linear one is
  refined by the same backward pass from unit rows (only the rows the relaxation depends on:
  :meth:`Op.refine_rows`, e.g. a ReLU's unstable neurons, union over the batch), chunked so the
  coefficients stay under ``memory_budget``; intersected with IBP. Feature maps take receptive-field
  windows: grouped by pixel when most channels of the refined pixels are needed
  (:mod:`fortify.certify.dag_cells`, channels last, BatchNorm fused into the ReLU step), else one
  window per row (:mod:`fortify.certify.dag_win`); both give the dense pass's bounds.
* alpha-CROWN on the final specification (:func:`optimize_slopes`): the lower slopes of every
  ReLU are optimised by projected Adam with the intermediate bounds fixed, as the chain driver
  does; intermediate bounds stay CROWN-Ada's.

Cost: one dense backward pass per chunk of refined rows; the coefficients of all live branches
are held at once (``B * S * sum of live value sizes`` floats).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from fortify.certify.bounds import InputSet
from fortify.certify.dag_cells import cell_bytes, cells_refine_lower, plan_cells
from fortify.certify.dag_win import windowed_refine_lower
from fortify.certify.ops import Interval, LinearOp, MergeOp, Op, RelaxCache, ReLUOp, numel, relu_relax

#: bytes of backward temporaries per chunk of specification rows (the chain driver's figure)
_CHUNK_BYTES = 16 << 20
#: live coefficient tensors per float of the widest value (branches, a+, a-, new a)
_TEMP_FACTOR = 6
#: bytes of backward temporaries per chunk of windowed rows (:mod:`fortify.certify.dag_win`)
_WIN_CHUNK_BYTES = 64 << 20
#: cell-grouped rows (:mod:`fortify.certify.dag_cells`) when at least this fraction of the refined
#: cells' neurons needs refining (all channels of a cell are computed)
CELL_FILL = 0.5


@dataclass
class Dag:
    """Operators in topological order and the values each reads (see the module docstring)."""

    ops: list[Op]
    inputs: list[tuple[int, ...]]
    in_shape: tuple[int, ...]

    def shape(self, v: int) -> tuple[int, ...]:
        """Shape (no batch dim) of value ``v``."""
        return tuple(self.in_shape) if v == 0 else tuple(self.ops[v - 1].out_shape)

    @property
    def out_shape(self) -> tuple[int, ...]:
        return self.shape(len(self.ops))

    def users(self) -> list[list[int]]:
        """Per value, the operators reading it."""
        out: list[list[int]] = [[] for _ in range(len(self.ops) + 1)]
        for t, ins in enumerate(self.inputs):
            for v in ins:
                out[v].append(t)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, *in_shape) -> (B, *out_shape)``."""
        vals = [x]
        for op, ins in zip(self.ops, self.inputs):
            vals.append(op.forward_n([vals[v] for v in ins]) if isinstance(op, MergeOp) else op.forward(vals[ins[0]]))
        return vals[-1]

    def row_bytes(self) -> int:
        """Bytes of backward temporaries per (sample, specification row)."""
        return max(numel(self.shape(v)) for v in range(len(self.ops) + 1)) * 4 * _TEMP_FACTOR


def _step_interval(dag: Dag, t: int, bounds: list[Interval]) -> Interval:
    op, ins = dag.ops[t], dag.inputs[t]
    if isinstance(op, MergeOp):
        return op.interval_n([bounds[v][0] for v in ins], [bounds[v][1] for v in ins])
    return op.interval(*bounds[ins[0]])


def ibp_values(dag: Dag, inp: InputSet, upto: int | None = None) -> list[Interval]:
    """IBP intervals of values ``0 .. upto`` (default all): entry ``v`` is ``(lo, hi) (B, *shape_v)``."""
    upto = len(dag.ops) if upto is None else upto
    bounds: list[Interval] = [(inp.lo, inp.hi)]
    for t in range(upto):
        bounds.append(_step_interval(dag, t, bounds))
    return bounds


def ibp_margin(dag: Dag, inp: InputSet, c: torch.Tensor) -> torch.Tensor:
    """IBP lower bound ``(B, S)`` of ``C z`` (``C (B, S, K)``), folded into a final Linear."""
    last = dag.ops[-1]
    if isinstance(last, LinearOp):
        lo, hi = ibp_values(dag, inp, len(dag.ops) - 1)[dag.inputs[-1][0]]
        w = c.matmul(last.w)
        mid, rad = ((hi + lo) / 2).unsqueeze(1), ((hi - lo) / 2).unsqueeze(1)
        bias = c.matmul(last.b) if last.b is not None else 0.0
        return (w * mid).sum(-1) - (w.abs() * rad).sum(-1) + bias
    lo, hi = ibp_values(dag, inp)[-1]
    return (c.clamp(min=0) * lo.unsqueeze(1)).sum(-1) + (c.clamp(max=0) * hi.unsqueeze(1)).sum(-1)


def backward(dag: Dag, start: dict[int, torch.Tensor], const: torch.Tensor, bounds: list[Interval],
             inp: InputSet, cache: dict | None = None, alphas: dict[int, torch.Tensor] | None = None
             ) -> torch.Tensor:
    """Lower bound ``(B, S)`` of ``sum_v start[v] . z_v + const`` over the input set; ``start[v]``
    is ``(B', S, *shape_v)``, ``bounds[v]`` bounds value ``v``. ``alphas``: free lower slopes per
    ReLU operator index (alpha-CROWN)."""
    coef = dict(start)
    for t in range(max(coef) - 1, -1, -1):
        a = coef.pop(t + 1, None)
        if a is None:
            continue
        op, ins = dag.ops[t], dag.inputs[t]
        if isinstance(op, MergeOp):
            parts = op.back_n(a)
        else:
            alpha = None if alphas is None else alphas.get(t)
            a, const = op.backward(a, const, *bounds[ins[0]], cache=cache, alpha=alpha)
            parts = [a]
        for v, p in zip(ins, parts):
            coef[v] = coef[v] + p if v in coef else p
    a0 = coef.pop(0, None)
    if a0 is None:  # the function does not depend on the input
        return const
    return inp.concretize(a0, const)


def _linear_ancestry(dag: Dag) -> list[int]:
    """Per value: the number of mixing operators above it when every operator above it is linear,
    else -1 (then IBP is not exact for it)."""
    out = [0]
    for op, ins in zip(dag.ops, dag.inputs):
        above = [out[v] for v in ins]
        out.append(-1 if not op.linear or min(above) < 0 else sum(above) + int(op.mixing))
    return out


def _chunk_rows(memory_budget: int, b: int, row_bytes: int) -> int:
    return max(1, min(memory_budget, _CHUNK_BYTES) // (max(b, 1) * 2 * row_bytes))


def _refine(dag: Dag, v: int, lo: torch.Tensor, hi: torch.Tensor, bounds: list[Interval], inp: InputSet,
            users: list[list[int]], memory_budget: int) -> Interval:
    """Tighten ``[lo, hi]`` of value ``v`` by CROWN on the rows its nonlinear users depend on."""
    b = lo.shape[0]
    need = torch.zeros(b, numel(tuple(lo.shape[1:])), dtype=torch.bool, device=lo.device)
    for t in users[v]:
        op = dag.ops[t]
        if op.linear:
            continue
        after_users = users[t + 1]
        after = dag.ops[after_users[0]] if len(after_users) == 1 else None
        need |= op.refine_rows(lo, hi, after)
    rows = need.any(dim=0).nonzero().squeeze(1)
    new_l, new_h = lo.reshape(b, -1).clone(), hi.reshape(b, -1).clone()
    per = _chunk_rows(memory_budget, b, dag.row_bytes())
    producer, src = dag.ops[v - 1], dag.inputs[v - 1]
    cache = RelaxCache()
    if len(dag.shape(v)) == 3 and _refine_cells(dag, v, need, new_l, new_h, bounds, inp, cache, memory_budget):
        return new_l.reshape(lo.shape), new_h.reshape(hi.shape)
    if len(dag.shape(v)) == 3:  # feature maps: rows as receptive-field windows (dag_win)
        s, per = 0, 4  # a first small chunk measures the widest window, then chunks fill the budget
        while s < rows.numel():
            r = rows[s:s + per]
            k = r.numel()
            low, widest = windowed_refine_lower(dag, v, r, bounds, inp, cache)
            new_l[:, r] = torch.maximum(new_l[:, r], low[:, :k])
            new_h[:, r] = torch.minimum(new_h[:, r], -low[:, k:])
            s += k
            per = max(1, min(memory_budget, _WIN_CHUNK_BYTES) // (2 * widest * 4 * _TEMP_FACTOR))
        return new_l.reshape(lo.shape), new_h.reshape(hi.shape)
    for s in range(0, rows.numel(), per):
        r = rows[s:s + per]
        k = r.numel()
        if isinstance(producer, MergeOp):
            a = torch.zeros(1, k, numel(dag.shape(v)), dtype=lo.dtype, device=lo.device)
            a[0, torch.arange(k, device=lo.device), r] = 1.0
            a = torch.cat([a, -a], dim=1).reshape((1, 2 * k) + dag.shape(v))
            start, const = {v: a}, lo.new_zeros(b, 2 * k)
        else:
            a, c0 = producer.rows_back(r)
            start, const = {src[0]: torch.cat([a, -a], dim=1)}, torch.cat([c0, -c0], dim=1).expand(b, 2 * k)
        low = backward(dag, start, const, bounds, inp, cache)
        new_l[:, r] = torch.maximum(new_l[:, r], low[:, :k])
        new_h[:, r] = torch.minimum(new_h[:, r], -low[:, k:])
    return new_l.reshape(lo.shape), new_h.reshape(hi.shape)


def _refine_cells(dag: Dag, v: int, need: torch.Tensor, new_l: torch.Tensor, new_h: torch.Tensor,
                  bounds: list[Interval], inp: InputSet, cache: RelaxCache, memory_budget: int) -> bool:
    """Refine the needed neurons ``need (B, N)`` of the ``(C, H, W)`` value ``v`` in place by
    cell-grouped windows (:mod:`fortify.certify.dag_cells`: every channel of each pixel holding a
    needed neuron, the needed ones written); ``False`` (nothing done) when the graph below ``v``
    has an operator that module does not step through, or too few channels per cell are needed."""
    plan = plan_cells(dag, v)
    if plan is None:
        return False
    cv, hh, ww = dag.shape(v)
    need_u = need.any(dim=0).reshape(cv, hh * ww)
    cells = need_u.any(dim=0).nonzero().squeeze(1)
    if cells.numel() == 0 or int(need_u.sum()) < CELL_FILL * cv * cells.numel():
        return False
    b = new_l.shape[0]
    one = cell_bytes(dag, plan, b) * _TEMP_FACTOR  # one cell, every channel
    per = max(1, min(memory_budget, _WIN_CHUNK_BYTES) // one)
    # a cell over the whole budget: its channels in groups (they share the window all the same)
    group = cv if one <= memory_budget else max(1, cv * memory_budget // one)
    offs = torch.arange(cv, device=cells.device) * (hh * ww)
    for s in range(0, cells.numel(), per):
        cc = cells[s:s + per]
        for c0 in range(0, cv, group):
            ch = torch.arange(c0, min(cv, c0 + group), device=cells.device)
            k = ch.numel()
            low = cells_refine_lower(dag, plan, cc, bounds, inp, cache, None if k == cv else ch)  # (B, P, 2k)
            sel = need_u[ch][:, cc].t()  # (P, k): the needed neurons of these cells
            idx = (cc[:, None] + offs[ch][None, :])[sel]
            new_l[:, idx] = torch.maximum(new_l[:, idx], low[:, :, :k][:, sel])
            new_h[:, idx] = torch.minimum(new_h[:, idx], -low[:, :, k:][:, sel])
    return True


def layer_bounds(dag: Dag, inp: InputSet, *, intermediate: str = "crown",
                 memory_budget: int = 2 << 30) -> list[Interval]:
    """Bounds of every value. ``intermediate="crown"``: values read by a nonlinear operator and
    produced by a linear one are refined with CROWN (except where IBP is exact: one mixing map of
    the input under linf); ``"ibp"``: IBP only (CROWN-IBP's setting)."""
    users = dag.users()
    ancestry = _linear_ancestry(dag)
    bounds: list[Interval] = [(inp.lo, inp.hi)]
    for t, op in enumerate(dag.ops):
        v = t + 1
        lo, hi = _step_interval(dag, t, bounds)
        refine = (intermediate == "crown" and op.linear and any(not dag.ops[u].linear for u in users[v])
                  and not (inp.norm == "linf" and 0 <= ancestry[v] <= 1))
        if refine:
            with torch.no_grad():
                lo, hi = _refine(dag, v, lo, hi, bounds, inp, users, memory_budget)
        bounds.append((lo, hi))
    return bounds


def optimize_slopes(dag: Dag, bounds: list[Interval], inp: InputSet, c: torch.Tensor, low: torch.Tensor,
                    steps: int, lr: float = 0.5, rows: int = 0) -> torch.Tensor:
    """alpha-CROWN (Xu et al. 2021) on the final specification of a DAG: the lower slopes of every
    ReLU's unstable neurons, one per (sample, row, neuron) in [0, 1], started at CROWN-Ada's, take
    ``steps`` of projected Adam on ``-sum(bound)``; the elementwise best over the iterates is
    returned (never looser than ``low (B, S)``). ``rows > 0``: only the lowest ``rows`` rows."""
    if 0 < rows < low.shape[1]:
        idx = low.topk(rows, dim=1, largest=False).indices
        cb = c.expand(low.shape[0], -1, -1) if c.shape[0] != low.shape[0] else c
        sub_c = cb.gather(1, idx.unsqueeze(-1).expand(-1, -1, cb.shape[-1]))
        return low.scatter(1, idx, optimize_slopes(dag, bounds, inp, sub_c, low.gather(1, idx), steps, lr))
    b, s = low.shape
    alphas: dict[int, torch.Tensor] = {}
    for t, op in enumerate(dag.ops):
        lo, hi = bounds[dag.inputs[t][0]]
        if isinstance(op, ReLUOp) and bool(((lo < 0) & (hi > 0)).any()):
            sl = relu_relax(lo, hi)[0].reshape(lo.shape[0], 1, -1)
            alphas[t] = sl.expand(b, s, sl.shape[-1]).clone().requires_grad_(True)
    if not alphas or steps < 1:
        return low
    best, params = low.detach().clone(), list(alphas.values())
    m1, m2 = [torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params]
    cache, out = RelaxCache(), len(dag.ops)
    zero = c.new_zeros(b, s)
    with torch.enable_grad():
        for k in range(1, steps + 1):
            cur = backward(dag, {out: c}, zero, bounds, inp, cache, alphas)
            best = torch.maximum(best, cur.detach())
            grads = torch.autograd.grad(cur.sum(), params)  # no gradient reaches the model
            with torch.no_grad():
                for p, g, m, q in zip(params, grads, m1, m2):
                    m.mul_(0.9).add_(g, alpha=0.1)
                    q.mul_(0.999).addcmul_(g, g, value=0.001)
                    p.add_(lr * (m / (1 - 0.9 ** k)) / ((q / (1 - 0.999 ** k)).sqrt() + 1e-8)).clamp_(0.0, 1.0)
    with torch.no_grad():
        return torch.maximum(best, backward(dag, {out: c}, zero, bounds, inp, cache, alphas))


def crown_margin(dag: Dag, inp: InputSet, c: torch.Tensor, *, intermediate: str = "crown",
                 intersect_ibp: bool = True, memory_budget: int = 2 << 30, alpha_steps: int = 0,
                 alpha_rows: int = 0) -> tuple[torch.Tensor, list[Interval]]:
    """Lower bound ``(B, S)`` of ``C z`` (``C (B, S, K)``) and the value bounds used; the same
    options as :func:`fortify.certify.crown.crown_margin`."""
    bounds = layer_bounds(dag, inp, intermediate=intermediate, memory_budget=memory_budget)
    low = backward(dag, {len(dag.ops): c}, c.new_zeros(c.shape[0], c.shape[1]), bounds, inp)
    if alpha_steps > 0:
        bounds = [(lo.detach(), hi.detach()) for lo, hi in bounds]
        low = optimize_slopes(dag, bounds, inp, c.detach(), low.detach(), alpha_steps, rows=alpha_rows)
    if intersect_ibp:
        low = torch.maximum(low, ibp_margin(dag, inp, c))
    return low, bounds


__all__ = ["Dag", "backward", "crown_margin", "ibp_margin", "ibp_values", "layer_bounds", "optimize_slopes"]
