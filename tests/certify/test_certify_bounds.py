"""Soundness and tightness of IBP / CROWN against analytic answers, a strong attack and MILP."""
from __future__ import annotations

import pytest
import torch
from _certify_nets import convnet, margin, mlp, strong_attack_margin
from torch import nn

from fortify.certify import CERTIFIERS, margin_lower_bound
from fortify.certify.bounds import InputSet
from fortify.certify.crown import layer_bounds
from fortify.certify.graph import build_ops
from fortify.errors import ThreatModelError, UnsupportedLayerError
from fortify.models import Normalized
from fortify.threat import ThreatModel

THREATS = [ThreatModel("linf", 0.04), ThreatModel("l2", 0.25), ThreatModel("l1", 0.6)]


def _linear_reference(w: torch.Tensor, b: torch.Tensor, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel):
    """Exact min over the ball of z_y - z_j for an affine model when the box is inactive."""
    q = {"linf": 1.0, "l2": 2.0, "l1": float("inf")}[threat.norm]
    diff = w[y].unsqueeze(1) - w.unsqueeze(0)  # (N, K, d)
    val = (diff * x.reshape(len(x), 1, -1)).sum(-1) + (b[y].unsqueeze(1) - b.unsqueeze(0))
    val = val - threat.eps * diff.norm(p=q, dim=-1)
    return val.scatter(1, y[:, None], float("inf")).amin(dim=1)


@pytest.mark.parametrize("threat", THREATS, ids=str)
def test_affine_model_bounds_are_exact(threat: ThreatModel) -> None:
    torch.manual_seed(1)
    lin = nn.Linear(12, 4)
    net = nn.Sequential(nn.Flatten(), lin).eval()
    x = 0.3 + 0.4 * torch.rand(8, 1, 3, 4)  # eps-balls stay inside [0, 1] on every coordinate used
    y = torch.randint(0, 4, (8,))
    ref = _linear_reference(lin.weight.detach(), lin.bias.detach(), x, y, threat)
    for method in ("ibp", "crown", "crown-ibp"):
        cert = CERTIFIERS.get(method)()(net, x, y, threat)
        torch.testing.assert_close(cert.lower_margin, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("threat", THREATS, ids=str)
@pytest.mark.parametrize("kind", ["mlp", "conv", "normalized"])
def test_bounds_never_exceed_attack_margin_and_crown_beats_ibp(threat: ThreatModel, kind: str) -> None:
    if kind == "mlp":
        net, shape = mlp(seed=3), (1, 3, 4)
    elif kind == "conv":
        net, shape = convnet(seed=4), (1, 8, 8)
    else:
        net, shape = Normalized(convnet(seed=5), [0.3], [0.4]).eval(), (1, 8, 8)
    x = torch.rand((10,) + shape)
    y = net(x).argmax(dim=1)
    attack = strong_attack_margin(net, x, y, threat, steps=40, restarts=2)
    low = {m: CERTIFIERS.get(m)()(net, x, y, threat).lower_margin for m in ("ibp", "crown", "crown-ibp")}
    pure = CERTIFIERS.get("crown")(intersect_ibp=False)(net, x, y, threat).lower_margin
    for m, lb in {**low, "crown-pure": pure}.items():
        assert bool((lb <= attack + 1e-4).all()), (m, lb, attack)
    assert bool((low["crown"] >= low["ibp"] - 1e-6).all())
    # tighter intermediate bounds change the adaptive slopes, so this holds on average, not per point
    assert float(low["crown"].mean()) >= float(low["crown-ibp"].mean()) - 1e-6
    assert float(pure.mean()) > float(low["ibp"].mean())  # CROWN itself (not only the intersection) is tighter


def test_intermediate_bounds_contain_sampled_activations() -> None:
    net = convnet(seed=6)
    x = torch.rand(3, 1, 8, 8)
    threat = ThreatModel("linf", 0.05)
    ops = build_ops(net, (1, 8, 8), x)
    bounds = layer_bounds(ops, InputSet.from_threat(x, threat), intermediate="crown")
    xs = threat.random_init(x.repeat(200, 1, 1, 1)).reshape(200, 3, 1, 8, 8)
    z = xs.reshape(600, 1, 8, 8)
    with torch.no_grad():
        for t, op in enumerate(ops):
            lo, hi = bounds[t]
            zz = z.reshape(200, 3, *z.shape[1:])
            assert bool((zz >= lo - 1e-5).all() & (zz <= hi + 1e-5).all()), op
            z = op.forward(z)


@pytest.mark.parametrize("threat", THREATS[:2], ids=str)
def test_chunking_and_batching_give_identical_bounds(threat: ThreatModel) -> None:
    """Row chunks (memory budget) and batch composition must not change any sample's bound."""
    for net, shape in ((convnet(seed=7), (1, 8, 8)), (mlp(seed=2, h=20), (1, 3, 4))):
        x = torch.rand((5,) + shape)
        y = net(x).argmax(1)
        crown = CERTIFIERS.get("crown")(intersect_ibp=False)
        big = crown(net, x, y, threat).lower_margin
        small = CERTIFIERS.get("crown")(memory_budget=1 << 20, intersect_ibp=False)(net, x, y, threat).lower_margin
        single = torch.cat([crown(net, x[i:i + 1], y[i:i + 1], threat).lower_margin for i in range(len(x))])
        torch.testing.assert_close(big, small, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(big, single, atol=1e-6, rtol=1e-5)


def test_model_not_mutated_and_flags_restored() -> None:
    net = convnet(seed=8).train()
    net[2].weight.requires_grad_(False)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    flags = [m.training for m in net.modules()]
    grads = [p.requires_grad for p in net.parameters()]
    x = torch.rand(3, 1, 8, 8)
    for m in ("ibp", "crown"):
        CERTIFIERS.get(m)()(net, x, torch.zeros(3, dtype=torch.long), ThreatModel("linf", 0.1))
    assert flags == [m.training for m in net.modules()]
    assert grads == [p.requires_grad for p in net.parameters()]
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_unsupported_layer_names_the_layer_and_bad_eps() -> None:
    net = nn.Sequential(nn.Flatten(), nn.Sequential(nn.Linear(4, 4), nn.GELU()), nn.Linear(4, 2))
    x = torch.rand(2, 1, 2, 2)
    with pytest.raises(UnsupportedLayerError, match=r"'1\.1'.*GELU"):
        CERTIFIERS.get("crown")()(net, x, torch.zeros(2, dtype=torch.long), ThreatModel("linf", 0.1))
    with pytest.raises(ThreatModelError, match="eps"):
        ThreatModel("linf", -0.1)
    ok = mlp(seed=0, d=4)
    with pytest.raises(ThreatModelError, match="eps"):
        margin_lower_bound(ok, x, torch.zeros(2, dtype=torch.long), ThreatModel("linf", 0.1), eps=-1.0)
    with pytest.raises(ThreatModelError):
        CERTIFIERS.get("ibp")()(ok, x, torch.zeros(2, dtype=torch.long), "linf:0.1")  # type: ignore[arg-type]


def test_certified_points_are_never_broken_by_registered_attacks() -> None:
    import inspect

    from fortify.attacks import ATTACKS

    net = Normalized(mlp(seed=10), [0.5], [0.25]).eval()  # centred inputs: two classes predicted
    x = torch.rand(40, 1, 3, 4)
    y = net(x).argmax(1)
    small = {"steps": 20, "restarts": 1, "queries": 200, "binary_search_steps": 3, "init_evals": 20,
             "max_evals": 100, "k": 20, "samples": 10, "init_directions": 10, "init_tries": 10, "n_target_classes": 2}
    for threat in (ThreatModel("linf", 0.03), ThreatModel("l2", 0.15)):
        cert = CERTIFIERS.get("crown")()(net, x, y, threat)
        assert 0 < int(cert.certified.sum()) < len(x)  # the test exercises both outcomes
        broken = torch.zeros(len(x), dtype=torch.bool)
        for name, cls in ATTACKS.items():
            if threat.norm not in cls.norms:
                continue
            params = inspect.signature(cls.__init__).parameters
            attack = cls(**{k: v for k, v in small.items() if k in params})
            res = attack(net, x, y, threat, generator=torch.Generator().manual_seed(0))
            assert not bool((res.success & cert.certified).any()), name
            got = margin(net(res.x_adv), y)
            assert bool((got[cert.certified] >= cert.lower_margin[cert.certified] - 1e-5).all()), name
            broken |= res.success
        assert bool(broken.any())  # the attacks are strong enough to break some uncertified points


@pytest.mark.parametrize("threat", THREATS, ids=str)
def test_windowed_conv_rows_equal_dense_rows(threat: ThreatModel, monkeypatch: pytest.MonkeyPatch) -> None:
    """The patches path (conv rows as receptive-field windows, rows chosen per sample) gives the
    dense path's margin bounds (rows = union over the batch), also with 2-row chunks."""
    import fortify.certify.crown as crown
    from fortify.certify.bounds import margin_spec
    from fortify.models import create

    for net, shape in ((Normalized(convnet(seed=11), [0.4], [0.3]).eval(), (1, 8, 8)),
                       (create("madry-cnn", in_shape=(1, 12, 12), channels=(4, 6), hidden=16).eval(), (1, 12, 12))):
        x = torch.rand((3,) + shape)
        y = net(x).argmax(1)
        c = margin_spec(y, net(x).shape[1])
        ops = build_ops(net, shape, x)
        inp = InputSet.from_threat(x, threat)
        windowed = crown.crown_margin(ops, inp, c, intersect_ibp=False)[0]
        few_rows = crown.crown_margin(ops, inp, c, intersect_ibp=False, memory_budget=1 << 14)[0]
        dense_refine = crown._refine
        with monkeypatch.context() as mp:
            mp.setattr(crown, "_refine",
                       lambda *a, **k: dense_refine(*a, **k, paths=crown.RefinePaths(use_windows=False)))
            dense = crown.crown_margin(ops, inp, c, intersect_ibp=False)[0]
        torch.testing.assert_close(windowed, dense, atol=2e-6, rtol=1e-5)
        torch.testing.assert_close(few_rows, dense, atol=2e-6, rtol=1e-5)
