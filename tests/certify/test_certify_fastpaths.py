"""The CROWN fast paths give the bounds of the reference paths they replace (no loosening):

* per-sample rows of a Linear layer's intermediate bounds == rows = union over the batch;
* the whole-tensor ReLU backward step == the elementwise definition of the relaxation;
* the row-gather of per-sample windows and the window-local MaxPool scatter (patches path) ==
  the dense path, on a MaxPool network with per-sample rows and small chunks;
* ReLU -> MaxPool fused at the pooled resolution == the unfused steps (dense and windowed).
"""
from __future__ import annotations

import pytest
import torch
from _certify_nets import mlp

import fortify.certify.crown as crown
from fortify.certify.bounds import InputSet, margin_spec
from fortify.certify.graph import build_ops
from fortify.certify.ops import MaxPoolOp, ReLUOp, relu_relax
from fortify.models import create
from fortify.threat import ThreatModel

THREATS = [ThreatModel("linf", 0.05), ThreatModel("l2", 0.3)]


def _margins(net, shape, x, threat, monkeypatch, memory_budget: int = 2 << 30, **refine_kw):
    y = net(x).argmax(1)
    c = margin_spec(y, net(x).shape[1])
    ops = build_ops(net, shape, x)
    inp = InputSet.from_threat(x, threat)
    ref = crown._refine
    with monkeypatch.context() as mp:
        mp.setattr(crown, "_refine", lambda *a, **k: ref(*a, **k, paths=crown.RefinePaths(**refine_kw)))
        return crown.crown_margin(ops, inp, c, intersect_ibp=False, memory_budget=memory_budget)[0]


@pytest.mark.parametrize("threat", THREATS, ids=str)
def test_per_sample_linear_rows_equal_union_rows(threat: ThreatModel, monkeypatch: pytest.MonkeyPatch) -> None:
    """Samples with very different unstable sets (a wide spread of input scales) so that the
    per-sample path is taken (largest count < union); bounds must match the union path."""
    torch.manual_seed(0)
    net = mlp(seed=3, d=12, h=24, k=5, depth=3).eval()
    x = torch.rand(6, 12) * torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9, 1.0])[:, None]
    fast = _margins(net, (12,), x, threat, monkeypatch)
    union = _margins(net, (12,), x, threat, monkeypatch, per_sample=False)
    few = _margins(net, (12,), x, threat, monkeypatch, memory_budget=1 << 10)
    torch.testing.assert_close(fast, union, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(few, union, atol=2e-6, rtol=1e-5)
    ops = build_ops(net, (12,), x)
    bounds = crown.layer_bounds(ops, InputSet.from_threat(x, threat), intermediate="ibp")
    need = torch.stack([((lo < 0) & (hi > 0)).reshape(len(x), -1) for lo, hi in bounds[2:3]])[0]
    assert int(need.sum(1).max()) < crown.rows_union(need)  # the per-sample branch was exercised


@pytest.mark.parametrize("frac", [0.1, 0.9])
def test_relu_back_matches_elementwise_definition(frac: float) -> None:
    """Both branches (few / many unstable columns) against ``a * (sl if a > 0 else su)`` and
    ``const + sum(min(a, 0) * bu)``; B' = 1 (shared rows) and B' = B."""
    g = torch.Generator().manual_seed(1)
    b, s, n = 3, 5, 40
    lo = torch.rand(b, n, generator=g) * 2 - 2 + torch.rand(b, n, generator=g) * (1 - frac) * 4
    lo = torch.where(torch.rand(b, n, generator=g) < frac, -torch.rand(b, n, generator=g), lo.abs() + 0.01)
    hi = lo + torch.rand(b, n, generator=g) * 2 + 0.01
    sl, su, bu = relu_relax(lo, hi)
    for bp in (1, b):
        a = torch.randn(bp, s, n, generator=g)
        const = torch.randn(b, s, generator=g)
        got, gc = ReLUOp("relu").backward(a, const, lo, hi)
        want = torch.where(a > 0, a * sl[:, None], a * su[:, None])
        wc = const + (a.clamp(max=0) * bu[:, None]).sum(-1)
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(gc, wc)


@pytest.mark.parametrize("threat", THREATS[:1], ids=str)
def test_patches_maxpool_path_equals_dense(threat: ThreatModel, monkeypatch: pytest.MonkeyPatch) -> None:
    """madry-cnn (conv, MaxPool with undecided windows, Linear) at 16x16: windowed per-sample rows
    (also in 3-row chunks) give the dense bounds; the dense bounds are below an attack's margin."""
    torch.manual_seed(0)
    net = create("madry-cnn", in_shape=(1, 16, 16), channels=(4, 6), hidden=12).eval()
    x = torch.rand(4, 1, 16, 16)
    fast = _margins(net, (1, 16, 16), x, threat, monkeypatch)
    chunked = _margins(net, (1, 16, 16), x, threat, monkeypatch, memory_budget=1 << 12)
    dense = _margins(net, (1, 16, 16), x, threat, monkeypatch, use_windows=False, per_sample=False)
    with monkeypatch.context() as mp:  # ReLU applied at full resolution after the MaxPool scatter
        mp.setattr(MaxPoolOp, "absorbs", lambda self, prev: False)
        unfused = _margins(net, (1, 16, 16), x, threat, monkeypatch)
        unfused_dense = _margins(net, (1, 16, 16), x, threat, monkeypatch, use_windows=False, per_sample=False)
    ops = build_ops(net, (1, 16, 16), x)
    assert any(ops[t].absorbs(ops[t - 1]) for t in range(1, len(ops)))  # the fused step was exercised
    torch.testing.assert_close(fast, dense, atol=3e-6, rtol=1e-5)
    torch.testing.assert_close(chunked, dense, atol=3e-6, rtol=1e-5)
    torch.testing.assert_close(unfused, dense, atol=3e-6, rtol=1e-5)
    torch.testing.assert_close(unfused_dense, dense, atol=3e-6, rtol=1e-5)
    y = net(x).argmax(1)
    z = net(x)
    clean = (z.gather(1, y[:, None]) - z).scatter(1, y[:, None], float("inf"))
    keep = ~torch.nn.functional.one_hot(y, z.shape[1]).bool()
    assert bool((dense <= clean[keep].reshape(dense.shape) + 1e-5).all())
