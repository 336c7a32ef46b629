"""Contract every registered architecture must meet, on the example shapes it declares.

A factory's ``example_shapes`` attribute lists the input shapes it takes (images, signals ``(C, L)``
or tables ``(F,)``); without it, MNIST-sized and digits-sized images. Shapes and dtypes of logits,
gradients reach the input, a ``Sequential`` holds only standard layers and any other model traces to
a graph certification can bound, published parameter counts, save/load round trip with identical
outputs (bare and Normalized), ``Normalized`` equal to normalising by hand, and every pillar
(attack, one training step, certify, compress) either runs or refuses with a typed error.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from fortify import models
from fortify.errors import UnsupportedLayerError

NAMES = models.MODELS.names()
SHAPES = [(1, 28, 28), (1, 8, 8)]
WALKABLE = (nn.Linear, nn.Conv2d, nn.ReLU, nn.Flatten, nn.MaxPool2d, nn.Conv1d, nn.MaxPool1d, nn.BatchNorm1d)


def shapes_of(name: str) -> list[tuple[int, ...]]:
    """The example shapes architecture ``name`` declares (default: 28x28 and 8x8 grey images)."""
    return [tuple(s) for s in getattr(models.MODELS.get(name), "example_shapes", SHAPES)]


CASES = [(n, s) for n in NAMES for s in shapes_of(n)]
IDS = [f"{n}-{'x'.join(map(str, s))}" for n, s in CASES]
#: Parameter counts from the papers' layer sizes on 28x28 MNIST, 10 classes (computed by hand).
PUBLISHED = {
    "mlp": 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10,  # 266,610 (LeNet-300-100)
    "lenet5": 156 + 2416 + 400 * 120 + 120 + 120 * 84 + 84 + 84 * 10 + 10,  # 61,706
    "small-cnn": 272 + 8224 + 32 * 7 * 7 * 100 + 100 + 1010,  # 166,406 (Wong & Kolter)
    "madry-cnn": 832 + 51264 + 64 * 7 * 7 * 1024 + 1024 + 10250,  # 3,274,634 (Madry et al.)
    # Gowal et al. 2018 "medium": conv32 k3, conv32 k4 s2, conv64 k3, conv64 k4 s2, fc512, fc512, fc10
    "dm-medium": 320 + 16416 + 18496 + 65600 + 64 * 7 * 7 * 512 + 512 + 262656 + 5130,  # 1,974,762
}


def test_registry_has_the_documented_models() -> None:
    assert {"mlp", "lenet5", "small-cnn", "madry-cnn"} <= set(NAMES)
    assert PUBLISHED["mlp"] == 266_610


@pytest.mark.parametrize("name,shape", CASES, ids=IDS)
def test_forward_contract(name: str, shape: tuple[int, ...]) -> None:
    from fortify.certify.graph import build_net

    model = models.create(name, in_shape=shape, num_classes=10)
    if isinstance(model, nn.Sequential):
        assert all(isinstance(m, WALKABLE) for m in model), [type(m).__name__ for m in model]
    else:  # residual / concat nets: a graph certification can bound
        assert build_net(model, shape, torch.zeros(1)) is not None
    model.eval()
    x = torch.rand(5, *shape, requires_grad=True)
    out = model(x)
    assert out.shape == (5, 10) and out.dtype == torch.float32
    assert bool(torch.isfinite(out).all())
    (grad,) = torch.autograd.grad(out[:, 3].sum(), x)
    assert grad.shape == x.shape and float(grad.abs().sum()) > 0
    # the rows are independent: a batch gives the same logits as single examples
    assert torch.allclose(model(x[2:3]), out[2:3], atol=1e-5)
    assert models.create(name, in_shape=shape, num_classes=3)(x).shape == (5, 3)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_parameter_counts(name: str) -> None:
    model = models.create(name)
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED[name]
    assert models.KNOWN_PARAM_COUNTS[name] == PUBLISHED[name]


@pytest.mark.parametrize("name,shape", CASES, ids=IDS)
def test_save_load_round_trip_identical_outputs(tmp_path: Path, name: str, shape: tuple[int, ...]) -> None:
    model = models.create(name, in_shape=shape, num_classes=10)
    path = models.save(model, tmp_path / "m.safetensors", meta={"dataset": "digits"})
    back = models.load(path)
    assert not back.training and type(back) is type(model)
    assert models.architecture(back) == models.architecture(model)
    x = torch.rand(4, *shape)
    model.eval()
    assert torch.equal(back(x), model(x))
    for (k1, v1), (k2, v2) in zip(model.state_dict().items(), back.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)


@pytest.mark.parametrize("name", NAMES)
def test_normalized_equals_manual_normalisation_and_round_trips(tmp_path: Path, name: str) -> None:
    shape = shapes_of(name)[-1]
    mean, std = (0.1307,) * shape[0], (0.3081,) * shape[0]
    inner = models.create(name, in_shape=shape).eval()
    net = models.Normalized(inner, mean, std).eval()
    x = torch.rand(6, *shape)
    assert net.inner is inner
    assert torch.allclose(net(x), inner((x - 0.1307) / 0.3081), atol=1e-5)
    back = models.load(models.save(net, tmp_path / "n.safetensors"))
    assert isinstance(back, models.Normalized)
    assert torch.equal(back(x), net(x))
    meta = models.read_meta(tmp_path / "n.safetensors")
    assert meta["normalization"]["mean"] == pytest.approx(list(mean))
    assert meta["architecture"]["name"] == name and meta["in_shape"] == list(shape)


@pytest.mark.parametrize("name", NAMES)
def test_every_pillar_runs_or_refuses_with_a_typed_error(name: str) -> None:
    """Attack (PGD, 2 steps), one training epoch, IBP and CROWN certificates (sound: below the
    margin at x), magnitude pruning: each runs, or (compression of non-Sequential / BatchNorm /
    1-D models) raises UnsupportedLayerError."""
    from fortify.attacks import ATTACKS
    from fortify.certify import CERTIFIERS
    from fortify.compress import TRANSFORMS
    from fortify.models.state import fingerprint
    from fortify.threat import ThreatModel
    from fortify.train import Trainer

    shape = shapes_of(name)[-1]
    torch.manual_seed(0)
    model = models.create(name, in_shape=shape, num_classes=3, **SMALL.get(name, {}))
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(8, *shape, generator=g), torch.arange(8) % 3
    threat = ThreatModel("linf", 0.01)
    Trainer(model, "standard", {"epochs": 1, "batch_size": 4, "lr": 0.01}, progress=False).fit((x, y))
    model.eval()
    before = fingerprint(model)
    res = ATTACKS.create("pgd", steps=2)(model, x, y, threat, generator=torch.Generator().manual_seed(0))
    assert res.x_adv.shape == x.shape
    with torch.no_grad():
        z = model(x)
    at_x = z.gather(1, y[:, None]).squeeze(1) - z.scatter(1, y[:, None], float("-inf")).amax(1)
    for method in ("ibp", "crown"):
        cert = CERTIFIERS.create(method)(model, x, y, threat)
        assert bool((cert.lower_margin <= at_x + 1e-4).all()), method
    try:
        out = TRANSFORMS.create("magnitude_prune", sparsity=0.5)(model, x[:2], data=(x, y))
        assert out.model is not model
    except UnsupportedLayerError as e:
        assert "\n" not in str(e)
    assert fingerprint(model) == before


#: narrow widths for the pillar walk (the full-width nets are covered above)
SMALL: dict[str, dict] = {"madry-cnn": {"hidden": 32}, "dm-medium": {"hidden": (32, 32)}, "mlp": {"hidden": (32,)},
                          "resnet-mnist": {"widths": (4, 8, 8)}, "dense-mnist": {"stem": 4, "growth": 4}}
