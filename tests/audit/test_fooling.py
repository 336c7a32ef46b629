"""Fooling images (Nguyen et al. 2015) on a tiny digits classifier: the gradient method reaches 99%
confidence on most classes, the evolutionary search (forward passes only, direct and CPPN encodings)
improves on its initial population and never loses fitness (elitist), CPPN images are smooth, the reported confidences and rates equal a recomputation from the
model, results are reproducible per seed, the model is left untouched, bad arguments are typed errors."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from fortify.audit.fooling import CPPN, FoolingOptions, fooling_images
from fortify.data import load
from fortify.errors import ConfigError
from fortify.models.state import fingerprint


@pytest.fixture(scope="module")
def digits_model() -> nn.Module:
    pytest.importorskip("sklearn")
    x, y = load("digits", "train")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10))
    opt = torch.optim.Adam(model.parameters(), lr=0.03)
    for _ in range(60):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    xt, yt = load("digits", "test")
    with torch.no_grad():
        assert float((model(xt).argmax(1) == yt).float().mean()) > 0.9
    return model.train()  # handed over in training mode: flags must come back as they were


def recomputed(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        was = model.training
        model.eval()
        probs = torch.softmax(model(images), 1).gather(1, labels.view(-1, 1)).squeeze(1)
        model.train(was)
    return probs


def test_gradient_method_fools_most_classes(digits_model: nn.Module) -> None:
    before = fingerprint(digits_model)
    res = fooling_images(digits_model, 4, method="gradient", steps=60, sample_shape=(1, 8, 8),
                         options=FoolingOptions(step_size=0.02))
    assert fingerprint(digits_model) == before
    assert res.images.shape == (40, 1, 8, 8) and float(res.images.min()) >= 0 and float(res.images.max()) <= 1
    assert torch.equal(res.labels, torch.arange(10).repeat_interleave(4))
    assert torch.allclose(res.confidences, recomputed(digits_model, res.images, res.labels), atol=1e-5)
    reached = (res.confidences >= 0.99).float().view(10, 4).mean(1)
    assert torch.equal(res.rate_per_class, reached) and res.rate == pytest.approx(float(reached.mean()))
    assert int((res.rate_per_class == 1.0).sum()) >= 8, res.rate_per_class
    assert float(res.initial_confidences.mean()) < 0.5, "the search must start from noise, not from digits"


def test_evolution_improves_with_forward_passes_only(digits_model: nn.Module) -> None:
    res = fooling_images(digits_model, 3, method="evolution", steps=25, options=FoolingOptions(population=8), confidence=0.999,
                         sample_shape=(1, 8, 8), seed=1)
    assert bool((res.confidences >= res.initial_confidences - 1e-6).all()), "elitist selection never loses"
    assert float(res.confidences.mean()) > float(res.initial_confidences.mean()) + 0.2
    assert torch.allclose(res.confidences, recomputed(digits_model, res.images, res.labels), atol=1e-5)
    assert res.evaluations <= 30 * (1 + 25 * 8) and res.method == "evolution"
    again = fooling_images(digits_model, 3, method="evolution", steps=25, options=FoolingOptions(population=8), confidence=0.999,
                           sample_shape=(1, 8, 8), seed=1)
    assert torch.equal(res.images, again.images)
    other = fooling_images(digits_model, 3, method="evolution", steps=2, options=FoolingOptions(population=8), sample_shape=(1, 8, 8),
                           seed=2)
    assert not torch.equal(res.images, other.images)


def test_cppn_evolution_draws_smooth_patterns(digits_model: nn.Module) -> None:
    res = fooling_images(digits_model, 2, method="evolution", steps=15, options=FoolingOptions(population=8, encoding="cppn"),
                         confidence=0.999, sample_shape=(1, 8, 8), seed=0)
    assert res.encoding == "cppn" and res.images.shape == (20, 1, 8, 8)
    assert bool((res.confidences >= res.initial_confidences - 1e-6).all())
    assert float(res.confidences.mean()) > float(res.initial_confidences.mean())
    assert torch.allclose(res.confidences, recomputed(digits_model, res.images, res.labels), atol=1e-5)
    g = torch.Generator().manual_seed(0)
    net = CPPN((1, 28, 28))
    patterns = net.decode(1.5 * torch.randn(30, net.genome_size, generator=g))
    noise = torch.rand(30, 1, 28, 28, generator=g)

    def roughness(x: torch.Tensor) -> float:  # mean absolute difference of horizontal neighbours
        return float((x[..., 1:] - x[..., :-1]).abs().mean())

    assert roughness(patterns) < 0.3 * roughness(noise), "a CPPN draws smooth patterns, not pixel noise"
    assert float(patterns.std()) > 0.1 and CPPN((3, 32, 32)).decode(torch.randn(2, CPPN((3, 32, 32)).genome_size,
                                                                               generator=g)).shape == (2, 3, 32, 32)
    with pytest.raises(ConfigError):
        fooling_images(digits_model, 1, method="evolution", sample_shape=(64,), options=FoolingOptions(encoding="cppn"))


def test_gradient_method_stops_at_the_confidence(digits_model: nn.Module) -> None:
    low = fooling_images(digits_model, 2, confidence=0.5, steps=200, sample_shape=(1, 8, 8))
    high = fooling_images(digits_model, 2, confidence=0.999, steps=200, sample_shape=(1, 8, 8))
    assert low.evaluations < high.evaluations
    assert float(low.confidences.median()) < float(high.confidences.median())


def test_bad_arguments(digits_model: nn.Module) -> None:
    bad_options = [FoolingOptions(encoding="indirect"), FoolingOptions(population=0), FoolingOptions(step_size=-1),
                   FoolingOptions(mutation_rate=2.0), {"population": 4}]
    for kwargs in ({"method": "cppn-magic"}, {"confidence": 1.5}, {"confidence": 0}, {"steps": -1}, {"batch_size": 0},
                   {"seed": -2}, {"sample_shape": (1, 0, 8)}, *({"options": o} for o in bad_options)):
        with pytest.raises(ConfigError):
            fooling_images(digits_model, 1, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        fooling_images(digits_model, 0, sample_shape=(1, 8, 8))
