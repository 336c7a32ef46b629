"""Attributions and metrics against Captum (test-only oracle) on shared inputs, targets and noise.

Tolerances: float64 models, so the methods that compute the same formula agree to 1e-9 (relative
to the attribution scale); the figures are printed with ``-s`` for the report.
"""
from __future__ import annotations

import pytest
import torch

from fortify.explain import ATTRIBUTIONS, ATTRIBUTION_METRICS
from fortify.explain.attributions.smoothgrad import smoothgrad_noise
from fortify.explain.metrics.infidelity import infidelity_noise
from fortify.explain.metrics.sensitivity import sensitivity_noise
from tests.explain.helpers import bn_resnet, images, relu_cnn, table, tab_mlp

captum_attr = pytest.importorskip("captum.attr")
captum_metrics = pytest.importorskip("captum.metrics")
TOL = 1e-9
TARGET = torch.tensor([0, 1, 2, 3])


def _close(ours: torch.Tensor, ref: torch.Tensor, what: str, tol: float = TOL) -> None:
    ref = ref.detach()
    diff = float((ours - ref).abs().max())
    print(f"captum {what}: max abs diff {diff:.3g}")
    assert ours.shape == ref.shape
    assert diff <= tol * max(1.0, float(ref.abs().max())), f"{what}: {diff}"


@pytest.mark.parametrize("make", [relu_cnn, bn_resnet])
def test_saliency_and_gradient_x_input(make) -> None:
    m, x = make(), images()
    _close(ATTRIBUTIONS.create("saliency")(m, x, TARGET),
           captum_attr.Saliency(m).attribute(x, target=TARGET), f"saliency ({make.__name__})")
    _close(ATTRIBUTIONS.create("gradient-x-input")(m, x, TARGET),
           captum_attr.InputXGradient(m).attribute(x, target=TARGET), f"gradient-x-input ({make.__name__})")


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_left", "riemann_right", "riemann_middle",
                                    "riemann_trapezoid"])
def test_integrated_gradients(method: str) -> None:
    m, x = relu_cnn(), images()
    base = torch.full_like(x, 0.25)
    ig = ATTRIBUTIONS.create("integrated-gradients", steps=16, method=method, baseline=0.25, batch_size=7)
    ours = ig(m, x, TARGET)
    ref, delta = captum_attr.IntegratedGradients(m).attribute(x, base, target=TARGET, n_steps=16, method=method,
                                                              return_convergence_delta=True)
    assert ig.last_delta is not None
    if method == "riemann_trapezoid":  # captum's trapezoid weights sum to 1 - 1/steps (see the module doc)
        _close(ours * 15 / 16, ref, f"integrated-gradients {method} (x 15/16)")
        gap = ours.reshape(4, -1).sum(1) - ig.last_delta
        _close(ours.reshape(4, -1).sum(1) * 15 / 16 - gap, delta, f"integrated-gradients {method} delta")
        return
    _close(ours, ref, f"integrated-gradients {method}")
    _close(ig.last_delta, delta, f"integrated-gradients {method} delta")


def test_integrated_gradients_on_tables() -> None:
    m, x = tab_mlp(), table()
    ours = ATTRIBUTIONS.create("integrated-gradients", steps=20)(m, x, TARGET % 3)
    ref = captum_attr.IntegratedGradients(m).attribute(x, target=TARGET % 3, n_steps=20)
    _close(ours, ref, "integrated-gradients (tabular)")


@pytest.mark.parametrize("kind,nt", [("smoothgrad", "smoothgrad"), ("smoothgrad-sq", "smoothgrad_sq"),
                                     ("vargrad", "vargrad")])
def test_smoothgrad_family_with_the_same_noise(kind: str, nt: str) -> None:
    """Captum's NoiseTunnel draws its own noise, so the reference is Captum's Saliency on our noisy
    inputs, aggregated by Captum's NoiseTunnel formulas (mean, mean of squares, variance)."""
    m, x = relu_cnn(), images()
    samples, noise, seed = 8, 0.1, 3
    ours = ATTRIBUTIONS.create(kind, samples=samples, noise=noise, seed=seed, batch_size=5)(m, x, TARGET)
    eps = smoothgrad_noise(x, samples, noise, seed)
    sal = captum_attr.Saliency(m)
    g = torch.stack([sal.attribute(x + eps[k], target=TARGET, abs=False) for k in range(samples)])
    ref = {"smoothgrad": g.mean(0), "smoothgrad_sq": (g * g).mean(0),
           "vargrad": (g * g).mean(0) - g.mean(0) ** 2}[nt]
    _close(ours, ref, kind)


def test_smoothgrad_statistically_close_to_captum_noise_tunnel() -> None:
    """Different noise, many samples: the two estimates agree to a few standard errors."""
    m, x = relu_cnn(dtype=torch.float32), images(2, dtype=torch.float32)
    torch.manual_seed(0)
    ref = captum_attr.NoiseTunnel(captum_attr.Saliency(m)).attribute(
        x, target=TARGET[:2], nt_type="smoothgrad", nt_samples=400, stdevs=0.1, abs=False)
    ours = ATTRIBUTIONS.create("smoothgrad", samples=400, noise=0.1)(m, x, TARGET[:2])
    rel = float((ours - ref).norm() / ref.norm())
    print(f"captum smoothgrad (independent noise, 400 samples): relative L2 diff {rel:.3g}")
    assert rel < 0.1


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_gradcam(mode: str) -> None:
    m, x = bn_resnet(), images()
    ours = ATTRIBUTIONS.create("gradcam", interpolate=mode)(m, x, TARGET)  # auto: the last conv executed
    layer = m.stages[-1].conv2
    lmap = captum_attr.LayerGradCam(m, layer).attribute(x, target=TARGET, relu_attributions=True)
    ref = captum_attr.LayerAttribution.interpolate(lmap, x.shape[2:], interpolate_mode=mode).expand_as(x)
    _close(ours, ref, f"gradcam ({mode}, resnet auto layer)")
    cnn = relu_cnn()
    named = ATTRIBUTIONS.create("gradcam", layer="0")(cnn, x, TARGET)
    ref2 = captum_attr.LayerGradCam(cnn, cnn[0]).attribute(x, target=TARGET, relu_attributions=True)
    ref2 = captum_attr.LayerAttribution.interpolate(ref2, x.shape[2:], interpolate_mode="bilinear").expand_as(x)
    _close(named, ref2, "gradcam (small-cnn, layer '0')")


@pytest.mark.parametrize("window,stride", [(2, 1), (3, 2), (4, 4), (3, 3)])
def test_occlusion(window: int, stride: int) -> None:
    m, x = relu_cnn(), images()
    ours = ATTRIBUTIONS.create("occlusion", window=window, stride=stride, baseline=0.5, batch_size=13)(m, x, TARGET)
    ref = captum_attr.Occlusion(m).attribute(x, sliding_window_shapes=(1, window, window),
                                             strides=(1, stride, stride), baselines=0.5, target=TARGET)
    _close(ours, ref, f"occlusion window {window} stride {stride}", tol=1e-7)  # captum sums in float32


def test_occlusion_on_tables() -> None:
    m, x = tab_mlp(), table()
    ours = ATTRIBUTIONS.create("occlusion")(m, x, TARGET % 3)
    ref = captum_attr.Occlusion(m).attribute(x, sliding_window_shapes=(1,), target=TARGET % 3)
    _close(ours, ref, "occlusion (tabular, per feature)", tol=1e-7)


@pytest.mark.parametrize("make", [relu_cnn, bn_resnet, tab_mlp])
def test_deeplift(make) -> None:
    m = make()
    x = table() if make is tab_mlp else images()
    t = TARGET % 3 if make is tab_mlp else TARGET
    ours = ATTRIBUTIONS.create("deeplift", baseline=0.1)(m, x, t)
    ref = captum_attr.DeepLift(m).attribute(x, baselines=0.1, target=t)
    _close(ours, ref, f"deeplift ({make.__name__})")


@pytest.mark.parametrize("normalize", [False, True])
def test_infidelity_with_the_same_perturbations(normalize: bool) -> None:
    m, x = relu_cnn(), images()
    attr = ATTRIBUTIONS.create("saliency", absolute=False)(m, x, TARGET)
    samples, noise, seed = 6, 0.05, 2
    ours = ATTRIBUTION_METRICS.create("infidelity", samples=samples, noise=noise, seed=seed, normalize=normalize,
                                      batch_size=5)(m, x, attr, TARGET)
    pert = infidelity_noise(x, samples, noise, seed).reshape((-1,) + tuple(x.shape[1:]))

    def perturb(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        assert inputs.shape == pert.shape  # captum repeats each example samples times (repeat_interleave)
        return pert, inputs - pert

    ref = captum_metrics.infidelity(m, perturb, x, attr, target=TARGET, n_perturb_samples=samples,
                                    normalize=normalize)
    _close(ours.values, ref, f"infidelity (normalize={normalize})")
    assert not ours.higher_is_better


def test_max_sensitivity_with_the_same_perturbations() -> None:
    m, x = relu_cnn(), images()
    attr = ATTRIBUTIONS.create("saliency")(m, x, TARGET)
    samples, radius, seed = 5, 0.05, 4
    ours = ATTRIBUTION_METRICS.create("max-sensitivity", attribution="saliency", radius=radius, samples=samples,
                                      seed=seed)(m, x, attr, TARGET)
    pert = sensitivity_noise(x, samples, radius, seed).reshape((-1,) + tuple(x.shape[1:]))
    ref = captum_metrics.sensitivity_max(captum_attr.Saliency(m).attribute, x, perturb_func=lambda inp: inp + pert,
                                         n_perturb_samples=samples, target=TARGET)
    _close(ours.values, ref, "max-sensitivity (saliency)")
    assert not ours.higher_is_better
