"""Analytic references and properties: linear models, completeness, FullGrad's exact decomposition,
the memory budget, typed errors for bad input, the model never changed."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from fortify.errors import ConfigError, InputError, UnsupportedLayerError
from fortify.explain import ATTRIBUTION_METRICS, ATTRIBUTIONS
from fortify.models import Normalized
from fortify.models.state import fingerprint
from tests.explain.helpers import bn_resnet, images, relu_cnn, tab_mlp, table

TARGET = torch.tensor([0, 1, 2, 3])


def linear_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 4)).double().eval()


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_left", "riemann_middle", "riemann_trapezoid"])
def test_integrated_gradients_on_a_linear_model_is_exact(method: str) -> None:
    m, x = linear_model(), images()
    w = m[1].weight.detach()[TARGET].reshape(4, 1, 8, 8)
    ig = ATTRIBUTIONS.create("integrated-gradients", steps=3, method=method, baseline=0.2)
    attr = ig(m, x, TARGET)
    assert torch.allclose(attr, (x - 0.2) * w, atol=1e-12, rtol=0)
    assert ig.last_delta is not None and float(ig.last_delta.abs().max()) < 1e-12


def test_gradient_x_input_and_deeplift_on_a_linear_model() -> None:
    m, x = linear_model(), images()
    w = m[1].weight.detach()[TARGET].reshape(4, 1, 8, 8)
    assert torch.allclose(ATTRIBUTIONS.create("gradient-x-input")(m, x, TARGET), x * w, atol=1e-12)
    assert torch.allclose(ATTRIBUTIONS.create("deeplift", baseline=0.3)(m, x, TARGET), (x - 0.3) * w, atol=1e-12)


@pytest.mark.parametrize("make", [relu_cnn, bn_resnet, tab_mlp])
def test_integrated_gradients_completeness_with_the_reported_delta(make) -> None:
    m = make()
    x = table() if make is tab_mlp else images()
    ig = ATTRIBUTIONS.create("integrated-gradients", steps=64)
    attr = ig(m, x)
    err = ATTRIBUTION_METRICS.create("completeness")(m, x, attr)
    assert ig.last_delta is not None
    assert torch.allclose(err.values, ig.last_delta.abs(), atol=1e-12)  # the metric and the delta agree
    scale = float(attr.abs().sum(dim=tuple(range(1, x.dim()))).max())
    assert float(err.values.max()) < 5e-2 * scale  # ReLU kinks: the quadrature converges, not exactly
    coarse = ATTRIBUTIONS.create("integrated-gradients", steps=4, method="riemann_middle")
    coarse(m, x)
    assert coarse.last_delta is not None and float(err.values.mean()) < float(coarse.last_delta.abs().mean())


@pytest.mark.parametrize("make", [relu_cnn, bn_resnet, tab_mlp])
def test_deeplift_sums_to_delta(make) -> None:
    m = make()
    x = table() if make is tab_mlp else images()
    attr = ATTRIBUTIONS.create("deeplift")(m, x)
    assert float(ATTRIBUTION_METRICS.create("completeness")(m, x, attr).values.max()) < 1e-10


@pytest.mark.parametrize("make", [relu_cnn, bn_resnet, tab_mlp])
def test_fullgrad_completeness_is_exact(make) -> None:
    """Srinivas & Fleuret 2019: input-gradient x input plus every bias-gradient sums to the output."""
    m = make()
    x = table() if make is tab_mlp else images()
    d = ATTRIBUTIONS.create("fullgrad", batch_size=3).decompose(m, x, None)
    with torch.no_grad():
        out = m(x).max(dim=1).values
    assert torch.allclose(d.output, out.detach(), atol=1e-12)
    assert float((d.total() - out).abs().max()) < 1e-5
    assert sum(float(b.abs().sum()) for b in d.bias_terms) > 0  # the biases do contribute


def test_fullgrad_completeness_through_normalized_float32() -> None:
    torch.manual_seed(0)
    m = Normalized(relu_cnn(dtype=torch.float32), [0.3], [0.7]).eval()
    x = images(dtype=torch.float32)
    d = ATTRIBUTIONS.create("fullgrad").decompose(m, x, TARGET)
    assert float((d.total() - d.output).abs().max()) < 1e-5


def test_fullgrad_map_is_nonnegative_and_channel_constant() -> None:
    m, x = bn_resnet(), images()
    a = ATTRIBUTIONS.create("fullgrad")(m, x)
    assert a.shape == x.shape and float(a.min()) >= 0


def test_memory_budget_chunks_without_changing_results() -> None:
    m, x = relu_cnn(), images()
    big = ATTRIBUTIONS.create("integrated-gradients", steps=20, batch_size=1000)(m, x)
    small = ATTRIBUTIONS.create("integrated-gradients", steps=20, batch_size=3)(m, x)
    assert torch.allclose(big, small, atol=1e-12)


def test_gradcam_picks_the_last_executed_conv_and_names_layers() -> None:
    m, x = bn_resnet(), images()
    auto = ATTRIBUTIONS.create("gradcam")(m, x)
    named = ATTRIBUTIONS.create("gradcam", layer="stages.2.conv2")(m, x)
    assert torch.equal(auto, named)
    with pytest.raises(ConfigError, match="stages.2.conv2"):
        ATTRIBUTIONS.create("gradcam", layer="stages.2.conv3")(m, x)
    with pytest.raises(UnsupportedLayerError, match="no convolution"):
        ATTRIBUTIONS.create("gradcam")(tab_mlp(), table())


def test_deeplift_refuses_other_nonlinearities() -> None:
    m = nn.Sequential(nn.Linear(6, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    with pytest.raises(UnsupportedLayerError, match="Tanh"):
        ATTRIBUTIONS.create("deeplift")(m, table())


@pytest.mark.parametrize("name", ["saliency", "integrated-gradients"])
def test_bad_inputs_are_typed(name: str) -> None:
    m, x = relu_cnn(), images()
    method = ATTRIBUTIONS.create(name)
    nan = x.clone()
    nan[0, 0, 0, 0] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        method(m, nan)
    with pytest.raises(InputError, match="shape"):
        method(m, x, torch.tensor([0, 1]))
    with pytest.raises(InputError, match="4 classes"):
        method(m, x, torch.tensor([0, 1, 2, 4]))
    with pytest.raises(InputError, match="out of range"):
        method(m, x, 9)
    with pytest.raises(InputError, match="integer"):
        method(m, x, torch.zeros(4))
    with pytest.raises(InputError, match="dtype"):
        method(m, x.float())
    with pytest.raises(InputError, match="shape"):
        method(m, torch.rand(4, 2, 8, 8, dtype=torch.float64))


def test_bad_configuration_is_typed() -> None:
    with pytest.raises(ConfigError):
        ATTRIBUTIONS.create("integrated-gradients", method="simpson")
    with pytest.raises(ConfigError):
        ATTRIBUTIONS.create("smoothgrad", samples=0)
    with pytest.raises(ConfigError):
        ATTRIBUTIONS.create("saliency", batch_size=0)
    with pytest.raises(ConfigError):
        ATTRIBUTIONS.create("occlusion", window=(0, 2))


def test_metric_directions_and_simple_values() -> None:
    m, x = relu_cnn(), images()
    one_hot = torch.zeros_like(x)
    one_hot[:, 0, 0, 0] = 1.0
    uniform = torch.ones_like(x)
    sparse = ATTRIBUTION_METRICS.create("sparseness")
    cx = ATTRIBUTION_METRICS.create("complexity")
    assert torch.allclose(sparse(m, x, one_hot).values, torch.full((4,), 1 - 1 / 64, dtype=x.dtype))
    assert torch.allclose(sparse(m, x, uniform).values, torch.zeros(4, dtype=x.dtype), atol=1e-12)
    assert torch.allclose(cx(m, x, one_hot).values, torch.zeros(4, dtype=x.dtype))
    assert torch.allclose(cx(m, x, uniform).values, torch.full((4,), torch.log(torch.tensor(64.0)).item(), dtype=x.dtype))
    assert sparse.higher_is_better and not cx.higher_is_better
    with pytest.raises(InputError, match="shaped like x"):
        sparse(m, x, one_hot[:, :, :4])


def test_deletion_prefers_a_faithful_attribution_to_its_reverse() -> None:
    """On a linear model, gradient x input (exact contributions) deletes the evidence faster than its
    negation; insertion the other way round."""
    m, x = linear_model(), images()
    attr = ATTRIBUTIONS.create("gradient-x-input")(m, x, TARGET)
    dele, ins = ATTRIBUTION_METRICS.create("deletion", steps=16), ATTRIBUTION_METRICS.create("insertion", steps=16)
    d_good, d_bad = dele(m, x, attr, TARGET), dele(m, x, -attr, TARGET)
    i_good, i_bad = ins(m, x, attr, TARGET), ins(m, x, -attr, TARGET)
    assert bool((d_good.values < d_bad.values).all()) and bool((i_good.values > i_bad.values).all())
    assert d_good.extra["curve"].shape == (4, 17)
    p0 = torch.softmax(m(x), 1).gather(1, TARGET[:, None]).squeeze(1)
    assert torch.allclose(d_good.extra["curve"][:, 0], p0.detach())


def test_randomisation_of_saliency_decorrelates_and_keeps_the_model() -> None:
    m, x = relu_cnn(), images()
    before = fingerprint(m)
    attr = ATTRIBUTIONS.create("saliency")(m, x, TARGET)
    res = ATTRIBUTION_METRICS.create("randomisation", attribution="saliency")(m, x, attr, TARGET)
    assert res.extra["per_layer"].shape == (4, 4) and res.extra["layers"][0] == "7"  # output layer first
    assert float(res.extra["per_layer"][:, -1].abs().mean()) < 0.6  # fully randomised: little rank agreement
    assert fingerprint(m) == before
