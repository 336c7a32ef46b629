"""Cell-grouped windowed refinement of DAG feature maps (fortify.certify.dag_cells).

References:

* the dense DAG back-substitution (:func:`fortify.certify.dag.backward` from unit rows of the whole
  map, an independent implementation of the same CROWN steps): equal lower / upper bounds for every
  supported value of a pre-activation ResNet, a DenseNet (channel ``cat``, grouped AvgPool conv) and
  an odd graph (9x9 input, dilation, stride 2, ``sub``, BatchNorm read twice, ReLU without
  BatchNorm) and a padded 1x1 conv (windows meeting only zero padding), under linf and l2, for all cells at once, one cell at a time and scattered subsets;
* the windowed per-row path (dag_win, cells switched off): equal intermediate and final bounds;
* soundness: intermediate bounds contain the activations of 300 sampled points of the ball, the
  margin bound is below the PGD margin;
* the kernels: the GEMM transposed convolutions against ``F.conv_transpose2d``, the block dot
  products against ``einsum``.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from _certify_nets import randomise_bn

from fortify import models
from fortify.attacks import ATTACKS
from fortify.certify import dag as dag_mod
from fortify.certify import margin_lower_bound
from fortify.certify.bounds import InputSet
from fortify.certify.dag import Dag, backward, layer_bounds
from fortify.certify.dag_cells import _conv_t_small, _dot, cells_refine_lower, plan_cells
from fortify.certify.graph import build_net
from fortify.certify.ops import MergeOp, numel
from fortify.threat import ThreatModel


class OddDag(nn.Module):
    """9x9, 2 channels: conv-BN-ReLU (fused), a dilated conv + ReLU (no BN), ``sub`` join, stride-2
    conv and 1x1 stride-2 shortcut joined by ``cat``, a BatchNorm read by a ReLU and an ``add``."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.bn1 = nn.Conv2d(2, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.c2 = nn.Conv2d(6, 6, 3, padding=2, dilation=2)
        self.c3, self.c4 = nn.Conv2d(6, 4, 3, stride=2, padding=1), nn.Conv2d(6, 4, 1, stride=2)
        self.bn2 = nn.BatchNorm2d(8)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(8 * 5 * 5, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.c1(x)))
        h = torch.relu(self.c2(h)) - h
        z = self.bn2(torch.cat([torch.relu(self.c3(h)), self.c4(h)], 1))
        return self.head(torch.relu(z) + z)


class PadDag(nn.Module):
    """A 1x1 conv with padding 1: its border outputs read only zero padding (empty windows below)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv2d(2, 4, 3, padding=1), nn.Conv2d(4, 4, 1, padding=1), nn.Conv2d(4, 4, 3)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 8 * 8, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.c1(x))
        return self.head(torch.relu(self.c3(torch.relu(self.c2(h))) + h))


def _net(name: str) -> tuple[nn.Module, tuple[int, ...]]:
    torch.manual_seed(0)
    if name in ("odd", "pad"):
        return randomise_bn(OddDag() if name == "odd" else PadDag()), (2, 9, 9) if name == "odd" else (2, 8, 8)
    kw = {"widths": (4, 8, 8)} if name == "resnet-mnist" else {"stem": 4, "growth": 4, "layers": (2, 2)}
    return randomise_bn(models.create(name, in_shape=(1, 8, 8), num_classes=4, **kw)), (1, 8, 8)


def _setup(name: str, norm: str = "linf") -> tuple[nn.Module, Dag, InputSet, torch.Tensor]:
    model, shape = _net(name)
    x = torch.rand((3,) + shape, generator=torch.Generator().manual_seed(1)) * 0.8 + 0.1
    dag = build_net(model, shape, x)
    assert isinstance(dag, Dag)
    eps = 0.02 if norm == "linf" else 0.1
    return model, dag, InputSet.from_threat(x, ThreatModel(norm, eps)), x


def _count_cells(monkeypatch: pytest.MonkeyPatch, fill: float = 0.0) -> list[bool]:
    """Route every feature-map refinement through the cells (``CELL_FILL = fill``); the returned
    list records each cells call (True: a channel group)."""
    calls: list[bool] = []
    orig = dag_mod.cells_refine_lower

    def counted(*args: object, **kw: object) -> torch.Tensor:
        calls.append(len(args) > 6 and args[6] is not None)
        return orig(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(dag_mod, "cells_refine_lower", counted)
    monkeypatch.setattr(dag_mod, "CELL_FILL", fill)
    return calls


def _dense_rows(dag: Dag, v: int, bounds: list, inp: InputSet) -> torch.Tensor:
    """Lower bounds ``(B, 2N)`` of ``+z_r`` then ``-z_r`` for every neuron of value ``v``, dense."""
    shape = dag.shape(v)
    eye = torch.eye(numel(shape))
    a = torch.cat([eye, -eye]).reshape((1, 2 * eye.shape[0]) + shape)
    with torch.no_grad():
        return backward(dag, {v: a}, inp.lo.new_zeros(inp.x.shape[0], a.shape[1]), bounds, inp)


def _cells_rows(dag: Dag, v: int, cells: torch.Tensor, bounds: list, inp: InputSet) -> torch.Tensor:
    """The same rows for the neurons of ``cells`` only, in the dense row order ``(B, 2, C, P)``."""
    plan = plan_cells(dag, v)
    assert plan is not None
    c = dag.shape(v)[0]
    with torch.no_grad():
        low = cells_refine_lower(dag, plan, cells, bounds, inp, {})  # (B, P, 2C)
    return low.reshape(low.shape[0], cells.numel(), 2, c).permute(0, 2, 3, 1)


@pytest.mark.parametrize("name,norm", [("resnet-mnist", "linf"), ("dense-mnist", "linf"), ("odd", "linf"),
                                       ("odd", "l2"), ("resnet-mnist", "l2"), ("pad", "linf")])
def test_cells_equal_the_dense_backward_on_every_supported_value(name: str, norm: str) -> None:
    _, dag, inp, _ = _setup(name, norm)
    with torch.no_grad():
        bounds = layer_bounds(dag, inp)
    checked = 0
    for v in range(1, len(dag.ops) + 1):
        if len(dag.shape(v)) != 3 or plan_cells(dag, v) is None:
            continue
        c, h, w = dag.shape(v)
        dense = _dense_rows(dag, v, bounds, inp).reshape(-1, 2, c, h * w)
        gen = torch.Generator().manual_seed(v)
        subsets = [torch.arange(h * w), torch.tensor([0]), torch.tensor([h * w - 1]),
                   torch.tensor([min(w + 1, h * w - 1)]),
                   torch.randperm(h * w, generator=gen)[: max(1, h * w // 3)].sort().values]
        for cells in subsets:
            got = _cells_rows(dag, v, cells, bounds, inp)
            torch.testing.assert_close(got, dense[..., cells], atol=2e-5, rtol=1e-5)
        checked += 1
    assert checked >= 3  # the test reaches the joins, the stride-2 blocks and the last map


@pytest.mark.parametrize("name", ["resnet-mnist", "dense-mnist", "odd"])
def test_cells_and_per_row_windows_give_the_same_bounds(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _, dag, inp, _ = _setup(name)
    c = torch.eye(dag.out_shape[0])[None].expand(inp.x.shape[0], -1, -1)
    calls = _count_cells(monkeypatch)
    with torch.no_grad():
        low_cells, b_cells = dag_mod.crown_margin(dag, inp, c, intersect_ibp=False)
        n_cells = len(calls)
        assert n_cells >= 2
        monkeypatch.setattr(dag_mod, "CELL_FILL", 2.0)  # never cells: the per-row windowed path
        low_rows, b_rows = dag_mod.crown_margin(dag, inp, c, intersect_ibp=False)
    assert len(calls) == n_cells
    torch.testing.assert_close(low_cells, low_rows, atol=2e-5, rtol=1e-5)
    for (l1, h1), (l2, h2) in zip(b_cells, b_rows):
        torch.testing.assert_close(l1, l2, atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(h1, h2, atol=2e-5, rtol=1e-5)


def _values(dag: Dag, x: torch.Tensor) -> list[torch.Tensor]:
    vals = [x]
    for op, ins in zip(dag.ops, dag.inputs):
        vals.append(op.forward_n([vals[v] for v in ins]) if isinstance(op, MergeOp) else op.forward(vals[ins[0]]))
    return vals


@pytest.mark.parametrize("name", ["resnet-mnist", "dense-mnist", "odd"])
def test_cell_bounds_hold_on_samples_and_below_pgd(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model, dag, inp, x = _setup(name)
    calls = _count_cells(monkeypatch)
    with torch.no_grad():
        bounds = layer_bounds(dag, inp)
        assert calls
        g = torch.Generator().manual_seed(2)
        pts = (x[None] + (torch.rand((100,) + x.shape, generator=g) * 2 - 1) * 0.02).clamp(0, 1)
        for k in range(100):
            for (lo, hi), z in zip(bounds, _values(dag, pts[k])):
                assert bool((z >= lo - 1e-5).all()) and bool((z <= hi + 1e-5).all())
        y = model(x).argmax(1)
    threat = ThreatModel("linf", 0.02)
    low = margin_lower_bound(model, x, y, threat, "crown", keep_true_row=False).amin(1).detach()
    adv = ATTACKS.create("pgd", steps=20)(model, x, y, threat, generator=torch.Generator().manual_seed(0)).x_adv
    with torch.no_grad():
        z = model(adv)
    pgd = z.gather(1, y[:, None]).squeeze(1) - z.scatter(1, y[:, None], float("-inf")).amax(1)
    assert bool((low <= pgd + 1e-5).all()), (low, pgd)


@pytest.mark.parametrize("cin,cout,stride,dilation,h", [(1, 16, 1, 1, 5), (2, 3, 2, 1, 4), (3, 4, 1, 2, 3),
                                                        (1, 8, 2, 2, 1)])
def test_gemm_transposed_convolution_matches_torch(cin: int, cout: int, stride: int, dilation: int, h: int) -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(cout, cin, 3, 3, generator=g)
    a = torch.randn(5, h, h + 1, cout, generator=g)  # (N, h, w, C_out) channels last
    ref = F.conv_transpose2d(a.permute(0, 3, 1, 2), w, stride=stride, dilation=dilation).permute(0, 2, 3, 1)
    got = _conv_t_small(a, w, (stride, stride), (dilation, dilation), tuple(ref.shape[1:3]))
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bp,b,p", [(1, 3, 2), (3, 3, 2), (1, 3, 70), (3, 3, 30), (1, 1, 4)])
def test_block_dot_products_match_einsum(bp: int, b: int, p: int) -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(bp, p, 6, 2, 3, 4, generator=g)
    m = torch.randn(b, p, 1, 2, 3, 4, generator=g)
    ref = (a * m).sum(dim=(-3, -2, -1)).expand(b, p, 6)
    torch.testing.assert_close(_dot(a, m), ref, atol=1e-5, rtol=1e-5)


def test_channel_groups_under_a_small_memory_budget_give_the_same_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    _, dag, inp, _ = _setup("resnet-mnist")
    calls = _count_cells(monkeypatch)
    with torch.no_grad():
        full = layer_bounds(dag, inp)
        assert calls and not any(calls)
        small = layer_bounds(dag, inp, memory_budget=1 << 14)  # a cell's channels split into groups
        assert any(calls)
    for (l1, h1), (l2, h2) in zip(full, small):
        torch.testing.assert_close(l1, l2, atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(h1, h2, atol=2e-5, rtol=1e-5)
