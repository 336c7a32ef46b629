"""CROWN: backward linear bound propagation (Zhang et al. 2018, "Efficient neural network robustness
certification with general activation functions"; Weng et al. 2018, "Towards fast computation of
certified robustness for ReLU networks") -- the driver.

A lower bound of ``a . z_t`` (``a (B', S, *shape_t)``, S specification rows) is propagated backward
through the operators: :func:`backward_lower` walks the graph from ``t`` down to the input and asks
each operator for its step (:meth:`fortify.certify.ops.Op.backward`: linear operators map
``a -> a W`` and add ``a . b`` to a constant; nonlinear ones apply their linear relaxation, e.g.
the ReLU's CROWN-Ada slopes or the MaxPool's ``j*`` bound). An operator may absorb the one before
it (:meth:`Op.absorbs`: a ReLU before a non-overlapping MaxPool is applied at the pooled
resolution, exact), and fused-step strategies (:data:`FUSED_STEPS`: Conv -> [ReLU] -> MaxPool in
one step, :mod:`fortify.certify.pooled`) take over where they match. At the input the linear
function is concretised over the threat set (:meth:`InputSet.concretize`: box and dual norm).

Intermediate (pre-activation) bounds are computed layer by layer with the same backward pass
(specification = identity rows, both signs), only for the neurons whose bounds the next
operator's relaxation depends on (:meth:`Op.refine_rows`: a ReLU's unstable neurons, plus active
ones in undecided MaxPool windows), intersected with IBP. Rows are chosen per sample; conv layers
use the windowed strategy (:mod:`fortify.certify.patches`) where every operator below supports it.
Memory: a backward pass holds ``a`` of ``B * S * max_t numel(z_t)`` floats; the specification rows
are chunked so that this stays under ``memory_budget`` bytes.

Final-pass slope optimisation (:func:`optimize_slopes`, ``alpha_steps > 0``): the lower slopes of
the unstable neurons in the last backward pass become free parameters in [0, 1] per (sample, row,
neuron), optimised by projected Adam with the intermediate bounds fixed (alpha-CROWN of Xu et al.
2021 on the final specification only); the best iterate per row is kept, so the bound is never
looser than CROWN-Ada's.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from fortify.certify.bounds import InputSet, ibp_margin, linear_prefix, prefix_dual
from fortify.certify.ops import Interval, LinearOp, Op, RelaxCache, ReLUOp, numel, relu_relax
from fortify.certify.patches import windowed_lower, windowed_ok
from fortify.certify.pooled import PooledConvStep

#: bytes of live temporaries per float of a backward coefficient tensor (a, a+, a-, new a)
_TEMP_FACTOR = 4
#: bytes of backward temporaries per chunk of specification rows: small chunks stay in cache and
#: reuse the allocator's blocks (large fresh allocations are page-faulted on first touch); chunks
#: grow up to ``_CHUNK_MAX_BYTES`` while they hold fewer than ``_CHUNK_MIN_ROWS`` (sample, row)
#: pairs (few wide rows: the per-chunk overhead dominates). Measured on a 2-core EPYC, one thread:
#: random small-cnn (32 images) 1.4x faster at 16 MiB than 64 MiB; madry-cnn (4-8 images, 40 rows
#: a chunk at 16 MiB) 1.1-1.3x slower at 16 MiB, hence the row minimum.
_CHUNK_BYTES = 16 << 20
_CHUNK_MAX_BYTES = 64 << 20
_CHUNK_MIN_ROWS = 256

#: fused-step strategies tried at every operator of a backward pass (``pooled=True``), in order
FUSED_STEPS: tuple[PooledConvStep, ...] = (PooledConvStep(),)


def backward_lower(
    ops: list[Op], upto: int, a: torch.Tensor, bounds: list[Interval], inp: InputSet,
    const: torch.Tensor | None = None, pooled: bool = True, cache: dict | None = None,
    alphas: dict[int, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Lower bound ``(B, S)`` of ``a . z_upto + const`` over the input set, ``z_upto`` the input of
    ``ops[upto]`` (the output when ``upto == len(ops)``); ``bounds[t]`` bounds the input of ``ops[t]``.
    ``pooled``: let the fused-step strategies (:data:`FUSED_STEPS`) take the steps they match
    (same bounds, less work). ``cache``: a dict shared by calls with the same ``bounds`` (chunks of
    rows) that keeps the relaxations, which do not depend on ``a``. ``alphas``: lower slopes per
    ReLU operator index for :func:`optimize_slopes` (ReLUs absorbed by a MaxPool keep CROWN-Ada's)."""
    b = inp.x.shape[0]
    const = a.new_zeros(b, a.shape[1]) if const is None else const.expand(b, a.shape[1])
    t = upto - 1
    while t >= 0:
        step, low = _fused_step(ops, t) if pooled else (None, None)
        if step is not None and low is not None:
            a, const = step.backward(ops, low, t, a, const, bounds, cache)
            t = low - 1
            continue
        op = ops[t]
        fuse = t >= 1 and op.absorbs(ops[t - 1])
        alpha = None if alphas is None else alphas.get(t)
        a, const = op.backward(a, const, *bounds[t], cache=cache, alpha=alpha, below=bounds[t - 1] if fuse else None)
        t -= 1 + int(fuse)
    return inp.concretize(a, const)


def _fused_step(ops: list[Op], t: int) -> tuple[PooledConvStep | None, int | None]:
    """The first fused-step strategy matching at ``ops[t]`` and the lowest operator it covers."""
    for step in FUSED_STEPS:
        low = step.match(ops, t)
        if low is not None:
            return step, low
    return None, None


def rows_union(need: torch.Tensor) -> int:
    """Number of neurons needed by at least one sample of ``need (B, N)``."""
    return int(need.any(dim=0).sum())


def _row_bytes(ops: list[Op], upto: int) -> int:
    """Bytes of backward temporaries per (sample, specification row) down to the input."""
    sizes = [numel(ops[0].in_shape)] + [numel(op.out_shape) for op in ops[:upto]]
    return max(sizes) * 4 * _TEMP_FACTOR


def _chunk_rows(memory_budget: int, b: int, row_bytes: int, cap: int = _CHUNK_BYTES) -> int:
    """Specification rows per chunk of a refinement (each taken for both signs and all ``b``
    samples): temporaries (``row_bytes`` per sample and row) capped at ``cap`` unless that leaves
    fewer than ``_CHUNK_MIN_ROWS`` (sample, row) pairs, then up to ``_CHUNK_MAX_BYTES``; never
    above ``memory_budget``."""
    per_row = max(b, 1) * 2 * row_bytes
    small = max(1, min(memory_budget, cap) // per_row)
    large = max(1, min(memory_budget, _CHUNK_MAX_BYTES) // per_row)
    return max(small, min(large, -(-_CHUNK_MIN_ROWS // (2 * max(b, 1)))))


def _refine_pairs(ops, t, need, new_l, new_h, bounds, inp: InputSet, per: int, shape):
    """Refinement of a Linear layer's rows as (sample, neuron) pairs, ``per`` pairs a chunk: each
    pair is a batch entry of its own (its sample's bounds and input set gathered), so the cost
    follows the total count of needed rows instead of ``B x`` the largest per-sample count."""
    sid, rid = need.nonzero(as_tuple=True)
    op = ops[t - 1]
    for s in range(0, sid.numel(), per):
        si, ri = sid[s:s + per], rid[s:s + per]
        sub = [(lo_[si], hi_[si]) for lo_, hi_ in bounds[:t - 1]]
        sinp = InputSet(inp.x[si], inp.lo[si], inp.hi[si], inp.norm, inp.eps)
        a = op.w[ri].unsqueeze(1)  # (P, 1, n_in)
        c0 = (op.b[ri] if op.b is not None else a.new_zeros(ri.shape)).unsqueeze(1)
        low = backward_lower(ops, t - 1, torch.cat([a, -a], dim=1), sub, sinp, torch.cat([c0, -c0], dim=1),
                             cache=RelaxCache())
        new_l[si, ri] = torch.maximum(new_l[si, ri], low[:, 0])
        new_h[si, ri] = torch.minimum(new_h[si, ri], -low[:, 1])
    return new_l.reshape(shape), new_h.reshape(shape)


@dataclass(frozen=True)
class RefinePaths:
    """Which row strategies a refinement may take (all on by default; off: the reference paths
    the tests compare them with). ``use_windows``: conv rows as windows (:mod:`fortify.certify.patches`);
    ``per_sample``: a Linear layer's rows per sample (else the union over the batch); ``ragged``:
    (sample, neuron) pairs when padding per-sample rows would waste > 30%."""

    use_windows: bool = True
    per_sample: bool = True
    ragged: bool = True


def _refine(ops: list[Op], t: int, lo: torch.Tensor, hi: torch.Tensor, bounds: list[Interval], inp: InputSet,
            memory_budget: int, paths: RefinePaths | None = None) -> Interval:
    """Tighten ``[lo, hi]`` (input of ``ops[t]``, ``(B, *shape)``) by CROWN on the rows that matter:
    for a ReLU, its unstable neurons, plus its active ones in undecided windows when a MaxPool
    follows (their bounds enter the MaxPool relaxation); else every neuron. The windowed (conv) path
    and the dense path of a Linear layer select rows per sample (padded to the largest count); other
    dense cases (or ``paths.per_sample=False``) refine the union over the batch (extra rows do not change
    a sample's result: they are stable or dead for it). ``paths.ragged``: when padding to the largest
    per-sample count would waste > 30% of a Linear layer's rows, refine (sample, neuron) pairs
    (:func:`_refine_pairs`)."""
    paths = paths or RefinePaths()
    b = lo.shape[0]
    lf, hf = lo.reshape(b, -1), hi.reshape(b, -1)
    need = ops[t].refine_rows(lo, hi, ops[t + 1] if t + 1 < len(ops) else None)
    if not bool(need.any()):
        return lo, hi
    windowed = paths.use_windows and windowed_ok(ops, t)
    # windowed rows hold windows, not whole maps: their chunks keep the large cap
    per = _chunk_rows(memory_budget, b, _row_bytes(ops, t), _CHUNK_MAX_BYTES if windowed else _CHUNK_BYTES)
    cache = RelaxCache()
    new_l, new_h = lf.clone(), hf.clone()
    if windowed:  # per-sample rows, padded to the largest count (padding rows are left unchanged)
        counts = need.sum(dim=1)
        order = torch.argsort((~need).to(torch.int8), dim=1, stable=True)[:, :int(counts.max())]
        valid = torch.arange(order.shape[1], device=lo.device)[None, :] < counts[:, None]
        for s in range(0, order.shape[1], per):
            r, v = order[:, s:s + per], valid[:, s:s + per]
            k = r.shape[1]
            low = windowed_lower(ops, t, r, bounds, inp, cache)
            cl, ch = new_l.gather(1, r), new_h.gather(1, r)
            new_l.scatter_(1, r, torch.where(v, torch.maximum(cl, low[:, :k]), cl))
            new_h.scatter_(1, r, torch.where(v, torch.minimum(ch, -low[:, k:]), ch))
        return new_l.reshape(lo.shape), new_h.reshape(hi.shape)
    if paths.per_sample and isinstance(ops[t - 1], LinearOp) and b > 1 and int(need.sum(dim=1).max()) < rows_union(need):
        # per-sample rows of a Linear layer (the rows of W for each sample's own unstable neurons),
        # padded to the largest count like the windowed path: cost follows the largest per-sample
        # count instead of the union over the batch
        counts = need.sum(dim=1)
        if paths.ragged and int(counts.sum()) < 0.7 * b * int(counts.max()):  # padding would waste > 30%
            return _refine_pairs(ops, t, need, new_l, new_h, bounds, inp, b * per, lo.shape)
        order = torch.argsort((~need).to(torch.int8), dim=1, stable=True)[:, :int(counts.max())]
        valid = torch.arange(order.shape[1], device=lo.device)[None, :] < counts[:, None]
        op = ops[t - 1]
        assert isinstance(op, LinearOp), "checked above"
        for s in range(0, order.shape[1], per):
            r, v = order[:, s:s + per], valid[:, s:s + per]
            k = r.shape[1]
            a = op.w[r]  # (B, k, n_in)
            c0 = op.b[r] if op.b is not None else a.new_zeros(r.shape)
            low = backward_lower(ops, t - 1, torch.cat([a, -a], dim=1), bounds, inp, torch.cat([c0, -c0], dim=1),
                                 cache=cache)
            cl, ch = new_l.gather(1, r), new_h.gather(1, r)
            new_l.scatter_(1, r, torch.where(v, torch.maximum(cl, low[:, :k]), cl))
            new_h.scatter_(1, r, torch.where(v, torch.minimum(ch, -low[:, k:]), ch))
        return new_l.reshape(lo.shape), new_h.reshape(hi.shape)
    rows = need.any(dim=0).nonzero().squeeze(1)
    for s in range(0, rows.numel(), per):
        r = rows[s:s + per]
        k = r.numel()
        a, c0 = ops[t - 1].rows_back(r)  # first step (linear) without the dense one-hot product
        a, c0 = torch.cat([a, -a], dim=1), torch.cat([c0, -c0], dim=1)
        low = backward_lower(ops, t - 1, a, bounds, inp, c0, cache=cache)
        new_l[:, r] = torch.maximum(new_l[:, r], low[:, :k])
        new_h[:, r] = torch.minimum(new_h[:, r], -low[:, k:])
    return new_l.reshape(lo.shape), new_h.reshape(hi.shape)


def layer_bounds(
    ops: list[Op], inp: InputSet, *, intermediate: str = "crown", memory_budget: int = 2 << 30
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Bounds of the input of every operator (plus the output, last entry). ``intermediate="crown"``
    refines the pre-activation bounds of each nonlinearity fed by a linear operator with CROWN;
    ``"ibp"`` keeps IBP (the CROWN-IBP setting of Zhang et al. 2020). The first nonlinearity is
    not refined when the linear block before it has a single Linear/Conv (the rest elementwise or
    reshapes): IBP of one affine map over a linf box is exact (CROWN's concretisation is the same
    formula), as is the dual-norm interval under l2 / l1. Two or more mixing maps in a row (e.g.
    Linear -> Linear) are not exact under IBP and are refined like any other layer."""
    k = linear_prefix(ops) if inp.norm != "linf" else -1
    first = linear_prefix(ops)
    if sum(op.mixing for op in ops[:first]) > 1:
        first = -1
    bounds: list[tuple[torch.Tensor, torch.Tensor]] = []
    lo, hi = inp.lo, inp.hi
    for t, op in enumerate(ops):
        if intermediate == "crown" and not op.linear and t > 0 and ops[t - 1].linear and t != first:
            with torch.no_grad():
                lo, hi = _refine(ops, t, lo, hi, bounds, inp, memory_budget)
        bounds.append((lo, hi))
        lo, hi = op.interval(lo, hi)
        if t + 1 == k:
            lo, hi = prefix_dual(ops[:k], inp, lo, hi)
    bounds.append((lo, hi))
    return bounds


def optimize_slopes(ops: list[Op], bounds: list[tuple[torch.Tensor, torch.Tensor]], inp: InputSet, c: torch.Tensor,
                    low: torch.Tensor, steps: int, lr: float = 0.5, rows: int = 0) -> torch.Tensor:
    """Tighten the final bound ``low (B, S)`` of ``C z`` by optimising the lower ReLU slopes used in
    the final backward pass (alpha-CROWN, Xu et al. 2021, with the intermediate bounds kept fixed):
    one slope in [0, 1] per (sample, specification row, unstable neuron) for every ReLU that is not
    fused into a MaxPool, started at CROWN-Ada's ``1[u > -l]``, ``steps`` of Adam on ``-sum(bound)``
    (projected onto [0, 1]). Every slope in [0, 1] gives a sound bound, so the elementwise best
    over the iterates is returned: never looser than ``low``. ``rows > 0``: only the ``rows``
    lowest specification rows of each sample are optimised (a certificate is the minimum over the
    rows; the others keep their CROWN-Ada bound)."""
    if 0 < rows < low.shape[1]:
        idx = low.topk(rows, dim=1, largest=False).indices  # (B, rows)
        cb = c.expand(low.shape[0], -1, -1) if c.shape[0] != low.shape[0] else c
        sub_c = cb.gather(1, idx.unsqueeze(-1).expand(-1, -1, cb.shape[-1]))
        sub = optimize_slopes(ops, bounds, inp, sub_c, low.gather(1, idx), steps, lr)
        return low.scatter(1, idx, sub)
    b, s = low.shape
    relus = [t for t, op in enumerate(ops) if isinstance(op, ReLUOp)
             and not (t + 1 < len(ops) and ops[t + 1].absorbs(op))]
    alphas = {}
    for t in relus:
        lo, hi = bounds[t]
        if bool(((lo < 0) & (hi > 0)).any()):
            sl = relu_relax(lo, hi)[0].reshape(lo.shape[0], 1, -1)
            alphas[t] = sl.expand(b, s, sl.shape[-1]).clone().requires_grad_(True)
    if not alphas or steps < 1:
        return low
    best = low.detach().clone()
    params = list(alphas.values())
    m1 = [torch.zeros_like(v) for v in params]
    m2 = [torch.zeros_like(v) for v in params]
    b1, b2 = 0.9, 0.999
    cache = RelaxCache()  # relaxations do not depend on the slopes: computed once for all steps
    with torch.enable_grad():
        for k in range(1, steps + 1):
            cur = backward_lower(ops, len(ops), c, bounds, inp, cache=cache, alphas=alphas)
            best = torch.maximum(best, cur.detach())
            # autograd.grad, not backward(): no gradient may reach the model's parameters. Adam by
            # hand (ascent on the bound): torch.optim's first step imports torch._dynamo (~1 s)
            grads = torch.autograd.grad(cur.sum(), params)
            with torch.no_grad():
                for v, g, m, q in zip(params, grads, m1, m2):
                    m.mul_(b1).add_(g, alpha=1 - b1)
                    q.mul_(b2).addcmul_(g, g, value=1 - b2)
                    step = lr * (m / (1 - b1 ** k)) / ((q / (1 - b2 ** k)).sqrt() + 1e-8)
                    v.add_(step).clamp_(0.0, 1.0)
        with torch.no_grad():
            best = torch.maximum(best, backward_lower(ops, len(ops), c, bounds, inp, cache=cache, alphas=alphas))
    return best


def crown_margin(
    ops: list[Op],
    inp: InputSet,
    c: torch.Tensor,
    *,
    intermediate: str = "crown",
    intersect_ibp: bool = True,
    memory_budget: int = 2 << 30,
    alpha_steps: int = 0,
    alpha_rows: int = 0,
) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    """Lower bound ``(B, S)`` of ``C z`` (``C (B, S, K)``, folded into the last layer) and the
    per-layer bounds used. With ``intersect_ibp`` the result is the elementwise maximum with the IBP
    margin bound (both are sound, so the maximum is). ``alpha_steps > 0``: the final pass's lower
    ReLU slopes are then optimised (:func:`optimize_slopes`; no gradient reaches the model)."""
    bounds = layer_bounds(ops, inp, intermediate=intermediate, memory_budget=memory_budget)
    low = backward_lower(ops, len(ops), c, bounds, inp)
    if alpha_steps > 0:
        bounds = [(lo.detach(), hi.detach()) for lo, hi in bounds]
        low = optimize_slopes(ops, bounds, inp, c.detach(), low.detach(), alpha_steps, rows=alpha_rows)
    if intersect_ibp:
        low = torch.maximum(low, ibp_margin(ops, inp, c))
    return low, bounds
