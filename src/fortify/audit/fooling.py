"""Fooling images (Nguyen, Yosinski & Clune 2015, "Deep neural networks are easily fooled", CVPR).

Unrecognisable inputs that the model classifies with high confidence. :func:`fooling_images` makes
``n_per_class`` of them for every class at once, from random starting points (uniform noise, or random
CPPNs), by one of two searches:

* ``"gradient"``: gradient ascent on the target log-probability ``log softmax(f(x))_t`` in pixel space,
  signed steps of size ``step_size`` projected on [0, 1] (Nguyen et al.'s gradient-ascent baseline,
  Simonyan et al. 2014); a sample stops moving once it reaches ``confidence``. Cost: ``steps`` forward and
  backward passes over ``K * n_per_class`` inputs (in chunks of ``batch_size``).
* ``"evolution"``: a gradient-free evolutionary search (Nguyen et al. sec. 2.2) with a direct encoding
  (every individual is a pixel array, from uniform noise) or a CPPN encoding (the weights of a small
  compositional pattern-producing network drawn on the pixel grid: regular, symmetric patterns); per
  generation each parent makes ``population`` children by mutating each gene with probability
  ``mutation_rate`` (Gaussian step ``mutation_scale``; pixels clipped to [0, 1]) and is replaced by its
  best child if that child is fitter (elitist (1 + lambda) selection), fitness = target log-probability.
  Forward passes only: at most ``(1 + steps * population) * K * n_per_class`` evaluations.

``FoolingResult.rate_per_class[k]`` is the fraction of class ``k``'s images whose softmax probability of
``k`` reaches ``confidence``; ``rate`` the fraction over all classes. The model is run frozen
(``fortify.models.state.frozen``) and never mutated; all randomness comes from ``seed``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from fortify.errors import ConfigError, InputError
from fortify.models.state import device_of, frozen
from fortify.validation import expected_input_shape, model_dtype, probe_num_classes

__all__ = ["CPPN", "ENCODINGS", "FoolingOptions", "FoolingResult", "METHODS", "fooling_images"]

METHODS = ("gradient", "evolution")
ENCODINGS = ("direct", "cppn")


@dataclass(frozen=True)
class FoolingResult:
    """Fooling images and how confidently the model assigns them to their target class.

    ``images`` ``(K * n, *sample_shape)`` in [0, 1], ``labels`` ``(K * n,)`` the target classes (class-major:
    ``n`` images of class 0, then class 1, ...), ``confidences`` ``(K * n,)`` the softmax probability of the
    target, ``initial_confidences`` the same for the starting points, ``rate_per_class`` ``(K,)`` and ``rate``
    the fraction reaching ``confidence``; ``evaluations`` counts model inputs evaluated (forward passes).
    """

    images: torch.Tensor
    labels: torch.Tensor
    confidences: torch.Tensor
    initial_confidences: torch.Tensor
    rate_per_class: torch.Tensor
    rate: float
    method: str
    confidence: float
    steps: int
    evaluations: int
    #: the evolution's genome: "direct" or "cppn"; "pixels" for the gradient method
    encoding: str = "direct"


def _check(value: object, name: str, lo: float, hi: float, *, integer: bool = False) -> float:
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or not (lo <= float(value) <= hi):  # type: ignore[arg-type]
        kind = "an int" if integer else "a number"
        raise ConfigError(f"{name} must be {kind} in [{lo:g}, {hi:g}], got {value!r}")
    return float(value)  # type: ignore[arg-type]


def _sample_shape(model: nn.Module, sample_shape: Sequence[int] | None) -> tuple[int, ...]:
    if sample_shape is None:
        declared = expected_input_shape(model)
        if declared is None or any(d is None for d in declared):
            raise ConfigError("the model does not declare its input shape: pass sample_shape=(C, H, W)")
        sample_shape = [int(d) for d in declared if d is not None]
    shape = tuple(sample_shape)
    if not shape or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape):
        raise ConfigError(f"sample_shape must be positive ints, got {sample_shape!r}")
    return shape


def _target_logprob(model: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(model(x), dim=1).gather(1, t.view(-1, 1)).squeeze(1)


def _gradient(model: nn.Module, x: torch.Tensor, t: torch.Tensor, log_conf: float, steps: int,
              step_size: float) -> tuple[torch.Tensor, int]:
    """Signed gradient ascent on ``log p_t(x)`` over one chunk; frozen samples stop at the confidence."""
    x = x.clone()
    evaluations = 0
    for _ in range(steps):
        xg = x.detach().requires_grad_(True)
        with torch.enable_grad():
            logp = _target_logprob(model, xg, t)
            (grad,) = torch.autograd.grad(logp.sum(), xg)
        evaluations += len(x)
        active = (logp.detach() < log_conf).view(-1, *([1] * (x.dim() - 1)))
        if not bool(active.any()):
            break
        x = torch.where(active, (x + step_size * grad.sign()).clamp(0.0, 1.0), x)
    return x.detach(), evaluations


#: a decoder from genomes ``(K, G)`` to images ``(K, *sample_shape)`` in [0, 1]
Decode = Callable[[torch.Tensor], torch.Tensor]


def _evolution(model: nn.Module, genomes: torch.Tensor, decode: Decode, t: torch.Tensor, log_conf: float,
               steps: int, population: int, mutation: tuple[float, float, bool],
               gen: torch.Generator) -> tuple[torch.Tensor, int]:
    """Elitist (1 + lambda) evolution of one chunk of genomes ``(m, G)``, forward passes only; ``mutation`` =
    (rate, scale, clip genes to [0, 1])."""
    m, size = genomes.shape
    rate, scale, clamp = mutation
    with torch.no_grad():
        fit = _target_logprob(model, decode(genomes), t)
    evaluations = m
    for _ in range(steps):
        if bool((fit >= log_conf).all()):
            break
        kids = genomes.unsqueeze(1).expand(m, population, size)
        mutated = kids + torch.randn(kids.shape, generator=gen).to(kids.device, kids.dtype) * scale
        hit = (torch.rand(kids.shape, generator=gen) < rate).to(kids.device)
        kids = torch.where(hit, mutated.clamp(0.0, 1.0) if clamp else mutated, kids).reshape(m * population, size)
        with torch.no_grad():
            kid_fit = _target_logprob(model, decode(kids), t.repeat_interleave(population)).view(m, population)
        evaluations += m * population
        best_fit, best = kid_fit.max(1)
        better = best_fit > fit
        chosen = kids.view(m, population, size)[torch.arange(m, device=kids.device), best]
        genomes = torch.where(better.view(m, 1), chosen, genomes)
        fit = torch.where(better, best_fit, fit)
    return genomes, evaluations


class CPPN:
    """A batch of compositional pattern-producing networks (Stanley 2007) with one fixed topology, the
    genome being all weights: ``(x, y, r, 1) -> hidden -> hidden -> C`` with sine, Gaussian and tanh units
    (a third of each) and a sigmoid output, drawn on an ``H x W`` grid in [-1, 1]^2.
    Images of regular, symmetric patterns, as Nguyen et al.'s CPPN encoding. ``decode`` costs
    ``K * H * W * hidden^2`` multiply-adds for ``K`` genomes."""

    def __init__(self, shape: tuple[int, ...], hidden: int = 8) -> None:
        if len(shape) != 3:
            raise ConfigError(f"the CPPN encoding draws images: sample_shape must be (C, H, W), got {shape}")
        self.c, self.h, self.w = shape
        self.hidden = hidden
        rows, cols = torch.meshgrid(torch.linspace(-1, 1, self.h), torch.linspace(-1, 1, self.w), indexing="ij")
        self.coords = torch.stack([cols, rows, (rows ** 2 + cols ** 2).sqrt(), torch.ones_like(rows)], -1).view(-1, 4)
        self.sizes = (4 * hidden, hidden * hidden, hidden, hidden * self.c, self.c)
        self.genome_size = sum(self.sizes)

    def _act(self, z: torch.Tensor) -> torch.Tensor:
        """Sine on the first third of the units, Gaussian on the second, tanh on the rest (each unit once)."""
        a, b = (z.shape[-1] + 2) // 3, 2 * ((z.shape[-1] + 2) // 3)
        return torch.cat([torch.sin(z[..., :a]), torch.exp(-z[..., a:b].square()), torch.tanh(z[..., b:])], -1)

    def decode(self, genomes: torch.Tensor) -> torch.Tensor:
        """Genomes ``(K, G)`` -> images ``(K, C, H, W)`` in (0, 1)."""
        k, hd = len(genomes), self.hidden
        w1, w2, b2, w3, b3 = torch.split(genomes, list(self.sizes), dim=1)
        coords = self.coords.to(genomes.device, genomes.dtype)
        a = self._act(torch.matmul(coords, w1.view(k, 4, hd)))
        a = self._act(torch.matmul(a, w2.view(k, hd, hd)) + b2.view(k, 1, hd))
        out = torch.sigmoid(torch.matmul(a, w3.view(k, hd, self.c)) + b3.view(k, 1, self.c))
        return out.transpose(1, 2).reshape(k, self.c, self.h, self.w)


@dataclass(frozen=True)
class FoolingOptions:
    """Settings of the two searches beyond the step budget.

    ``step_size``: the gradient method's signed step. ``population``: children per individual and generation.
    ``encoding`` of the evolution: "direct" (pixels, from uniform noise; ``mutation_rate`` 0.02 and
    ``mutation_scale`` 0.6 by default -- few pixels, large steps -- fooled 0.8 of 30 targets of a PGD-AT
    small-cnn in 200 generations where 0.1 and 0.3 fooled 0.47) or "cppn" (the weights of a :class:`CPPN`,
    from N(0, 1.5^2); defaults 0.1 and 0.5). None = the encoding's default.
    """

    step_size: float = 0.01
    population: int = 16
    encoding: str = "direct"
    mutation_rate: float | None = None
    mutation_scale: float | None = None


def fooling_images(model: nn.Module, n_per_class: int, *, method: str = "gradient", confidence: float = 0.99,
                   steps: int | None = None, seed: int = 0, batch_size: int = 256,
                   sample_shape: Sequence[int] | None = None, options: FoolingOptions | None = None) -> FoolingResult:
    """``n_per_class`` fooling images for each of the model's ``K`` classes.

    ``method`` "gradient" (from uniform noise; default ``steps`` 100) or "evolution" (default ``steps`` 200
    generations); ``options`` (:class:`FoolingOptions`) holds the step size, population, encoding and
    mutation settings. ``sample_shape`` defaults to the shape the model declares. ``batch_size`` bounds the
    individuals per chunk (evolution evaluates ``batch_size * population`` inputs at once). Returns a
    :class:`FoolingResult`. Raises ConfigError (bad method, encoding or numbers, undeclared input shape),
    InputError (the model rejects the shape).
    """
    if method not in METHODS:
        raise ConfigError(f"unknown fooling method {method!r}; allowed: {', '.join(METHODS)}")
    opt = FoolingOptions() if options is None else options
    if not isinstance(opt, FoolingOptions):
        raise ConfigError(f"options must be a FoolingOptions, got {type(opt).__name__}")
    encoding, mutation_rate, mutation_scale, step_size = opt.encoding, opt.mutation_rate, opt.mutation_scale, \
        opt.step_size
    if encoding not in ENCODINGS:
        raise ConfigError(f"unknown evolution encoding {encoding!r}; allowed: {', '.join(ENCODINGS)}")
    n = int(_check(n_per_class, "n_per_class", 1, 1e6, integer=True))
    conf = _check(confidence, "confidence", 1e-6, 1 - 1e-9)
    default_steps = 100 if method == "gradient" else 200
    n_steps = int(_check(default_steps if steps is None else steps, "steps", 0, 1e6, integer=True))
    chunk = int(_check(batch_size, "batch_size", 1, 1e7, integer=True))
    lam = int(_check(opt.population, "population", 1, 1e5, integer=True))
    _check(seed, "seed", 0, 2**63 - 1, integer=True)
    _check(step_size, "step_size", 0, 1)
    cppn = method == "evolution" and encoding == "cppn"
    rate = _check((0.1 if cppn else 0.02) if mutation_rate is None else mutation_rate, "mutation_rate", 0, 1)
    scale = _check((0.5 if cppn else 0.6) if mutation_scale is None else mutation_scale, "mutation_scale", 0, 1e3)
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    shape = _sample_shape(model, sample_shape)
    device = device_of(model) or torch.device("cpu")
    dtype = model_dtype(model) or torch.float32
    gen = torch.Generator().manual_seed(int(seed))
    classes = probe_num_classes(model, torch.full((1, *shape), 0.5, dtype=dtype, device=device))
    labels = torch.arange(classes).repeat_interleave(n).to(device)
    net = CPPN(shape) if cppn else None
    if net is not None:
        genomes = (1.5 * torch.randn(len(labels), net.genome_size, generator=gen)).to(device, dtype)
        decode: Decode = net.decode
    else:
        genomes = torch.rand(len(labels), *shape, generator=gen).to(device, dtype).flatten(1)
        decode = lambda g: g.view(-1, *shape)  # noqa: E731
    log_conf = float(torch.log(torch.tensor(conf, dtype=torch.float64)))
    images, starts, evaluations = [], [], 0
    with frozen(model):
        for i in range(0, len(labels), chunk):
            gb, tb = genomes[i:i + chunk], labels[i:i + chunk]
            with torch.no_grad():
                starts.append(decode(gb))
            if method == "gradient":
                out, used = _gradient(model, starts[-1], tb, log_conf, n_steps, step_size)
            else:
                best, used = _evolution(model, gb, decode, tb, log_conf, n_steps, lam, (rate, scale, not cppn), gen)
                with torch.no_grad():
                    out = decode(best)
            images.append(out)
            evaluations += used
        x, start = torch.cat(images), torch.cat(starts)
        with torch.no_grad():
            conf_end = torch.cat([_target_logprob(model, x[i:i + chunk], labels[i:i + chunk]).exp()
                                  for i in range(0, len(x), chunk)])
            conf_start = torch.cat([_target_logprob(model, start[i:i + chunk], labels[i:i + chunk]).exp()
                                    for i in range(0, len(x), chunk)])
    reached = (conf_end >= conf).float().view(classes, n)
    return FoolingResult(images=x, labels=labels, confidences=conf_end, initial_confidences=conf_start,
                         rate_per_class=reached.mean(1).cpu(), rate=float(reached.mean()), method=method,
                         confidence=conf, steps=n_steps, evaluations=evaluations,
                         encoding=encoding if method == "evolution" else "pixels")
