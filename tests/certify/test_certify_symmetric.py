"""Row chunking of the CROWN refinements and the symmetric / antisymmetric split of the ReLU step.

* ``_chunk_rows`` (small chunks of whole-map rows, with a minimum row count for few-sample batches)
  stays within the memory budget and never changes a bound: small-cnn with every chunk size gives
  the one-chunk bounds, and its bounds lie below the margin a strong attack finds;
* the ReLU backward step of a row ``a`` and of ``-a`` (the lower and the negated upper bound rows)
  are ``C - D`` and ``-C - D`` with the symmetric part ``C = a (sl + su) / 2`` and the
  antisymmetric part ``D = |a| (su - sl) / 2``, zero on stable neurons (the split considered for
  propagating the symmetric part once for both signs; see benchmarks/certify.py).
"""
from __future__ import annotations

import pytest
import torch
from _certify_nets import margin, strong_attack_margin

import fortify.certify.crown as crown
from fortify.certify.bounds import InputSet, margin_spec
from fortify.certify.graph import build_ops
from fortify.certify.ops import ReLUOp, relu_relax
from fortify.models import create
from fortify.threat import ThreatModel


@pytest.mark.parametrize("b", [1, 4, 32, 200])
@pytest.mark.parametrize("row_bytes", [4 << 10, 50 << 10, 400 << 10, 80 << 20])
def test_chunk_rows_budget_and_minimum(b: int, row_bytes: int) -> None:
    """Within ``memory_budget`` (or one row), at most the large cap unless one row exceeds it, and at
    least ``_CHUNK_MIN_ROWS`` (sample, row) pairs whenever the large cap allows that many."""
    for budget in (1 << 20, 2 << 30):
        per = crown._chunk_rows(budget, b, row_bytes)
        per_row = b * 2 * row_bytes
        assert per >= 1
        assert per == 1 or per * per_row <= min(budget, crown._CHUNK_MAX_BYTES)
        small = max(1, min(budget, crown._CHUNK_BYTES) // per_row)
        large = max(1, min(budget, crown._CHUNK_MAX_BYTES) // per_row)
        assert per >= small
        if large * 2 * b >= crown._CHUNK_MIN_ROWS:
            assert per * 2 * b >= crown._CHUNK_MIN_ROWS


def _small_cnn_margins(x: torch.Tensor, threat: ThreatModel, net) -> torch.Tensor:
    y = net(x).argmax(1)
    ops = build_ops(net, tuple(x.shape[1:]), x)
    return crown.crown_margin(ops, InputSet.from_threat(x, threat), margin_spec(y, 10), intersect_ibp=False)[0]


@pytest.mark.parametrize("threat", [ThreatModel("linf", 0.03), ThreatModel("l2", 0.4)], ids=str)
def test_chunk_sizes_give_identical_bounds(threat: ThreatModel, monkeypatch: pytest.MonkeyPatch) -> None:
    """small-cnn on 12x12 inputs (every refinement path: windowed conv rows, dense Linear rows):
    one chunk, the default caps and one-row chunks give the same bounds, below an attack's margin."""
    torch.manual_seed(0)
    net = create("small-cnn", in_shape=(1, 12, 12), channels=(4, 6), hidden=16).eval()
    x = torch.rand(6, 1, 12, 12)
    default = _small_cnn_margins(x, threat, net)
    with monkeypatch.context() as mp:
        for name in ("_CHUNK_BYTES", "_CHUNK_MAX_BYTES"):
            mp.setattr(crown, name, 1 << 40)
        one_chunk = _small_cnn_margins(x, threat, net)
        for name in ("_CHUNK_BYTES", "_CHUNK_MAX_BYTES"):
            mp.setattr(crown, name, 1)
        mp.setattr(crown, "_CHUNK_MIN_ROWS", 1)
        tiny = _small_cnn_margins(x, threat, net)
    torch.testing.assert_close(default, one_chunk, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(tiny, one_chunk, atol=2e-6, rtol=1e-5)
    y = net(x).argmax(1)
    attack = strong_attack_margin(net, x, y, threat, steps=30, restarts=2)
    assert bool((default.amin(dim=1) <= attack + 1e-5).all())
    assert bool((margin(net(x), y) >= attack - 1e-6).all())


@pytest.mark.parametrize("frac", [0.05, 0.6])
def test_relu_step_splits_into_symmetric_and_antisymmetric_parts(frac: float) -> None:
    """``ReLUOp.backward`` of ``[a, -a]`` (shared rows, B' = 1) equals ``[C - D, -C - D]`` with the
    constants ``c + sum(min(a, 0) bu)`` and ``-c - sum(max(a, 0) bu)``; ``D`` vanishes off the
    unstable neurons."""
    g = torch.Generator().manual_seed(2)
    b, s, n = 5, 7, 60
    lo = torch.randn(b, n, generator=g)
    lo = torch.where(torch.rand(b, n, generator=g) < frac, -lo.abs() - 0.01, lo.abs())
    hi = lo + torch.rand(b, n, generator=g) * 3 + 0.01
    sl, su, bu = (t[:, None] for t in relu_relax(lo, hi))
    a = torch.randn(1, s, n, generator=g)
    c0 = torch.randn(1, s, generator=g)
    got, gc = ReLUOp("relu").backward(torch.cat([a, -a], 1), torch.cat([c0, -c0], 1), lo, hi)
    sym, anti = a * (sl + su) / 2, a.abs() * (su - sl) / 2
    torch.testing.assert_close(got, torch.cat([sym - anti, -sym - anti], 1), atol=1e-6, rtol=1e-6)
    want_c = torch.cat([c0 + (a.clamp(max=0) * bu).sum(-1), -c0 - (a.clamp(min=0) * bu).sum(-1)], 1)
    torch.testing.assert_close(gc, want_c, atol=1e-5, rtol=1e-6)
    stable = ~((lo < 0) & (hi > 0))
    assert bool((anti.expand(b, -1, -1)[stable[:, None].expand(-1, s, -1)] == 0).all())
