"""The fused Conv -> [ReLU] -> MaxPool backward step (pooled.py), the per-refinement relaxation cache,
the channels-last transposed convolution and the skipped first-layer refinement give the bounds of
the reference paths (no loosening, no tightening beyond float rounding)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import fortify.certify.crown as crown
import fortify.certify.pooled as pooled
from fortify.certify.bounds import InputSet, ibp_intervals, margin_spec
from fortify.certify.graph import ConvOp, MaxPoolOp, build_ops
from fortify.certify.ops import RelaxCache
from fortify.models import create
from fortify.threat import ThreatModel


def _conv_pool(cin: int, k: int, stride: int, pad: int, m: int, size: int) -> nn.Sequential:
    torch.manual_seed(cin * 100 + k * 10 + stride + pad + m)
    return nn.Sequential(nn.Conv2d(cin, 5, k, stride=stride, padding=pad), nn.ReLU(), nn.MaxPool2d(m),
                         nn.Flatten()).eval()


@pytest.mark.parametrize("cin,k,stride,pad,m,size", [(1, 5, 1, 2, 2, 12), (3, 3, 2, 1, 2, 16), (2, 3, 1, 1, 3, 9),
                                                     (1, 4, 2, 1, 2, 16)])
def test_pooled_conv_back_equals_scatter_then_transposed_conv(cin, k, stride, pad, m, size) -> None:
    """Random pooled coefficients on random j* positions: the fused step == scatter + ConvOp.back/bias."""
    net = _conv_pool(cin, k, stride, pad, m, size)
    x = torch.rand(3, cin, size, size)
    ops = build_ops(net, (cin, size, size), x)
    t = next(i for i, op in enumerate(ops) if isinstance(op, MaxPoolOp))
    assert pooled.pooled_conv_index(ops, t, max_fan_in=10 ** 6) == 0
    conv, pool = ops[0], ops[t]
    lo = torch.randn((3,) + conv.out_shape)
    index, _, _ = pool.relax(lo, lo + torch.rand_like(lo))
    coef = torch.randn(3, 4, conv.out_shape[0], index.shape[-1])
    const = torch.randn(3, 4)
    got, gc = pooled.pooled_conv_back(conv, pool, coef, index, const)
    dense = torch.zeros(3, 4, conv.out_shape[0], conv.out_shape[1] * conv.out_shape[2])
    dense.scatter_add_(3, index.unsqueeze(1).expand(3, 4, -1, -1), coef)
    dense = dense.reshape((3, 4) + conv.out_shape)
    torch.testing.assert_close(got, conv.back(dense), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gc, const + conv.bias(dense), atol=1e-5, rtol=1e-5)


def test_pooled_conv_index_rejects_unsupported_layouts() -> None:
    """Overlapping pools, pool padding and dilated convs are left to the dense path."""
    x = torch.rand(1, 1, 12, 12)
    for net in [nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, stride=2)),
                nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.MaxPool2d(2, padding=1)),
                nn.Sequential(nn.Conv2d(1, 2, 3, padding=2, dilation=2), nn.ReLU(), nn.MaxPool2d(2))]:
        ops = build_ops(net.eval(), (1, 12, 12), x)
        t = next(i for i, op in enumerate(ops) if isinstance(op, MaxPoolOp))
        assert pooled.pooled_conv_index(ops, t, max_fan_in=10 ** 6) is None
    ops = build_ops(_conv_pool(3, 3, 1, 1, 2, 8), (3, 8, 8), torch.rand(1, 3, 8, 8))
    assert pooled.pooled_conv_index(ops, 2) == 0  # fan-in 3 * 3 * 3 = 27 <= 64
    assert pooled.pooled_conv_index(ops, 2, max_fan_in=26) is None


def _margins(net, shape, x, threat, **kw):
    y = net(x).argmax(1)
    c = margin_spec(y, net(x).shape[1])
    ops = build_ops(net, shape, x)
    return crown.crown_margin(ops, InputSet.from_threat(x, threat), c, intersect_ibp=False, **kw)


@pytest.mark.parametrize("threat", [ThreatModel("linf", 0.04), ThreatModel("l2", 0.4)], ids=str)
def test_crown_with_pooled_steps_and_cache_equals_reference(threat: ThreatModel, monkeypatch) -> None:
    """madry-cnn (two Conv -> ReLU -> MaxPool blocks) at 16x16: every pooled step on (fan-in limit
    lifted), and the default, give the margins and intermediate bounds of the dense reference
    (no pooled steps, no relaxation cache, one chunk); tiny chunks reuse the cache."""
    torch.manual_seed(1)
    net = create("madry-cnn", in_shape=(2, 16, 16), channels=(3, 4), hidden=10).eval()
    x = torch.rand(4, 2, 16, 16)
    default, bounds = _margins(net, (2, 16, 16), x, threat)
    chunked, _ = _margins(net, (2, 16, 16), x, threat, memory_budget=1 << 12)
    with monkeypatch.context() as mp:
        mp.setattr(pooled, "MAX_FAN_IN", 10 ** 6)
        all_pooled, _ = _margins(net, (2, 16, 16), x, threat)
    with monkeypatch.context() as mp:
        mp.setattr(crown, "FUSED_STEPS", ())
        mp.setattr(RelaxCache, "memo", lambda self, key, fn: fn())
        ref, ref_bounds = _margins(net, (2, 16, 16), x, threat)
    for got in (default, chunked, all_pooled):
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    for (lo, hi), (rlo, rhi) in zip(bounds, ref_bounds):
        torch.testing.assert_close(lo, rlo, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(hi, rhi, atol=1e-5, rtol=1e-5)
    ops = build_ops(net, (2, 16, 16), x)
    used = [t for t, op in enumerate(ops) if isinstance(op, MaxPoolOp) and pooled.pooled_conv_index(ops, t) is not None]
    assert used  # the default path took a pooled step (first conv: fan-in 2 * 5 * 5 = 50)


def test_first_layer_is_not_refined_and_equals_its_crown_bound() -> None:
    """The first ReLU's input bounds are IBP's, and a CROWN refinement of them changes nothing."""
    net = create("small-cnn", in_shape=(1, 12, 12), channels=(3, 4), hidden=8).eval()
    x = torch.rand(3, 1, 12, 12)
    inp = InputSet.from_threat(x, ThreatModel("linf", 0.1))
    ops = build_ops(net, (1, 12, 12), x)
    bounds = crown.layer_bounds(ops, inp)
    ibp = ibp_intervals(ops, inp)
    torch.testing.assert_close(bounds[1][0], ibp[1][0])
    lo, hi = crown._refine(ops, 1, *ibp[1], bounds, inp, 2 << 30)
    torch.testing.assert_close(lo, ibp[1][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(hi, ibp[1][1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("threat", [ThreatModel("linf", 0.05), ThreatModel("l2", 0.3)], ids=str)
def test_first_layer_after_two_mixing_maps_is_refined(threat: ThreatModel) -> None:
    """Linear -> Linear before the first ReLU: IBP through the chain is loose, so that ReLU's input
    bounds are CROWN's (a refinement of them changes nothing) and under linf strictly tighter than IBP."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 20), nn.Linear(20, 20), nn.ReLU(), nn.Linear(20, 5)).eval()
    x = torch.rand(8, 1, 4, 4)
    inp = InputSet.from_threat(x, threat)
    ops = build_ops(net, (1, 4, 4), x)
    with torch.no_grad():
        bounds = crown.layer_bounds(ops, inp)
        lo, hi = crown._refine(ops, 3, *bounds[3], bounds, inp, 2 << 30)
        ibp = ibp_intervals(ops, inp)[3]
    torch.testing.assert_close(lo, bounds[3][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(hi, bounds[3][1], atol=1e-5, rtol=1e-5)
    assert bool((bounds[3][0] >= ibp[0] - 1e-6).all() and (bounds[3][1] <= ibp[1] + 1e-6).all())
    if threat.norm == "linf":
        assert float((bounds[3][1] - bounds[3][0]).mean()) < 0.75 * float((ibp[1] - ibp[0]).mean())


def test_channels_last_transposed_conv_equals_contiguous() -> None:
    """ConvOp.back on a 32-channel map (channels-last kernel) == F.conv_transpose2d on contiguous input."""
    torch.manual_seed(2)
    conv = nn.Conv2d(8, 6, 3, stride=2, padding=1)
    x = torch.rand(2, 8, 9, 9)
    (op,) = build_ops(nn.Sequential(conv), (8, 9, 9), x)
    assert isinstance(op, ConvOp)
    a = torch.randn(2, 3, 6, 5, 5)
    want = torch.nn.functional.conv_transpose2d(a.reshape(6, 6, 5, 5), conv.weight, None, 2, 1, 0)
    torch.testing.assert_close(op.back(a).reshape(6, 8, 9, 9), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("threat", [ThreatModel("linf", 0.01), ThreatModel("l2", 0.05)], ids=str)
def test_ragged_pairs_equal_padded_and_union_rows(threat: ThreatModel, monkeypatch) -> None:
    """A Linear layer refined as (sample, neuron) pairs (samples with very different unstable counts,
    so the pair path is taken, also in chunks of 3 pairs) == padded per-sample rows == union rows."""
    from _certify_nets import mlp

    net = mlp(seed=3, d=12, h=24, k=5, depth=3).eval()
    x = torch.rand(6, 12) * torch.tensor([0.02, 0.05, 0.1, 0.7, 0.9, 1.0])[:, None]
    ops = build_ops(net, (12,), x)
    inp = InputSet.from_threat(x, threat)
    c = margin_spec(net(x).argmax(1), 5)
    calls = []
    ref_pairs = crown._refine_pairs

    def spy(*a, **k):
        calls.append(1)
        return ref_pairs(*a, **k)

    def run(**kw):
        budget = kw.pop("budget", 2 << 30)
        with monkeypatch.context() as mp:
            mp.setattr(crown, "_refine_pairs", spy)
            ref = crown._refine
            mp.setattr(crown, "_refine", lambda *a, **k: ref(*a, **k, paths=crown.RefinePaths(**kw)))
            return crown.crown_margin(ops, inp, c, intersect_ibp=False, memory_budget=budget)

    pairs, pb = run()
    assert calls  # the pair path was taken
    few, _ = run(budget=1 << 10)
    padded, db = run(ragged=False)
    union, _ = run(per_sample=False)
    for got in (pairs, few, padded):
        torch.testing.assert_close(got, union, atol=2e-6, rtol=1e-5)
    for (lo, hi), (ulo, uhi) in zip(pb, db):  # the union path also tightens rows stable for a sample
        torch.testing.assert_close(lo, ulo, atol=2e-6, rtol=1e-5)
        torch.testing.assert_close(hi, uhi, atol=2e-6, rtol=1e-5)
