"""Out-of-distribution sets that exist offline: :func:`load_ood` and the registry :data:`OOD_SETS`.

Every set is made on this machine from files that ship with installed packages (or from a seed), never
downloaded. ``load_ood(name, n, sample_shape, seed=s)`` returns ``n`` float32 samples in ``[0, 1]``
shaped ``(n, *sample_shape)``; the same ``(name, n, sample_shape, seed)`` gives the same tensor.
Image sets are resized (bilinear, antialiased) to any ``(C, H, W)`` and converted between grayscale
and RGB (luminance ``0.299 R + 0.587 G + 0.114 B`` for ``C == 1``; the gray plane repeated for
``C > 1``; an RGB source keeps its colours when ``C == 3``). The noise sets take any sample shape.

=====================  ===============================================================  ======================
set                    what / where from                                                licence
=====================  ===============================================================  ======================
``fashion-mnist``      Fashion-MNIST test images (Xiao et al. 2017), Debian package     MIT
                       ``dataset-fashion-mnist`` (IDX files, :data:`fortify.data.sources.FASHION_DIR`)
``font-letters``       letters A-J rendered with Pillow from the fonts bundled with     DejaVu: Bitstream Vera
                       matplotlib (DejaVu, STIX, Computer Modern), random font, size,   licence; STIX: OFL;
                       offset and stroke: a notMNIST-like set (Bulatov 2011), made      cm: Knuth/AMS free
                       deterministically from the seed
``digits-upsampled``   UCI 8x8 handwritten digits bundled with scikit-learn,            CC BY 4.0 (UCI)
                       up-sampled bilinearly: same classes, covariate shift
``textures``           random crops of scikit-image's ``brick``, ``grass``, ``gravel``  CC0
``natural-crops``      random crops of scikit-image's ``camera``, ``astronaut``,        CC0 / public domain
                       ``coins``, ``chelsea``, ``coffee``, ``hubble_deep_field``,       (per scikit-image's
                       ``retina``, ``moon``                                             data docstrings)
``gaussian-noise``     ``clip(N(0.5, 0.25^2))`` i.i.d. per value                        (generated)
``uniform-noise``      ``U[0, 1]`` i.i.d. per value                                     (generated)
``constant``           one value ``U[0, 1]`` per sample, repeated over every feature    (generated)
``fooling``            fooling images of a given model (Nguyen et al. 2015), made by    (generated)
                       :func:`fortify.audit.fooling.fooling_images`; needs ``model=``
=====================  ===============================================================  ======================

The letters use only matplotlib's bundled fonts, not the system's (``fc-list`` differs between machines), so
the set is the same wherever matplotlib is installed. scikit-image's images are read with Pillow straight from the package's bundled ``data/`` folder (the
package is located with ``importlib.util.find_spec``, not imported), so nothing can trigger its
downloader. A missing source raises :class:`fortify.errors.DatasetUnavailableError` whose one-line
message names what to install. Cost: the image sets decode their source files once per process
(cached); rendering a letter costs about 0.5 ms.
"""
from __future__ import annotations

import functools
import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from fortify.errors import ConfigError, DatasetUnavailableError
from fortify.registry import Registry

if TYPE_CHECKING:
    from torch import nn

__all__ = ["OOD_SETS", "OODSet", "LETTER_FONTS", "load_ood", "fit_images"]

#: a set's generator: ``(n, sample_shape, rng, model) -> (n, *sample_shape)`` float32 in [0, 1]
Maker = Callable[[int, tuple[int, ...], np.random.Generator, "nn.Module | None"], torch.Tensor]


@dataclass(frozen=True)
class OODSet:
    """One registered OOD set: its generator and its provenance (shown by ``fortify audit`` and the docs)."""

    make: Maker
    description: str
    source: str
    licence: str
    #: ``True`` when the set accepts any sample shape, ``False`` when it needs ``(C, H, W)``
    any_shape: bool = False


OOD_SETS: Registry[OODSet] = Registry("ood set")

#: fonts bundled with matplotlib used by ``font-letters`` (present wherever matplotlib is installed)
LETTER_FONTS = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
    "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf",
    "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf",
    "cmr10.ttf", "cmb10.ttf", "cmss10.ttf", "cmti10.ttf", "cmtt10.ttf",
)
TEXTURE_IMAGES = ("brick.png", "grass.png", "gravel.png")
NATURAL_IMAGES = ("camera.png", "astronaut.png", "coins.png", "chelsea.png", "coffee.png",
                  "hubble_deep_field.jpg", "retina.jpg", "moon.png")
_LUMA = (0.299, 0.587, 0.114)


# ------------------------------------------------------------------------------------------- helpers
def _check_shape(sample_shape: object) -> tuple[int, ...]:
    if isinstance(sample_shape, int) and not isinstance(sample_shape, bool):
        sample_shape = (sample_shape,)
    if not isinstance(sample_shape, (tuple, list, torch.Size)) or not sample_shape or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in sample_shape):
        raise ConfigError(f"sample_shape must be a non-empty sequence of positive ints, got {sample_shape!r}")
    return tuple(int(d) for d in sample_shape)


def _image_shape(shape: tuple[int, ...], name: str) -> tuple[int, int, int]:
    if len(shape) != 3:
        raise ConfigError(f"ood set {name!r} makes images: sample_shape must be (C, H, W), got {shape}")
    return shape[0], shape[1], shape[2]


def fit_images(x: torch.Tensor, sample_shape: Sequence[int]) -> torch.Tensor:
    """Resize a batch ``(N, c, h, w)`` in [0, 1] to ``(N, C, H, W)``: channels converted, bilinear antialiased.

    ``c == 3 -> C == 1``: luminance (ITU-R 601 weights); ``c == 1 -> C``: the plane repeated;
    ``c == C``: unchanged; otherwise the luminance (or mean) plane repeated ``C`` times.
    """
    c_out, h, w = (int(d) for d in sample_shape)
    x = x.float()
    if x.shape[1] != c_out:
        if x.shape[1] == 3:
            gray = (x * torch.tensor(_LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True)
        else:
            gray = x.mean(1, keepdim=True)
        x = gray.expand(-1, c_out, -1, -1)
    if tuple(x.shape[2:]) != (h, w):
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    return x.clamp(0.0, 1.0).contiguous()


def _package_dir(package: str, relative: str, install: str, what: str) -> Path:
    """A folder inside an installed package, found without importing it; DatasetUnavailableError if absent."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    for base in (spec.submodule_search_locations or []) if spec is not None else []:
        folder = Path(base) / relative
        if folder.is_dir():
            return folder
    raise DatasetUnavailableError(f"ood set {what!r} needs {package}: run `{install}`")


def _digit_images() -> torch.Tensor:
    """All 1,797 UCI digits ``(N, 1, 8, 8)`` through fortify's ``digits`` dataset (both splits; cached there;
    DatasetUnavailableError naming scikit-learn when it is absent)."""
    from fortify.data import load

    return torch.cat([load("digits", "train")[0], load("digits", "test")[0]])


@functools.lru_cache(maxsize=16)
def _read_image(path: Path) -> np.ndarray:
    """Decode one bundled image to float32 ``(c, h, w)`` in [0, 1] (c = 1 or 3)."""
    from PIL import Image

    with Image.open(path) as src:
        im = src.convert("L") if src.mode in ("L", "I", "I;16", "1", "P", "LA") else src.convert("RGB")
        arr = np.asarray(im, dtype=np.float32) / 255.0
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1).copy()


def _skimage_images(files: Sequence[str], what: str) -> list[np.ndarray]:
    folder = _package_dir("skimage", "data", "pip install scikit-image", what)
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise DatasetUnavailableError(f"ood set {what!r}: scikit-image's bundled {missing} not found in {folder}; "
                                      "reinstall scikit-image")
    return [_read_image(folder / f) for f in files]


def _random_crops(images: list[np.ndarray], n: int, shape: tuple[int, int, int], rng: np.random.Generator,
                  scale: tuple[float, float]) -> torch.Tensor:
    """``n`` square crops, side ``U[scale] * min(h, w)`` at a uniform position of a uniformly chosen image."""
    out = torch.empty(n, *shape)
    which = rng.integers(0, len(images), size=n)
    for i, k in enumerate(which):
        img = images[int(k)]
        side = max(2, int(round(rng.uniform(*scale) * min(img.shape[1:]))))
        top = int(rng.integers(0, img.shape[1] - side + 1))
        left = int(rng.integers(0, img.shape[2] - side + 1))
        crop = torch.from_numpy(np.ascontiguousarray(img[:, top:top + side, left:left + side]))
        out[i] = fit_images(crop[None], shape)[0]
    return out


def _pick(total: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` indices into ``total`` items: without replacement when possible."""
    return rng.choice(total, size=n, replace=n > total)


# -------------------------------------------------------------------------------------- image sets
def _fashion(n: int, shape: tuple[int, ...], rng: np.random.Generator, model: "nn.Module | None") -> torch.Tensor:
    from fortify.data import load

    x, _ = load("fashion-mnist", "test")  # DatasetUnavailableError names dataset-fashion-mnist
    return fit_images(x[torch.from_numpy(_pick(len(x), n, rng))], _image_shape(shape, "fashion-mnist"))


def _digits(n: int, shape: tuple[int, ...], rng: np.random.Generator, model: "nn.Module | None") -> torch.Tensor:
    images = _digit_images()
    x = images[torch.from_numpy(_pick(len(images), n, rng))]
    return fit_images(x, _image_shape(shape, "digits-upsampled"))


def _textures(n: int, shape: tuple[int, ...], rng: np.random.Generator, model: "nn.Module | None") -> torch.Tensor:
    images = _skimage_images(TEXTURE_IMAGES, "textures")
    return _random_crops(images, n, _image_shape(shape, "textures"), rng, (0.06, 0.25))


def _natural(n: int, shape: tuple[int, ...], rng: np.random.Generator, model: "nn.Module | None") -> torch.Tensor:
    images = _skimage_images(NATURAL_IMAGES, "natural-crops")
    return _random_crops(images, n, _image_shape(shape, "natural-crops"), rng, (0.1, 0.5))


@functools.lru_cache(maxsize=256)
def _font(path: str, size: int) -> object:
    from PIL import ImageFont

    return ImageFont.truetype(path, size)


def _font_paths() -> list[str]:
    folder = _package_dir("matplotlib", "mpl-data/fonts/ttf", "pip install matplotlib", "font-letters")
    paths = [str(folder / f) for f in LETTER_FONTS if (folder / f).is_file()]
    if not paths:
        raise DatasetUnavailableError(f"ood set 'font-letters': none of matplotlib's bundled fonts found in {folder}")
    return paths


def render_letter(letter: str, font_path: str, rng: np.random.Generator, canvas: int = 64) -> np.ndarray:
    """One glyph, white on black like MNIST, ``(canvas, canvas)`` float32 in [0, 1].

    Size ``U[0.55, 0.95] * canvas`` px, stroke width 0 or 1 (bolder), glyph box centred then shifted by
    up to 10% of the canvas per axis.
    """
    from PIL import Image, ImageDraw

    size = int(rng.uniform(0.55, 0.95) * canvas)
    stroke = int(rng.integers(0, 2))
    font = _font(font_path, size)
    img = Image.new("L", (canvas, canvas), 0)
    draw = ImageDraw.Draw(img)
    left, top, right, bottom = draw.textbbox((0, 0), letter, font=font, stroke_width=stroke)  # type: ignore[arg-type]
    dx, dy = rng.uniform(-0.1, 0.1, size=2) * canvas
    xy = ((canvas - (right - left)) / 2 - left + dx, (canvas - (bottom - top)) / 2 - top + dy)
    draw.text(xy, letter, fill=255, font=font, stroke_width=stroke, stroke_fill=255)  # type: ignore[arg-type]
    return np.asarray(img, dtype=np.float32) / 255.0


def _letters(n: int, shape: tuple[int, ...], rng: np.random.Generator, model: "nn.Module | None") -> torch.Tensor:
    c, h, w = _image_shape(shape, "font-letters")
    paths = _font_paths()
    canvas = max(32, 2 * max(h, w))
    glyphs = np.stack([render_letter("ABCDEFGHIJ"[int(rng.integers(0, 10))], paths[int(rng.integers(0, len(paths)))],
                                     rng, canvas) for _ in range(n)])
    return fit_images(torch.from_numpy(glyphs[:, None]), (c, h, w))


# -------------------------------------------------------------------------------------- noise sets
def _torch_gen(rng: np.random.Generator) -> torch.Generator:
    return torch.Generator().manual_seed(int(rng.integers(0, 2**62)))


def _gaussian(n: int, shape: tuple[int, ...], rng: np.random.Generator, model: "nn.Module | None") -> torch.Tensor:
    return (0.5 + 0.25 * torch.randn(n, *shape, generator=_torch_gen(rng))).clamp(0.0, 1.0)


def _uniform(n: int, shape: tuple[int, ...], rng: np.random.Generator, model: "nn.Module | None") -> torch.Tensor:
    return torch.rand(n, *shape, generator=_torch_gen(rng))


def _constant(n: int, shape: tuple[int, ...], rng: np.random.Generator, model: "nn.Module | None") -> torch.Tensor:
    values = torch.rand(n, generator=_torch_gen(rng))
    return values.view(n, *([1] * len(shape))).expand(n, *shape).contiguous()


def _fooling(n: int, shape: tuple[int, ...], rng: np.random.Generator, model: "nn.Module | None") -> torch.Tensor:
    if model is None:
        raise ConfigError("ood set 'fooling' is made for one model: pass model= to load_ood")
    from fortify.audit.fooling import fooling_images
    from fortify.validation import probe_num_classes

    probe = torch.full((1, *shape), 0.5)
    k = probe_num_classes(model, probe)
    res = fooling_images(model, math.ceil(n / k), seed=int(rng.integers(0, 2**31)), sample_shape=shape)
    order = torch.from_numpy(rng.permutation(len(res.images))[:n])
    return res.images[order.to(res.images.device)].detach().to("cpu", torch.float32).clamp(0.0, 1.0)


for _name, _set in {
    "fashion-mnist": OODSet(_fashion, "Fashion-MNIST test images (clothing, 28x28 gray)",
                            "Debian dataset-fashion-mnist IDX files (Xiao et al. 2017)", "MIT"),
    "font-letters": OODSet(_letters, "letters A-J rendered from matplotlib's bundled fonts (notMNIST-like)",
                           "matplotlib mpl-data/fonts (DejaVu, STIX, Computer Modern)",
                           "Bitstream Vera (DejaVu), SIL OFL (STIX), Knuth/AMS (cm)"),
    "digits-upsampled": OODSet(_digits, "UCI 8x8 digits up-sampled bilinearly (covariate shift)",
                               "scikit-learn load_digits (UCI optical digits)", "CC BY 4.0"),
    "textures": OODSet(_textures, "crops of brick, grass and gravel textures",
                       "scikit-image bundled data", "CC0"),
    "natural-crops": OODSet(_natural, "crops of natural photographs (camera, astronaut, coins, cat, ...)",
                            "scikit-image bundled data", "CC0 / public domain"),
    "gaussian-noise": OODSet(_gaussian, "clip(N(0.5, 0.25^2)) i.i.d. per value", "generated", "-", any_shape=True),
    "uniform-noise": OODSet(_uniform, "U[0, 1] i.i.d. per value", "generated", "-", any_shape=True),
    "constant": OODSet(_constant, "one U[0, 1] value per sample, repeated", "generated", "-", any_shape=True),
    "fooling": OODSet(_fooling, "fooling images of the given model (Nguyen et al. 2015; needs model=)",
                      "fortify.audit.fooling.fooling_images", "-", any_shape=True),
}.items():
    OOD_SETS.register(_name, _set, help=_set.description)


def load_ood(name: str, n: int, sample_shape: Sequence[int], *, seed: int = 0,
             model: "nn.Module | None" = None) -> torch.Tensor:
    """``n`` samples of the OOD set ``name`` as a CPU float32 tensor ``(n, *sample_shape)`` in [0, 1].

    Deterministic: the same arguments give the same tensor (numpy PCG64 / torch generators seeded from
    ``seed``). ``model`` is used only by ``fooling`` (its fooling images, gradient method, confidence
    0.99). Raises UnknownNameError (unknown set), ConfigError (bad ``n``, shape or seed; a ``(C, H, W)``
    shape needed by an image set; ``fooling`` without ``model``), DatasetUnavailableError (a source
    package or data file is missing; the message names it).
    """
    spec = OOD_SETS.get(name)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"n must be a positive int, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be a non-negative int, got {seed!r}")
    shape = _check_shape(sample_shape)
    out = spec.make(n, shape, np.random.default_rng(seed), model)
    return out.to(torch.float32).reshape(n, *shape).contiguous()
