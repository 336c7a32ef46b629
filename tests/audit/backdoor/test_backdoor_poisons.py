"""Poisoning transforms are exact: the rate, the target, the untouched remainder, the trigger itself."""
from __future__ import annotations

import pytest
import torch

from fortify.audit.backdoor import POISONS, create_poison
from fortify.audit.backdoor.badnets import checker
from fortify.errors import ConfigError, InputError


def _data(n: int = 200, classes: int = 10, size: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, size, size, generator=g), torch.arange(n) % classes


@pytest.mark.parametrize("kind", ["badnets", "blended", "wanet"])
@pytest.mark.parametrize("rate", [0.0, 0.1, 0.37])
def test_exact_rate_target_and_untouched_remainder(kind: str, rate: float) -> None:
    x, y = _data()
    res = POISONS.create(kind, rate=rate, target=2, seed=5, **({"noise": False} if kind == "wanet" else {}))(x, y)
    k = round(rate * 200)
    assert res.indices.numel() == k and res.indices.unique().numel() == k
    assert bool((y[res.indices] != 2).all())  # dirty-label: drawn from the other classes
    assert bool((res.y[res.indices] == 2).all())
    rest = torch.ones(200, dtype=torch.bool)
    rest[res.indices] = False
    assert torch.equal(res.x[rest], x[rest]) and torch.equal(res.y[rest], y[rest])
    if k:
        assert not torch.equal(res.x[res.indices], x[res.indices])
    assert res.x.min() >= 0 and res.x.max() <= 1
    assert res.record()["poisoned"] == k


def test_badnets_patch_is_exactly_the_pattern() -> None:
    x, y = _data()
    p = POISONS.create("badnets", rate=0.2, target=0, size=3, position="top-left", margin=0, pattern="checker")
    res = p(x, y)
    i = res.indices
    assert torch.equal(res.x[i][:, :, :3, :3], checker(3).expand(i.numel(), 1, 3, 3))
    assert torch.equal(res.x[i][:, :, 3:, :], x[i][:, :, 3:, :]) and torch.equal(res.x[i][:, :, :3, 3:], x[i][:, :, :3, 3:])
    q = POISONS.create("badnets", size=2, position=[5, 7], pattern=[[1, 0], [0, 1]])
    out = q.apply(x[:4])
    assert torch.equal(out[:, 0, 5:7, 7:9], torch.tensor([[1.0, 0], [0, 1]]).expand(4, 2, 2))


def test_blended_is_the_convex_mix_and_wanet_a_smooth_warp() -> None:
    x, _ = _data(8)
    b = POISONS.create("blended", alpha=0.3)
    pat = b.pattern(1, 12, 12)
    torch.testing.assert_close(b.apply(x), 0.7 * x + 0.3 * pat)
    w = POISONS.create("wanet", s=0.5, k=4)
    out = w.apply(x)
    assert out.shape == x.shape and not torch.equal(out, x)
    assert float((out - x).abs().mean()) < 0.25  # a small warp, not a new image
    flat = torch.full_like(x, 0.4)
    torch.testing.assert_close(w.apply(flat), flat)  # a warp moves pixels: a constant image is a fixed point


def test_all_to_all_and_clean_label() -> None:
    x, y = _data()
    res = POISONS.create("badnets", rate=0.25, mode="all-to-all", seed=1)(x, y)
    assert torch.equal(res.y[res.indices], (y[res.indices] + 1) % 10) and res.target is None
    cl = POISONS.create("clean-label", rate=0.05, target=4, eps=0.1, steps=3, surrogate_epochs=1)
    r2 = cl(x, y)
    assert r2.indices.numel() == 10 and bool((y[r2.indices] == 4).all()) and torch.equal(r2.y, y)
    delta = (r2.x[r2.indices] - x[r2.indices])[:, :, :8, :8]  # away from the patch: the PGD perturbation only
    assert float(delta.abs().max()) <= 0.1 + 1e-6 and float(delta.abs().max()) > 0


def test_wanet_noise_mode_keeps_true_labels() -> None:
    x, y = _data()
    res = POISONS.create("wanet", rate=0.1, target=0, cross_ratio=2.0, noise=True)(x, y)
    assert res.noise_indices.numel() == 40
    assert not set(res.noise_indices.tolist()) & set(res.indices.tolist())
    assert torch.equal(res.y[res.noise_indices], y[res.noise_indices])
    assert not torch.equal(res.x[res.noise_indices], x[res.noise_indices])


def test_seeded_and_reproducible() -> None:
    x, y = _data()
    a = POISONS.create("badnets", rate=0.1, seed=3)(x, y)
    b = POISONS.create("badnets", rate=0.1, seed=3)(x, y)
    c = POISONS.create("badnets", rate=0.1, seed=4)(x, y)
    assert torch.equal(a.indices, b.indices) and not torch.equal(a.indices, c.indices)


@pytest.mark.parametrize("rate", [-0.1, 1.5, True, "0.1"])
def test_rate_outside_unit_interval_is_refused(rate: object) -> None:
    with pytest.raises(ConfigError, match="rate"):
        POISONS.create("badnets", rate=rate)


def test_target_the_dataset_lacks_and_trigger_larger_than_image() -> None:
    x, y = _data()
    with pytest.raises(ConfigError, match="target label 12"):
        POISONS.create("badnets", target=12)(x, y)
    with pytest.raises(InputError, match="larger than the image"):
        POISONS.create("badnets", size=13)(x, y)
    with pytest.raises(InputError, match="larger than the image"):
        POISONS.create("wanet", k=20).apply(x)
    with pytest.raises(InputError, match="blend pattern"):
        POISONS.create("blended", pattern=torch.rand(5, 5)).apply(x)
    with pytest.raises(ConfigError, match="only"):
        create_poison("clean-label", rate=0.5, target=1)(x, y)  # 20 target images cannot be 100 poisoned rows
