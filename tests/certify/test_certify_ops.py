"""The per-operator protocol (fortify.certify.ops): every operator's CROWN step is sound on samples
of its input box, a new layer type is one registered class, the strategies (windowed rows, the
pooled Conv->[ReLU]->MaxPool step, a ReLU absorbed by a MaxPool, per-sample rows, the relaxation
cache) give the bounds of the plain dense driver, and certify/ has no import cycle."""
from __future__ import annotations

import ast
import pathlib

import pytest
import torch
from _certify_nets import convnet, mlp
from torch import nn

import fortify.certify.crown as crown
from fortify.certify import margin_lower_bound
from fortify.certify.bounds import InputSet, margin_spec
from fortify.certify.graph import build_ops
from fortify.certify.ops import OP_BUILDERS, MaxPoolOp, Op, RelaxCache, ReLUOp, register_op
from fortify.errors import ConfigError, UnsupportedLayerError
from fortify.models import Normalized, create
from fortify.threat import ThreatModel


def _sound_step(op: Op, lo: torch.Tensor, hi: torch.Tensor, below=None, alpha=None, n: int = 64) -> None:
    """``a . f(z) + c >= a' . z + c'`` for random rows ``a`` and samples ``z`` of ``[lo, hi]``
    (``z`` of the absorbed ReLU's input when ``below`` is given)."""
    g = torch.Generator().manual_seed(0)
    b = lo.shape[0]
    src_lo, src_hi = below if below is not None else (lo, hi)
    a = torch.randn((b, 5) + tuple(op.out_shape), generator=g)
    const = torch.randn(b, 5, generator=g)
    a2, c2 = op.backward(a, const, lo, hi, below=below, alpha=alpha)
    for _ in range(n // 8):
        u = torch.rand((8,) + tuple(src_lo.shape), generator=g)
        z = src_lo + u * (src_hi - src_lo)  # (8, B, *in)
        for zi in z:
            out = op.forward(torch.relu(zi) if below is not None else zi)
            lhs = (a * out.unsqueeze(1)).flatten(2).sum(-1) + const
            rhs = (a2 * zi.unsqueeze(1)).flatten(2).sum(-1) + c2
            assert bool((lhs >= rhs - 1e-4).all()), type(op).__name__


def _box(shape: tuple[int, ...], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lo = torch.randn(shape, generator=g)
    return lo, lo + torch.rand(shape, generator=g) * 2


@pytest.mark.parametrize("module,shape", [
    (nn.Linear(6, 4), (6,)), (nn.Conv2d(2, 3, 3, stride=2, padding=1), (2, 6, 6)), (nn.Flatten(), (2, 3, 3)),
    (nn.ReLU(), (10,)), (nn.MaxPool2d(2), (2, 6, 6)), (nn.MaxPool2d(3, stride=2, padding=1), (2, 7, 7)),
    (nn.AvgPool2d(2), (2, 6, 6)), (nn.BatchNorm2d(2).eval(), (2, 4, 4)),
], ids=lambda v: type(v).__name__ if isinstance(v, nn.Module) else str(v))
def test_every_op_step_is_sound_and_interval_contains_samples(module: nn.Module, shape) -> None:
    """Each operator's backward step against samples of its input box (the relaxation's
    definition), and its interval contains the forward pass of the samples."""
    torch.manual_seed(0)
    (op,) = build_ops(nn.Sequential(module).eval(), shape, torch.zeros(1))
    lo, hi = _box((3,) + shape, 1)
    _sound_step(op, lo, hi)
    ilo, ihi = op.interval(lo, hi)
    z = lo + torch.rand_like(lo) * (hi - lo)
    out = op.forward(z)
    assert bool((out >= ilo - 1e-5).all() and (out <= ihi + 1e-5).all())


def test_relu_free_slopes_and_absorbed_relu_are_sound() -> None:
    """ReLU with random lower slopes in [0, 1] (alpha-CROWN), and a MaxPool step that absorbs the ReLU
    before it (its relaxation taken at j*), both sound on samples."""
    relu = build_ops(nn.Sequential(nn.ReLU()), (12,), torch.zeros(1))[0]
    lo, hi = _box((3, 12), 2)
    _sound_step(relu, lo, hi, alpha=torch.rand(3, 5, 12))
    relu_op, pool = build_ops(nn.Sequential(nn.ReLU(), nn.MaxPool2d(2)), (2, 6, 6), torch.zeros(1))
    assert isinstance(pool, MaxPoolOp) and pool.absorbs(relu_op)
    plo, phi = _box((3, 2, 6, 6), 3)
    _sound_step(pool, torch.relu(plo), torch.relu(phi), below=(plo, phi))


class _Negate(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(torch.ones_like(x, dtype=torch.bool), -x, x)  # -x, through an untraced function


class _NegateOp(Op):
    """The whole of a new linear layer type: forward, interval, back, bias."""

    def forward(self, x):
        return -x

    def interval(self, lo, hi):
        return -hi, -lo

    def back(self, a):
        return -a

    def bias(self, a):
        return a.new_zeros(a.shape[:2])


def test_new_layer_type_is_one_registered_class(monkeypatch: pytest.MonkeyPatch) -> None:
    """An unregistered layer is refused naming it; after registering one Op class its IBP and CROWN
    bounds equal those of the same map written as ``nn.Linear(-I)``."""
    torch.manual_seed(0)
    lin1, lin2 = nn.Linear(6, 8), nn.Linear(8, 3)
    neg = nn.Linear(8, 8, bias=False)
    with torch.no_grad():
        neg.weight.copy_(-torch.eye(8))
    net = nn.Sequential(lin1, _Negate(), nn.ReLU(), lin2).eval()
    ref = nn.Sequential(lin1, neg, nn.ReLU(), lin2).eval()
    x, threat = torch.rand(5, 6), ThreatModel("linf", 0.1)
    y = ref(x).argmax(1)
    with pytest.raises(UnsupportedLayerError, match="ones_like.*'1' \\(_Negate\\).*supported"):
        margin_lower_bound(net, x, y, threat, "crown")
    monkeypatch.setitem(OP_BUILDERS, _Negate, lambda m, name, shape, r: [_NegateOp()])
    for method in ("ibp", "crown", "crown-ibp"):
        got = margin_lower_bound(net, x, y, threat, method, intersect_ibp=False)
        want = margin_lower_bound(ref, x, y, threat, method, intersect_ibp=False)
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    with pytest.raises(ConfigError, match="already registered"):
        register_op(nn.ReLU)(lambda m, name, shape, r: [ReLUOp(name)])


def _reference_paths(mp: pytest.MonkeyPatch) -> None:
    """The plain dense driver: no fused steps, no absorbed ReLU, union rows, no cache."""
    mp.setattr(crown, "FUSED_STEPS", ())
    mp.setattr(MaxPoolOp, "absorbs", lambda self, prev: False)
    mp.setattr(RelaxCache, "memo", lambda self, key, fn: fn())
    ref = crown._refine
    mp.setattr(crown, "_refine", lambda *a, **k: ref(*a, **k, paths=crown.RefinePaths(False, False, False)))


NETS = {
    "mlp": lambda: (mlp(seed=0, d=12, h=24, k=5, depth=3, scale=2.0), (1, 3, 4)),
    "convnet-normalized": lambda: (Normalized(convnet(seed=11), [0.4], [0.3]), (1, 8, 8)),
    "small-cnn": lambda: (create("small-cnn", in_shape=(1, 12, 12), channels=(4, 8), hidden=16), (1, 12, 12)),
    "madry-cnn": lambda: (create("madry-cnn", in_shape=(2, 12, 12), channels=(3, 4), hidden=10), (2, 12, 12)),
}


@pytest.mark.parametrize("name", list(NETS))
@pytest.mark.parametrize("threat", [ThreatModel("linf", 0.03), ThreatModel("l2", 0.4)], ids=str)
def test_strategies_equal_the_plain_dense_driver(name: str, threat: ThreatModel, monkeypatch) -> None:
    """Margins of the default driver (windowed / pooled / absorbed / per-sample / cached) equal the
    plain dense driver's within 1e-5, and so do the ReLU relaxations: the same unstable neurons,
    with the same bounds. (Stable rows may differ: the dense driver refines the union of the
    batch's rows, which can make a row stable before it is refined; no relaxation changes.)"""
    torch.manual_seed(0)
    net, shape = NETS[name]()
    net = net.eval()
    x = torch.rand((6,) + shape, generator=torch.Generator().manual_seed(1))
    c = margin_spec(net(x).argmax(1), net(x).shape[1])
    inp = InputSet.from_threat(x, threat)
    ops = build_ops(net, shape, x)
    with torch.no_grad():
        fast, fb = crown.crown_margin(ops, inp, c, intersect_ibp=False)
        with monkeypatch.context() as mp:
            _reference_paths(mp)
            ref, rb = crown.crown_margin(ops, inp, c, intersect_ibp=False)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)
    for t, ((lo, hi), (rlo, rhi)) in enumerate(zip(fb, rb)):
        if t < len(ops) and isinstance(ops[t], ReLUOp):
            unstable = (lo < 0) & (hi > 0)
            assert torch.equal(unstable, (rlo < 0) & (rhi > 0))
            torch.testing.assert_close(lo[unstable], rlo[unstable], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(hi[unstable], rhi[unstable], atol=1e-5, rtol=1e-5)
    assert any(isinstance(op, ReLUOp) and bool(((lo < 0) & (hi > 0)).any()) for op, (lo, hi) in zip(ops, fb))


def test_certify_has_no_import_cycle() -> None:
    """Modules of fortify/certify (lazy imports included) form an acyclic import graph."""
    root = pathlib.Path(crown.__file__).parent
    graph: dict[str, set[str]] = {}
    for p in root.rglob("*.py"):
        parts = p.relative_to(root.parent.parent).with_suffix("").parts
        mod = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        deps: set[str] = set()
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                deps.add(node.module)
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
        graph[mod] = {d for d in deps if d.startswith("fortify.certify") and d != mod}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in graph.get(m, ()):
            assert state.get(d) != 1, f"import cycle: {' -> '.join(path + [m, d])}"
            if d in graph and not state.get(d):
                visit(d, path + [m])
        state[m] = 2

    assert "fortify.certify.crown" in graph and "fortify.certify.ops.relu" in graph
    for m in graph:
        if not state.get(m):
            visit(m, [])


def test_bound_options_dataclass_equals_keywords() -> None:
    """``margin_lower_bound(options=BoundOptions(...))`` == the same options as keywords (keywords
    override ``options``); an unknown option is a ConfigError naming the allowed ones."""
    from fortify.certify import BoundOptions

    net = mlp(seed=1, d=12, h=16, k=4, depth=2, scale=2.0)
    x, threat = torch.rand(4, 1, 3, 4), ThreatModel("linf", 0.05)
    y = net(x).argmax(1)
    opts = BoundOptions(intersect_ibp=False, alpha_steps=2, alpha_rows=1)
    got = margin_lower_bound(net, x, y, threat, "crown", options=opts)
    want = margin_lower_bound(net, x, y, threat, "crown", intersect_ibp=False, alpha_steps=2, alpha_rows=1)
    torch.testing.assert_close(got, want, atol=0.0, rtol=0.0)
    plain = margin_lower_bound(net, x, y, threat, "crown", options=opts, alpha_steps=0)
    torch.testing.assert_close(plain, margin_lower_bound(net, x, y, threat, "crown", intersect_ibp=False))
    with pytest.raises(ConfigError, match="alpha_step.*allowed: memory_budget"):
        margin_lower_bound(net, x, y, threat, "crown", alpha_step=3)
