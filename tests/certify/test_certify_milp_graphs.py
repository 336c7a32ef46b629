"""MILP verification of graph models (residual add / sub, channel cat; Tjeng et al. 2019 on a DAG).

References:

* exactness on 2-D inputs: the exact minimum margin by exhaustive enumeration of the linear pieces
  (the input polygon -- the linf box, or the l1 diamond clipped to [0, 1]^2 -- is split along the
  zero line of every ReLU neuron in call order; on each final piece the net is affine, so the minimum
  of ``min_j z_y - z_j`` is at a vertex; vertices are evaluated in float64), and a 161 x 161 grid;
* exact is tightest: the MILP minimum >= CROWN and IBP lower margins, and <= the margin PGD reaches
  (50 steps, 5 restarts); the same optimum with IBP or CROWN big-M constants (CROWN: fewer binaries);
* on a Normalized conv / BatchNorm / cat / view graph: the MILP minimiser attains the optimum in the
  model's own forward pass, and sampled points never go below it;
* end to end through ``certify(..., method="milp")`` and the certify CLI; typed one-line refusals
  (MaxPool / Sigmoid in a graph, too many unstable ReLUs before any solve).
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _certify_nets import margin
from torch import nn

from fortify import models
from fortify.attacks import ATTACKS
from fortify.certify import CERTIFIERS, certify, margin_lower_bound
from fortify.certify.dag import Dag
from fortify.errors import ResourceError, UnsupportedLayerError
from fortify.threat import ThreatModel


class ResMLP(nn.Module):
    """``d -> h``, two residual blocks (``h + f(h)``, ``h - 0.5 f(h)``), ReLU, ``-> k``."""

    def __init__(self, d: int = 2, h: int = 6, k: int = 3) -> None:
        super().__init__()
        self.inp, self.out = nn.Linear(d, h), nn.Linear(h, k)
        self.b1a, self.b1b, self.b2a, self.b2b = (nn.Linear(h, h) for _ in range(4))
        self.r0, self.r1, self.r2, self.r3, self.r4 = (nn.ReLU() for _ in range(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.r0(self.inp(x))
        h = h + self.b1b(self.r1(self.b1a(h)))
        h = self.r2(h)
        h = h - 0.5 * self.b2b(self.r3(self.b2a(h)))
        return self.out(self.r4(h))


class TwoBranch(nn.Module):
    """Two ReLU branches of the input joined by ``cat``: ``[relu(relu(A x)), 2 relu(B x)] -> k``."""

    def __init__(self, d: int = 2, h: int = 5, k: int = 3) -> None:
        super().__init__()
        self.a1, self.a2, self.b1, self.head = nn.Linear(d, h), nn.Linear(h, h), nn.Linear(d, 4), nn.Linear(h + 4, k)
        self.ra1, self.ra2, self.rb = nn.ReLU(), nn.ReLU(), nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.ra2(self.a2(self.ra1(self.a1(x))))
        b = self.rb(self.b1(x)) * 2.0
        return self.head(torch.cat([a, b], dim=1))


class ConvRes(nn.Module):
    """Conv -> BN -> ReLU, a residual conv block, channel cat with a 1x1 conv branch, view, Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn = nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2)
        self.c1, self.side, self.fc = nn.Conv2d(2, 2, 3, padding=1), nn.Conv2d(1, 1, 1), nn.Linear(27, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn(self.stem(x)))
        h = h + self.c1(F.relu(h))
        h = torch.cat([F.relu(h), F.relu(self.side(x))], dim=1)
        return self.fc(h.view(h.shape[0], -1) / 3.0)


def _seeded(cls: type[nn.Module], seed: int, scale: float = 1.5) -> nn.Module:
    torch.manual_seed(seed)
    net = cls()
    with torch.no_grad():
        for mod in net.modules():
            if isinstance(mod, (nn.Linear, nn.Conv2d)):
                mod.weight.mul_(scale)
            if isinstance(mod, nn.BatchNorm2d):
                assert mod.running_mean is not None and mod.running_var is not None
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 1.5)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.1, 0.1)
    return net.eval()


def _relu_inputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Inputs ``(P, n)`` of every ``nn.ReLU`` call, in call order (topological order)."""
    seen: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append(i[0].reshape(i[0].shape[0], -1)))
             for m in model.modules() if isinstance(m, nn.ReLU)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


def _clip(poly: np.ndarray, vals: np.ndarray) -> list[np.ndarray]:
    """Split the convex polygon ``poly (V, 2)`` along the zero line of an affine function with values
    ``vals (V,)`` at its vertices: the pieces with ``f >= 0`` and ``f <= 0`` (non-degenerate ones)."""
    out = []
    for sign in (1.0, -1.0):
        pts = []
        for k in range(len(poly)):
            p, q, fp, fq = poly[k], poly[(k + 1) % len(poly)], sign * vals[k], sign * vals[(k + 1) % len(poly)]
            if fp >= 0:
                pts.append(p)
            if (fp > 0 > fq) or (fp < 0 < fq):
                pts.append(p + fp / (fp - fq) * (q - p))
        if len(pts) >= 3:
            out.append(np.array(pts))
    return out


def exact_minimum(model: nn.Module, x0: torch.Tensor, y: int, threat: ThreatModel) -> float:
    """The exact minimum margin of a 2-D-input ReLU net over the threat set, by enumerating its linear
    pieces (see the module docstring): float64, no tolerance beyond rounding."""
    m64 = copy.deepcopy(model).double()
    c, e = x0.double().numpy(), threat.eps
    if threat.norm == "linf":
        lo, hi = np.clip(c - e, 0, 1), np.clip(c + e, 0, 1)
        polys = [np.array([[lo[0], lo[1]], [hi[0], lo[1]], [hi[0], hi[1]], [lo[0], hi[1]]])]
    else:
        polys = [np.array([[c[0] + e, c[1]], [c[0], c[1] + e], [c[0] - e, c[1]], [c[0], c[1] - e]])]
        for axis in (0, 1):
            for bound, sign in ((0.0, 1.0), (1.0, -1.0)):  # keep sign * (x_axis - bound) >= 0
                polys = [p for q in polys for p in _clip(q, sign * (q[:, axis] - bound))[:1]
                         if bool((sign * (p[:, axis] - bound) >= -1e-12).all())]
    n_calls = len(_relu_inputs(m64, torch.zeros(1, 2, dtype=torch.float64)))
    for call in range(n_calls):
        width = _relu_inputs(m64, torch.zeros(1, 2, dtype=torch.float64))[call].shape[1]
        for neuron in range(width):
            new = []
            for p in polys:
                z = _relu_inputs(m64, torch.from_numpy(p))[call][:, neuron].numpy()
                new += _clip(p, z) if (z.min() < 0 < z.max()) else [p]
            polys = new
    verts = torch.from_numpy(np.concatenate(polys))
    with torch.no_grad():
        return float(margin(m64(verts), torch.full((verts.shape[0],), y)).min())


def grid_minimum(model: nn.Module, x0: torch.Tensor, y: int, eps: float, n: int = 161) -> float:
    t = torch.linspace(-eps, eps, n, dtype=torch.float64)
    pts = (x0.double() + torch.stack(torch.meshgrid(t, t, indexing="ij"), -1).reshape(-1, 2)).clamp(0, 1)
    with torch.no_grad():
        return float(margin(copy.deepcopy(model).double()(pts), torch.full((pts.shape[0],), y)).min())


def pgd_margin(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel) -> torch.Tensor:
    attack = ATTACKS.create("pgd", steps=50, restarts=5)
    adv = attack(model, x, y, threat, generator=torch.Generator().manual_seed(0)).x_adv
    with torch.no_grad():
        return torch.minimum(margin(model(adv), y), margin(model(x), y))


X2 = torch.tensor([[0.3, 0.6], [0.5, 0.5], [0.7, 0.2], [0.45, 0.35], [0.05, 0.9]])
CASES = [(ResMLP, 0, "linf", 0.08), (ResMLP, 0, "l1", 0.3), (TwoBranch, 2, "linf", 0.1), (TwoBranch, 3, "l1", 0.2)]


@pytest.mark.parametrize("cls,seed,norm,eps", CASES, ids=[f"{c[0].__name__}-{c[2]}" for c in CASES])
def test_milp_is_exact_on_tiny_2d_graphs(cls: type[nn.Module], seed: int, norm: str, eps: float) -> None:
    torch.set_num_threads(1)
    model = _seeded(cls, seed)
    x = X2
    y = model(x).argmax(1)
    threat = ThreatModel(norm, eps)
    cert = CERTIFIERS.create("milp", exact=True, time_limit=20)(model, x, y, threat)
    assert cert.status is not None and all(s in ("verified", "counterexample") for s in cert.status)
    low = cert.lower_margin.double()
    for i in range(x.shape[0]):
        exact = exact_minimum(model, x[i], int(y[i]), threat)
        assert abs(float(low[i]) - exact) <= 1e-5, (i, float(low[i]), exact)
        if norm == "linf":  # the grid only ever finds margins at or above the minimum
            assert exact - 1e-9 <= grid_minimum(model, x[i], int(y[i]), eps) <= exact + 0.05
    # exact is the tightest sound bound, and PGD never goes below it
    crown = margin_lower_bound(model, x, y, threat, "crown", keep_true_row=False).amin(1).detach()
    ibp = margin_lower_bound(model, x, y, threat, "ibp", keep_true_row=False).amin(1).detach()
    assert bool((low >= crown.double() - 1e-5).all()) and bool((low >= ibp.double() - 1e-5).all())
    assert float((low - crown.double()).max()) > 1e-3  # the graphs are not trivially tight for CROWN
    assert bool((low <= pgd_margin(model, x, y, threat).double() + 1e-5).all())
    # both outcomes occur and counterexamples are real
    status = cert.status
    assert "verified" in status and "counterexample" in status
    for i, s in enumerate(status):
        if s == "counterexample":
            xi = cert.extra["counterexample"][i:i + 1]
            assert bool(threat.contains(xi, x[i:i + 1]).all()) and int(model(xi).argmax(1)) != int(y[i])


def test_big_m_from_ibp_gives_the_same_optimum_with_more_binaries() -> None:
    from fortify.certify import milp as milp_mod
    from fortify.certify.bounds import InputSet
    from fortify.certify.dag import layer_bounds
    from fortify.certify.graph import build_net

    model = _seeded(ResMLP, 0)
    y = model(X2).argmax(1)
    threat = ThreatModel("linf", 0.08)
    dag = build_net(model, (2,), X2)
    assert isinstance(dag, Dag)
    inp = InputSet.from_threat(X2, threat)
    relus = [t for t, op in enumerate(dag.ops) if type(op).__name__ == "ReLUOp"]
    counts = {}
    for how in ("crown", "ibp"):
        b = layer_bounds(dag, inp, intermediate=how)
        counts[how] = milp_mod.count_binaries([b[dag.inputs[t][0]] for t in relus], list(range(len(relus))), 5)
    assert bool((counts["crown"] <= counts["ibp"]).all()) and int(counts["crown"].sum()) < int(counts["ibp"].sum())
    a = CERTIFIERS.create("milp", exact=True)(model, X2, y, threat).lower_margin
    b2 = CERTIFIERS.create("milp", exact=True, intermediate="ibp")(model, X2, y, threat).lower_margin
    assert torch.allclose(a, b2, atol=1e-5)


def test_conv_bn_normalized_graph_minimiser_attains_the_optimum() -> None:
    from scipy.optimize import Bounds, milp

    from fortify.certify.bounds import InputSet, margin_spec
    from fortify.certify.dag import layer_bounds
    from fortify.certify.graph import build_net
    from fortify.certify.milp_dag import DagEncoding

    model = models.Normalized(_seeded(ConvRes, 4), [0.4], [0.3]).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 3, 3, generator=g) * 0.8 + 0.1
    y = model(x).argmax(1)
    threat = ThreatModel("linf", 0.04)
    dag = build_net(model, (1, 3, 3), x)
    assert isinstance(dag, Dag)
    enc = DagEncoding(dag, "linf")
    ref = copy.deepcopy(model).double()
    inp = InputSet.from_threat(x, threat)
    with torch.no_grad():
        bounds = layer_bounds(dag, inp)
    cert = CERTIFIERS.create("milp", exact=True, time_limit=20)(model, x, y, threat)
    sampled = margin(model(threat.random_init(x.repeat(400, 1, 1, 1), g)), y.repeat(400)).view(400, -1).amin(0)
    assert bool((cert.lower_margin <= sampled + 1e-5).all())
    assert bool((cert.lower_margin <= pgd_margin(model, x, y, threat) + 1e-5).all())
    crown = margin_lower_bound(model, x, y, threat, "crown", keep_true_row=False).amin(1)
    assert bool((cert.lower_margin >= crown - 1e-5).all())
    c = margin_spec(y, 3)
    for i in range(x.shape[0]):
        pre = [(bounds[dag.inputs[t][0]][0][i].reshape(-1).double().numpy(),
                bounds[dag.inputs[t][0]][1][i].reshape(-1).double().numpy()) for t in enc.relus]
        prob = enc.problem(pre, inp, i, threat, 1e-5)
        best = np.inf
        for row in c[i]:
            obj = row.double().numpy() @ prob.out_w
            res = milp(obj, constraints=prob.cons, integrality=prob.integ, bounds=Bounds(prob.vlo, prob.vhi))
            assert res.status == 0
            val = float(res.fun + row.double().numpy() @ prob.out_b)
            xs = torch.from_numpy(res.x[:prob.d]).reshape(1, 1, 3, 3)
            with torch.no_grad():
                attained = float((ref(xs)[0] * row.double()).sum())
            assert abs(attained - val) <= 1e-6  # the minimiser's own forward pass reaches the optimum
            best = min(best, val)
        assert abs(best - float(cert.lower_margin[i])) <= 1e-5


def tiny_residual_28(in_shape: tuple[int, ...] = (1, 28, 28), num_classes: int = 10) -> nn.Module:
    """Flatten -> 784 -> 8, one residual ReLU block, -> 10 (a tiny graph model for the CLI)."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inp, self.f1, self.f2, self.out = nn.Linear(784, 8), nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = F.relu(self.inp(x.flatten(1)))
            return self.out(F.relu(h + self.f2(F.relu(self.f1(h)))))

    torch.manual_seed(0)
    return Net().eval()


def test_certify_function_and_cli_run_milp_on_a_residual_model(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from fortify import data
    from fortify.cli import main
    from fortify.store import RunStore

    monkeypatch.setitem(models.MODELS._items, "test-milp-residual", tiny_residual_28)
    monkeypatch.setitem(models.MODELS._help, "test-milp-residual", "test only")
    net = models.create("test-milp-residual")
    path = models.save(net, tmp_path / "r.safetensors", {"dataset": "mnist-5k"})
    x, y = data.load("mnist-5k", "test", limit=3)
    threat = ThreatModel("linf", 0.002)
    cert = certify(models.load(path), x, y, threat, method="milp", time_limit=20)
    assert cert.status is not None and len(cert.status) == 3
    assert all(s in ("verified", "counterexample") for s in cert.status)
    assert bool((cert.lower_margin <= margin(net(x), y) + 1e-5).all())
    assert bool((cert.lower_margin >= margin_lower_bound(net, x, y, threat, "crown", keep_true_row=False).amin(1)
                 - 1e-5).all())
    out = tmp_path / "runs"
    assert main(["certify", str(path), "--out", str(out), "--method", "milp", "--threat", "linf:0.002", "--n", "3",
                 "--curve-points", "0", "-q"]) == 0
    shown = capsys.readouterr().out
    assert "certified_accuracy[milp,linf:0.002]=" in shown
    store = RunStore(out / "fortify.db")
    (rec,) = store.list_runs()
    final = store.final_metrics(rec.id)
    assert final["certify/certified_accuracy"] == pytest.approx(cert.certified_accuracy)


class PoolRes(nn.Module):
    def __init__(self, act: nn.Module) -> None:
        super().__init__()
        self.conv, self.act, self.fc = nn.Conv2d(1, 1, 3, padding=1), act, nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        h = self.act(h + x)
        return self.fc(h.flatten(1))


@pytest.mark.parametrize("act,name", [(nn.MaxPool2d(2), "MaxPool"), (nn.Sigmoid(), "Sigmoid")])
def test_unsupported_operator_in_a_graph_is_named(act: nn.Module, name: str) -> None:
    model = PoolRes(act).eval()
    if name == "Sigmoid":
        model.fc = nn.Linear(16, 3)
    x = torch.rand(2, 1, 4, 4)
    with pytest.raises(UnsupportedLayerError, match=rf"'act' \({name}\) is not supported by the MILP verifier") as e:
        CERTIFIERS.create("milp")(model, x, torch.zeros(2, dtype=torch.long), ThreatModel("linf", 0.01))
    assert "\n" not in str(e.value) and "crown" in str(e.value)


def test_too_many_unstable_relus_in_a_graph_is_refused_before_solving(monkeypatch: pytest.MonkeyPatch) -> None:
    from fortify.certify import milp as milp_mod

    model = _seeded(ResMLP, 0)
    y = model(X2).argmax(1)
    threat = ThreatModel("linf", 0.3)

    def no_solver(*a: object, **k: object) -> None:
        raise AssertionError("the MILP solver ran although the model is too large")

    monkeypatch.setattr(milp_mod, "milp", no_solver)
    monkeypatch.setattr(milp_mod, "DagEncoding", no_solver)  # refused before the encoding is built
    with pytest.raises(milp_mod.MILPTooLargeError) as e:
        CERTIFIERS.create("milp", max_binaries=3)(model, X2, y, threat)
    msg = str(e.value)
    assert isinstance(e.value, ResourceError) and "\n" not in msg and "max_binaries=3" in msg
    assert "unstable ReLUs" in msg
    # the expressions of a graph too wide for memory are refused too, in one line
    from fortify.certify.graph import build_net
    from fortify.certify.milp_dag import DagEncoding

    dag = build_net(model, (2,), X2)
    assert isinstance(dag, Dag)
    with pytest.raises(ResourceError, match="too large for exact verification.*crown") as e2:
        DagEncoding(dag, "linf", memory_budget=1000)
    assert "\n" not in str(e2.value)
