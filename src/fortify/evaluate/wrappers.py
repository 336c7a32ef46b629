"""Evaluation wrappers that undo gradient masking so gradient attacks see a useful signal.

They wrap a model *for the attack only*; the cascade always scores adversarial examples on the
unwrapped model (or its EoT prediction, for randomized models), so a wrapper can make an attack
stronger but never makes a point look broken when it is not.

* :class:`BPDA` -- Backward Pass Differentiable Approximation (Athalye, Carlini & Wagner 2018,
  "Obfuscated gradients give a false sense of security"): the forward pass is exact; the backward
  pass of selected non-differentiable, roughly identity-like input transforms (quantization,
  JPEG-like filters, thresholding) is replaced by the identity (straight-through estimator).
  :func:`find_nondifferentiable` picks those submodules automatically.
* :class:`EoT` -- Expectation over Transformation (Athalye et al. 2018, "Synthesizing robust
  adversarial examples"): the output is ``log(mean_k softmax(f_k(x)))`` over ``samples`` random
  forward passes, whose gradient is the Monte-Carlo gradient of the expected prediction.
* :class:`SurrogateGradient` -- BPDA with a learned differentiable approximation (Athalye et al.
  2018, sec. 4.1): forward values of the model, backward pass through a surrogate trained on the
  same task. Used when gradients are dead and no non-differentiable submodule can be isolated.
* :class:`LogitRescale` -- outputs that are probabilities (softmax already applied) are mapped
  back to logits with ``log``; saturated logits (huge temperature) are divided by a fixed scale.
  Both are strictly increasing per row, so ``argmax`` is unchanged.

Shapes: inputs ``(N, ...)``, outputs ``(N, C)``.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import nn


@contextmanager
def straight_through(modules: Sequence[nn.Module]) -> Iterator[None]:
    """While active, each module's output ``t(x)`` becomes ``x + (t(x) - x).detach()``:
    forward value ``t(x)``, backward identity. Hooks are removed on exit (the model is untouched)."""

    def hook(_m: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        inp = inputs[0]
        if not isinstance(output, torch.Tensor) or output.shape != inp.shape:
            return output
        return inp + (output - inp).detach()

    handles = [m.register_forward_hook(hook) for m in modules]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


class BPDA(nn.Module):
    """Straight-through gradients for the given submodules of ``model`` (Athalye et al. 2018)."""

    def __init__(self, model: nn.Module, transforms: Sequence[nn.Module]) -> None:
        super().__init__()
        self.model = model
        self._transforms = list(transforms)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with straight_through(self._transforms):
            return self.model(x)


class EoT(nn.Module):
    """Expectation over randomness: ``log(mean_k softmax(model(x)))`` over ``samples`` passes."""

    def __init__(self, model: nn.Module, samples: int = 16) -> None:
        super().__init__()
        self.model = model
        self.samples = int(samples)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.stack([torch.softmax(self.model(x), dim=1) for _ in range(self.samples)]).mean(0)
        return torch.log(probs.clamp_min(1e-30))


class SurrogateGradient(nn.Module):
    """``out = model(x).detach() + surrogate(x) - surrogate(x).detach()``: the model's values with the
    surrogate's input gradient. ``model`` and ``surrogate`` map ``(N, ...)`` to ``(N, C)``."""

    def __init__(self, model: nn.Module, surrogate: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.surrogate = surrogate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            value = self.model(x)
        s = self.surrogate(x)
        return value + (s - s.detach())


class LogitRescale(nn.Module):
    """Map outputs to well-scaled logits: ``mode="log"`` for probability-like outputs
    (``log(out / sum(out))``), ``mode="scale"`` divides saturated logits by ``scale``."""

    def __init__(self, model: nn.Module, mode: str, scale: float = 1.0) -> None:
        super().__init__()
        self.model = model
        self.mode = mode
        self.scale = float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        if self.mode == "log":
            p = out.clamp_min(0)
            p = p / p.sum(dim=1, keepdim=True).clamp_min(1e-30)
            return torch.log(p.clamp_min(1e-30))
        return out / self.scale


def _vjp_dead(inp: torch.Tensor, out: torch.Tensor, gen: torch.Generator) -> bool:
    """True if the output does not depend differentiably on the input (no graph, zero or NaN VJP)."""
    if not out.requires_grad:
        return True
    cot = torch.randn(out.shape, generator=gen, dtype=out.dtype).to(out.device)
    (g,) = torch.autograd.grad(out, inp, cot, allow_unused=True, retain_graph=True)
    return g is None or not bool(torch.isfinite(g).all()) or float(g.abs().max()) == 0.0


def find_nondifferentiable(model: nn.Module, x: torch.Tensor, *, max_rel_change: float = 0.5) -> list[nn.Module]:
    """Submodules that map a tensor to one of the same shape, change it by less than
    ``max_rel_change`` (relative L2), and have no usable gradient (no graph, zero or NaN VJP).
    The innermost such modules are returned (a parent is dropped if a child qualifies).
    ``x``: a batch ``(N, ...)``; the model is not modified (hooks are removed)."""
    found: list[nn.Module] = []
    gen = torch.Generator().manual_seed(0)
    busy = [False]

    def hook(m: nn.Module, inputs: tuple, output: object) -> None:
        if busy[0] or any(f is m for f in found):
            return
        if not inputs or not isinstance(inputs[0], torch.Tensor) or not isinstance(output, torch.Tensor):
            return
        inp = inputs[0]
        if output.shape != inp.shape or not inp.is_floating_point():
            return
        rel = float((output.detach() - inp.detach()).norm() / inp.detach().norm().clamp_min(1e-12))
        if rel > max_rel_change:
            return
        with torch.enable_grad():
            leaf = inp.detach().requires_grad_(True)
            busy[0] = True
            try:
                out2 = m(leaf)
            except Exception:  # a module that cannot be re-run alone is not a candidate
                return
            finally:
                busy[0] = False
            if isinstance(out2, torch.Tensor) and out2.shape == leaf.shape and _vjp_dead(leaf, out2, gen):
                found.append(m)

    mods = [m for m in model.modules() if m is not model]
    handles = [m.register_forward_hook(hook) for m in mods]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    found_ids = {id(m) for m in found}
    inner = [m for m in found if not any(id(c) in found_ids for c in m.modules() if c is not m)]
    return inner
