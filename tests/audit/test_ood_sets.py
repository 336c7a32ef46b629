"""The offline OOD sets against their sources: exact rows of the source data where no resizing happens,
the channel conversion rule, noise statistics, glyph-like letters, crops of the bundled photographs, a
typed one-line error naming the package when a source is missing, and fooling images through ``model=``."""
from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fortify.audit import ood_sets
from fortify.audit.ood_sets import fit_images, load_ood, render_letter
from fortify.data import clear_cache, load
from fortify.data.idx import write_idx
from fortify.errors import DatasetUnavailableError


def test_fit_images_channel_rule_and_constant_resize() -> None:
    g = torch.Generator().manual_seed(0)
    rgb = torch.rand(2, 3, 6, 6, generator=g)
    gray = fit_images(rgb, (1, 6, 6))
    assert torch.allclose(gray[:, 0], 0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2], atol=1e-6)
    one = torch.rand(2, 1, 6, 6, generator=g)
    three = fit_images(one, (3, 6, 6))
    assert all(torch.equal(three[:, c], one[:, 0]) for c in range(3))
    assert torch.allclose(fit_images(torch.full((1, 1, 9, 7), 0.25), (2, 16, 12)), torch.full((1, 2, 16, 12), 0.25))


def test_digits_are_sklearn_rows_at_native_size() -> None:
    pytest.importorskip("sklearn")
    images = torch.cat([load("digits", "train")[0], load("digits", "test")[0]])[:, 0]  # fortify's own reader
    x = load_ood("digits-upsampled", 20, (1, 8, 8), seed=3)
    for sample in x[:, 0]:
        assert bool(((images - sample).abs().amax(dim=(1, 2)) < 1e-6).any())
    big = load_ood("digits-upsampled", 20, (1, 28, 28), seed=3)
    down = torch.nn.functional.avg_pool2d(big[:, :, :24, :24], 3)  # not exact: a smooth up-sampling of the rows
    assert down.shape == (20, 1, 8, 8) and float(big.mean()) == pytest.approx(float(x.mean()), abs=0.05)


def fake_fashion(folder: Path) -> np.ndarray:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(30, 28, 28), dtype=np.uint8)
    write_idx(folder / "t10k-images-idx3-ubyte", images)
    write_idx(folder / "t10k-labels-idx1-ubyte", (np.arange(30) % 10).astype(np.uint8))
    return images


def test_fashion_reads_the_idx_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images = torch.from_numpy(fake_fashion(tmp_path).astype(np.float32) / 255.0)
    monkeypatch.setattr("fortify.data.sources.FASHION_DIR", tmp_path)
    clear_cache()
    try:
        x = load_ood("fashion-mnist", 12, (1, 28, 28), seed=0)
        for sample in x[:, 0]:
            assert bool(((images - sample).abs().amax(dim=(1, 2)) < 1e-6).any())
        assert len({tuple(s.flatten()[:8].tolist()) for s in x}) == 12, "drawn without replacement"
    finally:
        clear_cache()


def test_missing_sources_name_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("fortify.data.sources.FASHION_DIR", tmp_path / "absent")
    clear_cache()
    try:
        with pytest.raises(DatasetUnavailableError, match="dataset-fashion-mnist"):
            load_ood("fashion-mnist", 2, (1, 28, 28))
    finally:
        clear_cache()
    no_packages = types.SimpleNamespace(util=types.SimpleNamespace(find_spec=lambda name: None))
    monkeypatch.setattr(ood_sets, "importlib", no_packages)
    for name in ("textures", "natural-crops"):
        with pytest.raises(DatasetUnavailableError, match="scikit-image") as err:
            load_ood(name, 2, (1, 28, 28))
        assert "\n" not in str(err.value)
    with pytest.raises(DatasetUnavailableError, match="matplotlib"):
        load_ood("font-letters", 2, (1, 28, 28))


def test_letters_look_like_glyphs() -> None:
    x = load_ood("font-letters", 64, (1, 28, 28), seed=0)
    ink = (x > 0.5).float().mean(dim=(1, 2, 3))
    assert float(x.mean()) < 0.35 and bool(((ink > 0.02) & (ink < 0.6)).all()), "white strokes on black"
    border = torch.cat([x[..., 0, :], x[..., -1, :], x[..., :, 0], x[..., :, -1]], -1)
    assert float(border.mean()) < float(x.mean()), "glyphs sit inside the frame"
    fonts = ood_sets._font_paths()
    rng_a, rng_b = np.random.default_rng(1), np.random.default_rng(1)
    a, b = render_letter("A", fonts[0], rng_a), render_letter("B", fonts[0], rng_b)
    assert a.shape == (64, 64) and not np.array_equal(a, b)


def test_crops_come_from_the_bundled_photographs() -> None:
    pytest.importorskip("skimage")
    rgb = load_ood("natural-crops", 40, (3, 32, 32), seed=0)
    colourful = (rgb.amax(1) - rgb.amin(1)).mean(dim=(1, 2)) > 0.02
    assert bool(colourful.any()) and not bool(colourful.all()), "astronaut/coffee are in colour, camera is gray"
    tex = load_ood("textures", 16, (1, 28, 28), seed=0)
    assert float(tex.std(dim=(1, 2, 3)).min()) > 0.01, "texture crops are not flat"


def test_noise_statistics() -> None:
    u = load_ood("uniform-noise", 50, (1, 28, 28), seed=0)
    assert float(u.mean()) == pytest.approx(0.5, abs=0.01) and float(u.var()) == pytest.approx(1 / 12, abs=0.005)
    gau = load_ood("gaussian-noise", 50, (3, 8, 8), seed=0)
    assert float(gau.mean()) == pytest.approx(0.5, abs=0.01) and 0.2 < float(gau.std()) < 0.25
    c = load_ood("constant", 30, (2, 5, 5), seed=0)
    assert float((c - c.flatten(1)[:, :1].view(30, 1, 1, 1)).abs().max()) == 0.0
    assert float(c.flatten(1)[:, 0].std()) > 0.2
    flat = load_ood("uniform-noise", 4, (7,), seed=0)
    assert flat.shape == (4, 7)


def test_fooling_set_is_confidently_classified() -> None:
    torch.manual_seed(0)
    head = nn.Linear(32, 3)
    with torch.no_grad():
        head.weight.mul_(20.0)  # confident enough that 0.99 is reachable inside [0, 1]
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), head).eval()
    x = load_ood("fooling", 7, (1, 8, 8), seed=0, model=model)
    assert x.shape == (7, 1, 8, 8)
    with torch.no_grad():
        conf = torch.softmax(model(x), 1).amax(1)
    assert float((conf >= 0.99).float().mean()) >= 0.8
