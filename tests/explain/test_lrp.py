"""LRP-epsilon against references: Captum's ``LRP`` with ``EpsilonRule`` on a ReLU MLP (equal to
float64 rounding), the textbook layer-by-layer relevance propagation on a conv net, gradient x input
at ``eps = 0``, and an unsupported nonlinearity refused with a typed error."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from fortify.errors import ConfigError, UnsupportedLayerError
from fortify.explain import ATTRIBUTIONS


def _seeded(m: nn.Module) -> nn.Module:
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() == 1:
                p.uniform_(-0.3, 0.3)
    return m.double().eval()


def conv_net() -> nn.Module:
    torch.manual_seed(0)
    return _seeded(nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, 2, 1), nn.ReLU(),
                                 nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 4)))


def reference_lrp(model: nn.Sequential, x: torch.Tensor, t: torch.Tensor, eps: float) -> torch.Tensor:
    """Bach et al.'s epsilon rule layer by layer (Montavon et al. 2019's four-step implementation)."""
    acts = [x]
    for layer in model:
        acts.append(layer(acts[-1]))
    rel = torch.zeros_like(acts[-1])
    rel[torch.arange(len(t)), t] = acts[-1][torch.arange(len(t)), t]
    for layer, a in zip(reversed(list(model)), reversed(acts[:-1])):
        if isinstance(layer, (nn.Linear, nn.Conv2d)):
            a = a.detach().requires_grad_(True)
            z = layer(a)
            s = rel / (z + eps * torch.where(z >= 0, 1.0, -1.0))
            (c,) = torch.autograd.grad(z, a, s)
            rel = (a * c).detach()
        elif isinstance(layer, nn.Flatten):
            rel = rel.reshape(a.shape)
    return rel


@pytest.mark.parametrize("eps", [1e-3, 0.1, 1.0])
def test_lrp_epsilon_equals_layerwise_reference_on_a_conv_net(eps: float) -> None:
    model, x = conv_net(), torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t = torch.tensor([0, 1, 2, 3, 0])
    got = ATTRIBUTIONS.create("lrp-epsilon", eps=eps)(model, x, t)
    ref = reference_lrp(model, x, t, eps)
    assert torch.allclose(got, ref, atol=1e-7 * float(ref.abs().max()), rtol=0)  # divisions by z + eps


def test_lrp_epsilon_equals_captum_and_gradient_x_input_at_zero() -> None:
    captum_attr = pytest.importorskip("captum.attr")
    from captum.attr._utils.lrp_rules import EpsilonRule

    torch.manual_seed(0)
    mlp = _seeded(nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4)))
    x, t = torch.rand(5, 64, generator=torch.Generator().manual_seed(2), dtype=torch.float64), torch.tensor([0, 1, 2, 3, 1])
    for eps in (1e-9, 0.1, 1.0):
        for layer in mlp:
            if isinstance(layer, nn.Linear):
                layer.rule = EpsilonRule(epsilon=eps)  # type: ignore[assignment]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = captum_attr.LRP(mlp).attribute(x, target=t)
        assert torch.allclose(ATTRIBUTIONS.create("lrp-epsilon", eps=eps)(mlp, x, t), ref, atol=1e-14)
    gxi = ATTRIBUTIONS.create("gradient-x-input")(conv_net(), x.reshape(5, 1, 8, 8), t)
    lrp0 = ATTRIBUTIONS.create("lrp-epsilon", eps=0.0)(conv_net(), x.reshape(5, 1, 8, 8), t)
    assert torch.allclose(lrp0, gxi, atol=1e-14)
    with pytest.raises(UnsupportedLayerError):
        ATTRIBUTIONS.create("lrp-epsilon")(nn.Sequential(nn.Linear(64, 4), nn.Tanh()).double(), x)
    with pytest.raises(ConfigError):
        ATTRIBUTIONS.create("lrp-epsilon", eps=-1.0)
