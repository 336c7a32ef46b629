"""MNIST-C corruptions against references: analytic answers (translate, brightness, stripe, fog on black),
an independent warp (scipy's ``affine_transform`` for rotate / shear / scale), scikit-image's Canny (when
installed), statistics of the noises, identities at zero strength, severity monotonicity of the change,
seed determinism, and ``corruption_table`` against a manual loop (also with a baseline's mCE)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn

from fortify.audit.corruptions import CORRUPTIONS, MNIST_C, corrupt, corruption_table
from fortify.audit.corruptions.base import gaussian_blur, rotation_matrices
from fortify.data import load
from fortify.models.state import fingerprint

#: corruptions whose MNIST-C levels change the kind of damage, not its amount (excluded from monotonicity)
NOT_MONOTONE = {
    "spatter": "MNIST-C's levels 4-5 switch from large blurred drops (sigma 4..2) to small sharp ones (sigma 1)",
    "fog": "levels 3-4 trade strength for roughness; the mean change is flat within noise",
    "canny_edges": "severity is the smoothing scale of the edge detector, not an amount of change",
}


@pytest.fixture(scope="module")
def mnist() -> tuple[torch.Tensor, torch.Tensor]:
    return load("mnist-5k", "test", limit=48)


def shifted(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``out[r, c] = x[r + dy, c + dx]``, zeros outside."""
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    out[..., max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)] = \
        x[..., max(0, dy):h - max(0, -dy), max(0, dx):w - max(0, -dx)]
    return out


def scipy_warp(img: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Reference inverse-map warp about the centre: out[p] = img[A (p - c) + c], p = (col, row), bilinear."""
    swap = np.array([[0, 1], [1, 0]])
    m = swap @ a @ swap  # the same map in (row, col)
    centre = (np.array(img.shape) - 1) / 2.0
    return ndimage.affine_transform(img, m, offset=centre - m @ centre, order=1, mode="constant", cval=0.0)


def test_translate_matches_integer_shifts(mnist: tuple[torch.Tensor, torch.Tensor]) -> None:
    x = mnist[0][:16]
    for severity in (1, 3, 5):
        out = corrupt(x, "translate", severity, seed=1)
        for i in range(len(x)):
            refs = [shifted(x[i], sy * severity, sx * severity) for sy in (-1, 1) for sx in (-1, 1)]
            assert min(float((out[i] - r).abs().max()) for r in refs) < 1e-5


@pytest.mark.parametrize("name", ["rotate", "shear", "scale"])
def test_affine_corruptions_match_scipy(name: str, mnist: tuple[torch.Tensor, torch.Tensor]) -> None:
    x = mnist[0][:8]
    level = CORRUPTIONS.get(name).level(CORRUPTIONS.get(name).default)
    candidates = []
    for sign in (-1.0, 1.0):
        if name == "rotate":
            a = rotation_matrices(torch.tensor([sign * level], dtype=torch.float64))[0].numpy()
        elif name == "shear":
            s = sign * level
            a = np.array([[1.0, -math.sin(s)], [0.0, math.cos(s)]])
        else:
            a = level * np.eye(2)
        candidates.append(a)
    out = corrupt(x, name, seed=4).numpy()
    signs_seen = set()
    for i in range(len(x)):
        errs = [np.abs(out[i, 0] - scipy_warp(x[i, 0].double().numpy(), a)).max() for a in candidates]
        assert min(errs) < 1e-5, f"{name} image {i}: no direction matches the reference ({errs})"
        signs_seen.add(int(np.argmin(errs)))
    if name != "scale":
        assert signs_seen == {0, 1}, "both directions should occur in 8 images"


def test_brightness_is_hsv_value_shift() -> None:
    g = torch.Generator().manual_seed(0)
    gray = torch.rand(4, 1, 10, 10, generator=g)
    assert torch.allclose(corrupt(gray, "brightness", 2), (gray + 0.2).clamp(0, 1))
    rgb = torch.rand(4, 3, 10, 10, generator=g)
    out = corrupt(rgb, "brightness", 3)
    v, v_out = rgb.amax(1), out.amax(1)
    assert torch.allclose(v_out, (v + 0.3).clamp(max=1.0), atol=1e-6)
    ratio_in = rgb / v.unsqueeze(1)
    assert torch.allclose(out / v_out.unsqueeze(1), ratio_in, atol=1e-5), "hue and saturation must be kept"


def test_stripe_inverts_outer_columns_and_is_an_involution(mnist: tuple[torch.Tensor, torch.Tensor]) -> None:
    x = mnist[0][:4]
    out = corrupt(x, "stripe")  # MNIST-C: 7 of 28 columns each side
    assert torch.equal(out[..., :7], 1 - x[..., :7]) and torch.equal(out[..., 21:], 1 - x[..., 21:])
    assert torch.equal(out[..., 7:21], x[..., 7:21])
    assert torch.allclose(corrupt(out, "stripe"), x)


def test_shot_and_impulse_noise_statistics() -> None:
    x = torch.full((64, 1, 28, 28), 0.3)
    out = corrupt(x, "shot_noise", 3, seed=2)  # Poisson(12 * 0.3) / 12: mean 0.3, variance 0.3 / 12
    assert abs(float(out.mean()) - 0.3) < 0.01
    assert abs(float(out.var()) - 0.3 / 12) < 0.003
    flip = corrupt(torch.full((64, 1, 28, 28), 0.5), "impulse_noise", 4, seed=2)  # amount 0.17
    changed = flip != 0.5
    assert abs(float(changed.float().mean()) - 0.17) < 0.01
    assert set(flip[changed].unique().tolist()) == {0.0, 1.0}
    assert abs(float((flip[changed] == 1).float().mean()) - 0.5) < 0.03


def test_fog_on_black_and_white() -> None:
    assert torch.equal(corrupt(torch.zeros(3, 1, 28, 28), "fog"), torch.zeros(3, 1, 28, 28))
    white = corrupt(torch.ones(3, 1, 28, 28), "fog")  # (1 + 3 F) / 4 with F in [0, 1]
    assert float(white.min()) >= 0.25 - 1e-6 and float(white.std()) > 0.01


def test_blurs_keep_constant_images() -> None:
    x = torch.full((3, 2, 20, 20), 0.6)
    for name in ("glass_blur", "motion_blur"):
        for severity in (1, 5):
            assert torch.allclose(corrupt(x, name, severity), x, atol=1e-5), name


@pytest.mark.parametrize("severity", [1, 4])
def test_glass_blur_equals_a_sequential_swap_loop(severity: int, mnist: tuple[torch.Tensor, torch.Tensor]) -> None:
    """The batched sweep equals MNIST-C's loop run image by image, pixel by pixel, on the same random draws."""
    x = mnist[0][:3]
    sigma, delta, iterations = CORRUPTIONS.get("glass_blur").level(severity)
    rng = np.random.default_rng(9)
    img = gaussian_blur(x, sigma).double().numpy().copy()
    n, _, h, w = img.shape
    positions = [(r, c) for r in range(h - delta, delta, -1) for c in range(w - delta, delta, -1)]
    for _ in range(iterations):
        swaps = rng.random((len(positions), n)) < 0.5
        offsets = rng.integers(-delta, delta, size=(len(positions), n, 2))
        for p, (r, c) in enumerate(positions):
            for i in range(n):
                if swaps[p, i]:
                    rr, cc = r + offsets[p, i, 0], c + offsets[p, i, 1]
                    img[i, 0, r, c], img[i, 0, rr, cc] = img[i, 0, rr, cc], img[i, 0, r, c]
    ref = gaussian_blur(torch.from_numpy(img).float(), sigma).clamp(0, 1)
    assert torch.allclose(corrupt(x, "glass_blur", severity, seed=9), ref, atol=1e-6)


def test_motion_blur_moves_a_point_along_its_angle() -> None:
    """A point's blur has mass 1 and its centroid at p0 + (sum_i w_i i) u(angle), u drawn from the seed."""
    x = torch.zeros(6, 1, 29, 29)
    x[:, :, 14, 14] = 1.0
    radius, sigma = CORRUPTIONS.get("motion_blur").level(1)
    angles = np.deg2rad(np.random.default_rng(4).uniform(-45.0, 45.0, size=6))
    taps = np.arange(radius)
    weights = np.exp(-0.5 * (taps / sigma) ** 2)
    reach = float((weights / weights.sum() * taps).sum())
    out = corrupt(x, "motion_blur", 1, seed=4)[:, 0].double()
    rows, cols = torch.meshgrid(torch.arange(29.0), torch.arange(29.0), indexing="ij")
    mass = out.sum(dim=(1, 2))
    assert torch.allclose(mass, torch.ones(6, dtype=torch.float64), atol=1e-5)
    centroid_c = (out * cols).sum(dim=(1, 2)) / mass
    centroid_r = (out * rows).sum(dim=(1, 2)) / mass
    assert np.allclose(centroid_c.numpy(), 14 + reach * np.cos(angles), atol=1e-4)
    assert np.allclose(centroid_r.numpy(), 14 + reach * np.sin(angles), atol=1e-4)


def test_lines_only_add_and_dots_skip_columns(mnist: tuple[torch.Tensor, torch.Tensor]) -> None:
    x = mnist[0][:8]
    for name in ("dotted_line", "zigzag"):
        out = corrupt(x, name, 3, seed=5)
        assert bool((out >= x - 1e-7).all()), name
    dotted = corrupt(x, "dotted_line", 5, seed=5)
    erased = (torch.arange(28) // 2) % 2 == 0
    assert torch.equal(dotted[..., erased], x[..., erased])


def test_identity_at_zero_strength(mnist: tuple[torch.Tensor, torch.Tensor]) -> None:
    x = mnist[0][:4]
    rng, gen = np.random.default_rng(0), torch.Generator().manual_seed(0)
    for name, level in (("rotate", 0.0), ("shear", 0.0), ("scale", 1.0), ("brightness", 0.0), ("stripe", 0.0)):
        out = CORRUPTIONS.get(name).apply(x, level, rng, gen)
        if name == "stripe":  # the narrowest stripe is one column
            out[..., [0, -1]] = x[..., [0, -1]]
        assert torch.allclose(out, x, atol=1e-5), name
    assert float((CORRUPTIONS.get("shot_noise").apply(x, 1e7, rng, gen) - x).abs().max()) < 2e-3


def test_canny_matches_scikit_image(mnist: tuple[torch.Tensor, torch.Tensor]) -> None:
    feature = pytest.importorskip("skimage.feature")
    x = mnist[0][:24]
    for severity, sigma in ((1, 1.0), (3, 2.0)):
        out = corrupt(x, "canny_edges", severity)
        ref = np.stack([feature.canny(im, sigma=sigma) for im in x[:, 0].double().numpy()])
        assert np.array_equal(out[:, 0].numpy() > 0.5, ref)


@pytest.mark.parametrize("name", [n for n in MNIST_C if n not in NOT_MONOTONE])
def test_change_grows_with_severity(name: str, mnist: tuple[torch.Tensor, torch.Tensor]) -> None:
    x = mnist[0][:32]
    change = [float((corrupt(x, name, s, seed=7) - x).abs().mean()) for s in (1, 2, 3, 4, 5)]
    assert all(b >= a - 1e-3 for a, b in zip(change, change[1:])), change
    assert change[-1] > change[0]


@pytest.mark.parametrize("name", ["shot_noise", "impulse_noise", "glass_blur", "motion_blur", "rotate", "fog",
                                  "spatter", "dotted_line", "zigzag"])
def test_seed_changes_random_corruptions(name: str, mnist: tuple[torch.Tensor, torch.Tensor]) -> None:
    x = mnist[0][:6]
    assert torch.equal(corrupt(x, name, seed=11), corrupt(x, name, seed=11))
    assert not torch.equal(corrupt(x, name, seed=11), corrupt(x, name, seed=12))


def tiny_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 5, stride=3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))


def test_corruption_table_matches_manual_loop(mnist: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = mnist
    model, base = tiny_model(0), tiny_model(1)
    model.train()
    before = fingerprint(model)
    names = ["rotate", "fog", "stripe"]
    report = corruption_table(model, x, y, names, severities=[1, 4], seed=3, batch_size=10, baseline=base)
    assert fingerprint(model) == before
    assert [(r.corruption, r.severity) for r in report.rows] == [(n, s) for n in names for s in (1, 4)]
    with torch.no_grad():
        clean = float((model.eval()(x).argmax(1) == y).float().mean())
        model.train()
        assert report.clean_accuracy == pytest.approx(clean)
        ces, rces = [], []
        b_clean = 1 - float((base(x).argmax(1) == y).float().mean())
        for n in names:
            errs, b_errs = [], []
            for s in (1, 4):
                xc = corrupt(x, n, s, seed=3)
                errs.append(1 - float((model.eval()(xc).argmax(1) == y).float().mean()))
                b_errs.append(1 - float((base(xc).argmax(1) == y).float().mean()))
            model.train()
            rows = [r for r in report.rows if r.corruption == n]
            assert [r.error for r in rows] == pytest.approx(errs)
            assert [r.baseline_error for r in rows] == pytest.approx(b_errs)
            ces.append(sum(errs) / sum(b_errs))
            den = sum(e - b_clean for e in b_errs)
            rces.append(sum(e - (1 - clean) for e in errs) / den if den > 0 else math.nan)
    assert report.mce == pytest.approx(np.mean(ces))
    kept = [v for v in rces if not math.isnan(v)]
    assert report.relative_mce == pytest.approx(np.mean(kept)) if kept else math.isnan(report.relative_mce)
    table = report.to_rows()
    assert len(table) == 6 and {"corruption", "severity", "accuracy", "error", "baseline_error"} <= set(table[0])


def test_corruption_table_defaults_and_errors(mnist: tuple[torch.Tensor, torch.Tensor]) -> None:
    from fortify.errors import ConfigError, InputError, UnknownNameError

    x, y = mnist[0][:8], mnist[1][:8]
    model = tiny_model(0).eval()
    report = corruption_table(model, x, y, ["translate", "brightness"])
    assert [(r.corruption, r.severity) for r in report.rows] == [("translate", 3), ("brightness", 5)]
    assert report.mce == pytest.approx(1 - report.mean_accuracy) and math.isnan(report.relative_mce)
    with pytest.raises(ConfigError):
        corruption_table(model, x, y, ["rotate"], severities=[0])
    with pytest.raises(ConfigError):
        corruption_table(model, x, y, ["rotate"], batch_size=0)
    with pytest.raises(UnknownNameError):
        corruption_table(model, x, y, ["frost"])
    with pytest.raises(InputError):
        corruption_table(model, x, y[:4], ["rotate"])
