"""Bounds on general graphs (residual add, channel cat, 1-D convs, BatchNorm, LeakyReLU / Sigmoid / Tanh).

References:

* soundness: a lower margin never exceeds the margin at ``x``, at PGD points (20 steps) or at 200
  random points of the ball (all inside the threat set);
* exactness on tiny DAGs: the CROWN bound is <= the minimum margin found by brute force on a dense
  grid of a 2-D input box (the grid minimum is >= the true minimum, hence a sound bound must be below
  it; the MILP verifier's exact answers on graphs are tested in test_certify_milp_graphs.py) and
  the MILP bound on a residual net is at least CROWN's; CROWN is tighter than IBP on average;
* the relaxation lines of every activation hold on dense samples of their interval;
* an unsupported operator is one UnsupportedLayerError naming it and its node, and one CLI line.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from _certify_nets import randomise_bn

from fortify import models
from fortify.attacks import ATTACKS
from fortify.certify import CERTIFIERS, margin_lower_bound
from fortify.certify.dag import Dag
from fortify.certify.graph import build_net
from fortify.certify.ops import LeakyReLUOp, SigmoidOp, TanhOp
from fortify.errors import UnsupportedLayerError
from fortify.models.state import fingerprint
from fortify.threat import ThreatModel


class TinyDag(nn.Module):
    """2 -> 8 -> (relu/act branch + linear skip) add, cat with a second branch -> 3 logits."""

    def __init__(self, act: nn.Module) -> None:
        super().__init__()
        self.fc1, self.fc2, self.skip = nn.Linear(2, 8), nn.Linear(8, 8), nn.Linear(2, 8)
        self.side, self.head = nn.Linear(2, 4), nn.Linear(12, 3)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc2(self.act(self.fc1(x))) + self.skip(x)
        h = torch.cat([self.act(h), F.relu(self.side(x)) * 0.5], dim=1)
        return self.head(h / 2.0)


def _margin(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        z = model(x)
    return z.gather(1, y[:, None]).squeeze(1) - z.scatter(1, y[:, None], float("-inf")).amax(1)


def _zoo(name: str, shape: tuple[int, ...], **kw: object) -> nn.Module:
    torch.manual_seed(0)
    m = models.create(name, in_shape=shape, num_classes=4, **kw)
    return randomise_bn(m, seed=None)  # non-trivial running statistics


CASES = [
    ("resnet-mnist", (1, 8, 8), {"bn": False, "widths": (4, 8, 8)}, 0.01),
    ("resnet-mnist", (1, 8, 8), {"widths": (4, 8, 8)}, 0.01),
    ("dense-mnist", (1, 8, 8), {"stem": 4, "growth": 4, "layers": (2, 2)}, 0.01),
    ("signal-cnn", (2, 16), {"channels": (4, 8), "hidden": 16}, 0.02),
    ("tabular-mlp", (6,), {"hidden": (16, 16)}, 0.05),
]


@pytest.mark.parametrize("name,shape,kw,eps", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_zoo_graph_bounds_below_attack_and_sampled_margins(name: str, shape: tuple[int, ...], kw: dict,
                                                           eps: float) -> None:
    model = _zoo(name, shape, **kw)
    g = torch.Generator().manual_seed(1)
    x = torch.rand((6,) + shape, generator=g) * 0.8 + 0.1
    with torch.no_grad():
        y = model(x).argmax(1)
    threat = ThreatModel("linf", eps)
    before = fingerprint(model)
    lows = {m: margin_lower_bound(model, x, y, threat, m, keep_true_row=False).amin(1).detach()
            for m in ("ibp", "crown")}
    lows["alpha"] = CERTIFIERS.create("alpha-crown", alpha_steps=5)(model, x, y, threat).lower_margin
    assert fingerprint(model) == before
    adv = ATTACKS.create("pgd", steps=20)(model, x, y, threat, generator=torch.Generator().manual_seed(0)).x_adv
    pts = (x[None] + (torch.rand((200,) + x.shape, generator=g) * 2 - 1) * eps).clamp(0, 1)
    sampled = _margin(model, pts.flatten(0, 1), y.repeat(200)).view(200, -1).amin(0)
    ref = torch.minimum(torch.minimum(_margin(model, x, y), _margin(model, adv, y)), sampled)
    for method, low in lows.items():
        assert bool((low <= ref + 1e-4).all()), (method, low, ref)
    assert bool((lows["crown"] >= lows["ibp"] - 1e-5).all())  # intersected with IBP
    assert bool((lows["alpha"] >= lows["crown"] - 1e-4).all())  # never looser than CROWN-Ada
    assert float(lows["crown"].mean()) > float(lows["ibp"].mean())


def test_residual_and_concat_nets_are_dags_and_chains_are_lists() -> None:
    assert isinstance(build_net(_zoo("resnet-mnist", (1, 8, 8)), (1, 8, 8), torch.zeros(1)), Dag)
    assert isinstance(build_net(_zoo("dense-mnist", (1, 8, 8)), (1, 8, 8), torch.zeros(1)), Dag)
    assert isinstance(build_net(_zoo("signal-cnn", (1, 16)), (1, 16), torch.zeros(1)), list)


@pytest.mark.parametrize("act", [nn.ReLU(), nn.LeakyReLU(0.1), nn.Sigmoid(), nn.Tanh()], ids=lambda a: type(a).__name__)
def test_tiny_dag_crown_below_grid_minimum_and_tighter_than_ibp(act: nn.Module) -> None:
    torch.manual_seed(3)
    model = TinyDag(act).eval()
    x = torch.tensor([[0.3, 0.6], [0.5, 0.5], [0.7, 0.2], [0.45, 0.35]])
    y = model(x).argmax(1)
    eps = 0.05
    threat = ThreatModel("linf", eps)
    crown = margin_lower_bound(model, x, y, threat, "crown", keep_true_row=False).amin(1).detach()
    ibp = margin_lower_bound(model, x, y, threat, "ibp", keep_true_row=False).amin(1).detach()
    t = torch.linspace(-eps, eps, 121)
    grid = torch.stack(torch.meshgrid(t, t, indexing="ij"), -1).reshape(-1, 2)
    for i in range(x.shape[0]):
        pts = (x[i] + grid).clamp(0, 1)
        exact = _margin(model, pts, y[i].repeat(pts.shape[0])).min()
        assert float(crown[i]) <= float(exact) + 1e-5
    assert float(crown.mean()) > float(ibp.mean())
    assert bool((crown >= ibp - 1e-6).all())


@pytest.mark.parametrize("op", [LeakyReLUOp(0.2, "l"), SigmoidOp("s"), TanhOp("t")], ids=lambda o: o.name)
def test_activation_relaxations_hold_on_their_interval(op: object) -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2000, generator=g) * 4, torch.randn(2000, generator=g) * 4
    lo, hi = torch.minimum(a, b), torch.maximum(a, b)
    sl, bl, su, bu = op.relax(lo, hi)  # type: ignore[attr-defined]
    for frac in torch.linspace(0, 1, 41):
        z = lo + frac * (hi - lo)
        f = op.forward(z)  # type: ignore[attr-defined]
        assert bool((sl * z + bl <= f + 1e-5).all()) and bool((f <= su * z + bu + 1e-5).all())


def test_scalar_view_and_normalized_graph_matches_the_model() -> None:
    torch.manual_seed(0)
    net = models.Normalized(_zoo("resnet-mnist", (1, 8, 8), widths=(4, 4, 8)), [0.5], [0.25])
    x = torch.rand(3, 1, 8, 8)
    dag = build_net(net, (1, 8, 8), x)
    assert isinstance(dag, Dag)
    with torch.no_grad():
        assert torch.allclose(dag.forward(x), net(x), atol=1e-5)
    model = TinyDag(nn.ReLU()).eval()
    dag2 = build_net(model, (2,), torch.zeros(1))
    assert isinstance(dag2, Dag)
    with torch.no_grad():
        assert torch.allclose(dag2.forward(x[:, 0, 0, :2]), model(x[:, 0, 0, :2]), atol=1e-6)


class Sorts(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.sort(x, dim=1).values)


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.act, self.b = nn.Linear(4, 4), nn.GELU(), nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.act(self.a(x)) + x)


@pytest.mark.parametrize("model,fragment", [
    (Sorts(), "sort"), (Branchy(), "GELU"), (nn.Sequential(nn.Linear(4, 4), nn.GELU(), nn.Linear(4, 3)), "GELU")])
def test_unsupported_operator_is_one_typed_error_naming_it(model: nn.Module, fragment: str) -> None:
    x = torch.rand(2, 4)
    with pytest.raises(UnsupportedLayerError, match=fragment) as info:
        CERTIFIERS.create("crown")(model, x, torch.zeros(2, dtype=torch.long), ThreatModel("linf", 0.01))
    assert "\n" not in str(info.value)
    if isinstance(model, Branchy):
        assert "'act'" in str(info.value)  # the node


def test_cli_certify_unsupported_layer_is_one_line(tmp_path, capsys, monkeypatch) -> None:
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "cli"))
    from _cli_helpers import error_line

    def gelu_net(in_shape: tuple[int, ...] = (1, 28, 28), num_classes: int = 10) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.GELU(), nn.Linear(16, num_classes))

    monkeypatch.setitem(models.MODELS._items, "test-gelu-net", gelu_net)
    monkeypatch.setitem(models.MODELS._help, "test-gelu-net", "test only")
    path = models.save(models.create("test-gelu-net").eval(), tmp_path / "g.safetensors", {"dataset": "mnist-5k"})
    line = error_line(capsys, ["certify", str(path), "--method", "crown", "--threat", "linf:0.01", "--n", "4",
                               "--out", str(tmp_path / "run"), "-q"])
    assert "GELU" in line


def test_milp_on_a_graph_model_is_at_least_as_tight_as_crown() -> None:
    model = _zoo("resnet-mnist", (1, 8, 8), bn=False, widths=(2, 2, 2))
    x = torch.rand(1, 1, 8, 8)
    y = model(x).argmax(1)
    thr = ThreatModel("linf", 0.01)
    exact = CERTIFIERS.create("milp")(model, x, y, thr)
    crown = CERTIFIERS.create("crown")(model, x, y, thr)
    assert float(exact.lower_margin[0]) >= float(crown.lower_margin[0]) - 1e-5