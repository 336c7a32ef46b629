"""FullGrad (Srinivas & Fleuret 2019, "Full-gradient representation for neural network visualization").

For a ReLU network with biases (piecewise linear), the target logit decomposes exactly:
``f_t(x) = sum_i x_i g_i + sum_layers sum_units (d f_t / d z) * b``, the input-gradient term plus
the *bias-gradients* of every layer with a bias (Linear and Conv biases, the implicit bias
``beta - gamma mu / sqrt(var + eps)`` of an eval-mode BatchNorm and ``-mean / std`` of a
``Normalized`` input wrapper). :meth:`FullGrad.decompose` returns those terms (the completeness
property holds to float rounding; max-pooling, average pooling and residual additions keep it).

The saliency map (the paper's eq. 5): ``psi(x * g)`` summed over channels, plus, for every
convolutional bias-gradient map, ``psi(map)`` upsampled (bilinear, ``align_corners=True``) to the
input's spatial size and summed over channels; ``psi`` is ``abs`` followed by per-example min-max
rescaling (the authors' code). Images ``(N, C, H, W)`` get a ``(N, 1, H, W)`` map repeated over
``C``; tables ``(N, F)`` get ``psi(x * g)`` per feature (fully connected bias-gradients have no
position in the input). Cost: N forward and backward passes (chunked); the hooks keep every biased
layer's output of one chunk.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fortify.errors import UnsupportedLayerError
from fortify.explain.attributions._layers import CONV
from fortify.explain.base import ATTRIBUTIONS, Attribution, check_inputs, resolve_target
from fortify.explain.ops import chunks, select
from fortify.models.normalized import Normalized
from fortify.models.state import frozen
from fortify.validation import forward_checked

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass
class Decomposition:
    """``input_term (N, *sample) = x * d f_t / dx``; ``bias_terms[l] (N, *layer_shape)`` per biased
    layer (``d f_t / d z_l * b_l``); ``conv[l]`` whether layer ``l`` is convolutional; ``output (N,)``
    the target logit. ``total()`` sums everything per row and equals ``output`` on ReLU nets."""

    input_term: torch.Tensor
    bias_terms: list[torch.Tensor]
    conv: list[bool]
    output: torch.Tensor

    def total(self) -> torch.Tensor:
        n = self.output.shape[0]
        parts = [self.input_term.reshape(n, -1).sum(1)] + [b.reshape(n, -1).sum(1) for b in self.bias_terms]
        return torch.stack(parts).sum(0)


def _implicit_bias(module: nn.Module) -> torch.Tensor | None:
    """The bias a module adds per output channel, ``None`` when it adds none."""
    if isinstance(module, (nn.Linear,) + CONV):
        return None if module.bias is None else module.bias.detach()
    if isinstance(module, _BN):
        if module.running_mean is None or module.running_var is None:
            raise UnsupportedLayerError("FullGrad needs BatchNorm layers with running statistics "
                                        f"(track_running_stats=True); {type(module).__name__} has none")
        scale = (module.running_var + module.eps).rsqrt()
        gamma = module.weight.detach() if module.weight is not None else torch.ones_like(scale)
        beta = module.bias.detach() if module.bias is not None else torch.zeros_like(scale)
        return beta - gamma * module.running_mean * scale
    return None


def _biased_layers(model: nn.Module) -> list[tuple[nn.Module, torch.Tensor, bool]]:
    out = []
    for m in model.modules():
        b = _implicit_bias(m)
        if b is not None:
            out.append((m, b, isinstance(m, CONV + _BN)))
    return out


def _decompose_chunk(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> Decomposition:
    layers = _biased_layers(model)
    seen: list[torch.Tensor] = []
    norm_in: list[tuple[torch.Tensor, torch.Tensor]] = []
    handles = [m.register_forward_hook(lambda mod, i, o: seen.append(o)) for m, _, _ in layers]
    for m in model.modules():  # Normalized: z = x / std - mean / std enters the inner model
        if isinstance(m, Normalized):
            handles.append(m.inner.register_forward_pre_hook(
                lambda mod, i, w=m: norm_in.append((i[0], -(w.mean / w.std).detach()))))
    try:
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            score = select(forward_checked(model, xg), target)
            if len(seen) != len(layers):
                raise UnsupportedLayerError("FullGrad needs every biased layer to run exactly once per forward pass")
            zs = seen + [z for z, _ in norm_in]
            grads = torch.autograd.grad(score.sum(), [xg] + zs, allow_unused=True)
    finally:
        for h in handles:
            h.remove()
    biases = [b for _, b, _ in layers] + [b for _, b in norm_in]
    conv = [c for _, _, c in layers] + [True for _ in norm_in]
    terms = []
    for z, g, b in zip(zs, grads[1:], biases):
        g = torch.zeros_like(z) if g is None else g
        terms.append((g * b.reshape((1, -1) + (1,) * (z.dim() - 2))).detach())
    return Decomposition(x * grads[0].detach(), terms, conv, score.detach())


def _psi(t: torch.Tensor) -> torch.Tensor:
    """``abs`` then per-example min-max rescaling to [0, 1] (the authors' ``_postProcess``)."""
    a = t.abs()
    flat = a.reshape(a.shape[0], -1)
    flat = flat - flat.min(dim=1, keepdim=True).values
    flat = flat / (flat.max(dim=1, keepdim=True).values + 1e-6)
    return flat.reshape(a.shape)


@ATTRIBUTIONS.register("fullgrad", help="input-gradient plus every layer's bias-gradients (Srinivas & Fleuret 2019)")
class FullGrad(Attribution):
    """FullGrad saliency; :meth:`decompose` gives the exact full-gradient decomposition."""

    def decompose(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor | int | None = None) -> Decomposition:
        """The full-gradient terms (validated and frozen like ``__call__``); ``total() == output``."""
        x = check_inputs(model, x)
        with frozen(model):
            t, _ = resolve_target(model, x, target, self.batch_size)
            return self._decompose(model, x, t)

    def _decompose(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> Decomposition:
        parts = [_decompose_chunk(model, x[s], target[s]) for s in chunks(x.shape[0], self.batch_size)]
        first = parts[0]
        return Decomposition(torch.cat([p.input_term for p in parts]),
                             [torch.cat([p.bias_terms[k] for p in parts]) for k in range(len(first.bias_terms))],
                             first.conv, torch.cat([p.output for p in parts]))

    def _run(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        d = self._decompose(model, x, target)
        if x.dim() < 3:  # tables / flat inputs: per-feature input-gradient term
            return _psi(d.input_term)
        cam = _psi(d.input_term).sum(dim=1, keepdim=True)
        for term, is_conv in zip(d.bias_terms, d.conv):
            if not is_conv or term.dim() != x.dim():
                continue
            mapped = _psi(term)
            if mapped.shape[2:] != x.shape[2:]:
                mode = {3: "linear", 4: "bilinear", 5: "trilinear"}[x.dim()]
                mapped = F.interpolate(mapped, size=tuple(x.shape[2:]), mode=mode, align_corners=True)
            cam = cam + mapped.sum(dim=1, keepdim=True)
        return cam.expand_as(x).contiguous()
