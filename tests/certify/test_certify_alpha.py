"""Final-pass slope optimisation (alpha-CROWN on the margin rows): sound, never looser than
CROWN-Ada, exact on a case CROWN-Ada gets wrong, and it leaves the model alone."""
from __future__ import annotations

import pytest
import torch
from _certify_nets import convnet, mlp, strong_attack_margin
from torch import nn

from fortify.certify import CERTIFIERS, margin_lower_bound
from fortify.errors import ConfigError
from fortify.threat import ThreatModel

THREATS = [ThreatModel("linf", 0.05), ThreatModel("l2", 0.3), ThreatModel("l1", 0.6)]


def _ramp_net() -> nn.Sequential:
    """``margin = relu(3x - 1)`` for class 0 against a constant-0 class 1 (x a single pixel)."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(1, 1), nn.ReLU(), nn.Linear(1, 2))
    with torch.no_grad():
        net[1].weight.fill_(3.0)
        net[1].bias.fill_(-1.0)
        net[3].weight.copy_(torch.tensor([[1.0], [0.0]]))
        net[3].bias.zero_()
    return net.eval()


def test_optimised_slope_is_exact_where_crown_ada_is_not() -> None:
    # x in [0, 1] -> h = 3x - 1 in [-1, 2]: CROWN-Ada takes the lower slope 1 (u > -l), bound
    # min h = -1; the true minimum of relu(h) is 0, reached by slope 0
    net = _ramp_net()
    x, y, threat = torch.full((1, 1, 1, 1), 0.5), torch.zeros(1, dtype=torch.long), ThreatModel("linf", 0.5)
    ada = CERTIFIERS.get("crown")(alpha_steps=0, intersect_ibp=False)(net, x, y, threat).lower_margin
    opt = CERTIFIERS.get("crown")(intersect_ibp=False)(net, x, y, threat).lower_margin
    full = CERTIFIERS.get("alpha-crown")(intersect_ibp=False)(net, x, y, threat).lower_margin
    torch.testing.assert_close(ada, torch.tensor([-1.0]))
    torch.testing.assert_close(opt, torch.tensor([0.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(full, torch.tensor([0.0]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("threat", THREATS, ids=str)
@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_optimised_bounds_are_sound_and_never_looser(threat: ThreatModel, kind: str) -> None:
    net, shape = (mlp(seed=21, h=24), (1, 3, 4)) if kind == "mlp" else (convnet(seed=22), (1, 8, 8))
    x = torch.rand((12,) + shape)
    y = net(x).argmax(1)
    attack = strong_attack_margin(net, x, y, threat, steps=40, restarts=2)
    get = CERTIFIERS.get
    ada = get("crown")(alpha_steps=0, intersect_ibp=False)(net, x, y, threat).lower_margin
    default = get("crown")(intersect_ibp=False)(net, x, y, threat).lower_margin
    full = get("alpha-crown")(intersect_ibp=False)(net, x, y, threat).lower_margin
    for name, lb in (("crown", default), ("alpha-crown", full)):
        assert bool((lb <= attack + 1e-4).all()), (name, lb, attack)
        assert bool((lb >= ada - 1e-6).all()), (name, lb - ada)
    assert float(full.mean()) >= float(default.mean()) - 1e-6
    assert float(full.mean()) > float(ada.mean())  # the optimisation does something on these nets


def test_only_the_lowest_rows_are_optimised() -> None:
    net, threat = convnet(seed=23), ThreatModel("linf", 0.08)
    x = torch.rand(6, 1, 8, 8)
    y = net(x).argmax(1)
    kw = dict(keep_true_row=False, intersect_ibp=False)
    ada = margin_lower_bound(net, x, y, threat, "crown", **kw)
    one = margin_lower_bound(net, x, y, threat, "crown", alpha_steps=5, alpha_rows=1, **kw)
    low = ada.argmin(dim=1, keepdim=True)
    others = torch.ones_like(ada, dtype=torch.bool).scatter(1, low, False)
    assert torch.equal(one[others], ada[others])  # untouched rows keep CROWN-Ada's bound
    assert bool((one.gather(1, low) >= ada.gather(1, low) - 1e-6).all())


def test_slope_optimisation_leaves_the_model_alone() -> None:
    net = convnet(seed=24).train()
    net[0][0].weight.requires_grad_(False)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    flags = [p.requires_grad for p in net.parameters()]
    x = torch.rand(4, 1, 8, 8)
    CERTIFIERS.get("alpha-crown")()(net, x, torch.zeros(4, dtype=torch.long), ThreatModel("linf", 0.1))
    assert all(p.grad is None for p in net.parameters())  # no gradient reached the weights
    assert flags == [p.requires_grad for p in net.parameters()]
    assert all(m.training for m in net.modules())
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("kw", [{"alpha_steps": -1}, {"alpha_steps": 2.5}, {"alpha_rows": "2"}, {"alpha_steps": True}])
def test_bad_slope_options_are_config_errors(kw: dict) -> None:
    with pytest.raises(ConfigError, match="alpha_"):
        CERTIFIERS.get("crown")(**kw)


def test_ibp_has_no_slopes_to_optimise() -> None:
    with pytest.raises(ConfigError, match="alpha_steps needs a CROWN method"):
        CERTIFIERS.get("ibp")(alpha_steps=3)
