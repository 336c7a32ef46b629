"""DeepLIFT with the Rescale rule (Shrikumar, Greenside & Kundaje 2017, "Learning important features
through propagating activation differences") for ReLU networks.

The input ``x`` and the reference ``x'`` run through the model as one batch ``[x; x']``; every
``nn.ReLU`` module's backward pass is replaced by the multiplier
``(relu(z) - relu(z')) / (z - z')`` (its gradient where ``|z - z'| < 1e-7``), affine layers
(Linear, Conv, eval-mode BatchNorm, pooling by averaging, residual additions) keep their gradient,
and the attribution is ``(x - x') * m``. On such nets the *summation-to-delta* property holds to
float rounding: ``sum_i DL_i = f_t(x) - f_t(x')`` (Captum's ``DeepLift`` with its default rescale
rule gives the same numbers). Max-pooling passes the gradient of the pool on ``x`` (the
"winner" approximation; Captum's max-pool rule differs), so the property is approximate there.
Other nonlinear modules (Sigmoid, Tanh, GELU, ...) are an :class:`UnsupportedLayerError`; a ReLU
applied functionally (``F.relu``) is not seen and keeps its gradient.

Shapes: ``x (N, *sample) -> (N, *sample)``. Cost: 2N forward and backward rows (chunked).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fortify.errors import UnsupportedLayerError
from fortify.explain.attributions._baseline import check_baseline, expand_baseline
from fortify.explain.base import ATTRIBUTIONS, DEFAULT_BATCH_SIZE, Attribution
from fortify.explain.ops import chunks, select
from fortify.validation import forward_checked

#: nonlinear modules the rescale rule here does not handle
UNSUPPORTED = (nn.Sigmoid, nn.Tanh, nn.GELU, nn.ELU, nn.LeakyReLU, nn.SiLU, nn.Softplus, nn.Softmax, nn.PReLU,
               nn.SELU, nn.Hardtanh, nn.ReLU6, nn.Mish, nn.LogSoftmax)


class _RescaleReLU(torch.autograd.Function):
    """ReLU on ``[z; z']`` whose backward multiplies the first half by the rescale multiplier."""

    @staticmethod
    def forward(ctx: Any, z: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(z)
        return z.clamp_min(0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (z,) = ctx.saved_tensors
        zx, zr = z.chunk(2)
        dz = zx - zr
        slope = (zx.clamp_min(0) - zr.clamp_min(0)) / torch.where(dz.abs() < 1e-7, torch.ones_like(dz), dz)
        mult = torch.where(dz.abs() < 1e-7, (zx > 0).to(z.dtype), slope)
        return grad * torch.cat([mult, (zr > 0).to(z.dtype)])


def _check_layers(model: nn.Module) -> list[nn.Module]:
    bad = [f"{n} ({type(m).__name__})" for n, m in model.named_modules() if isinstance(m, UNSUPPORTED)]
    if bad:
        raise UnsupportedLayerError(f"deeplift (rescale rule) handles ReLU networks; unsupported: {', '.join(bad[:5])}")
    return [m for m in model.modules() if isinstance(m, nn.ReLU)]


@ATTRIBUTIONS.register("deeplift", help="DeepLIFT rescale rule for ReLU networks (Shrikumar et al. 2017)")
class DeepLift(Attribution):
    """DeepLIFT-Rescale against ``baseline`` (a number or a tensor broadcasting to ``x``; default 0)."""

    def __init__(self, baseline: float | torch.Tensor = 0.0, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        super().__init__(batch_size)
        self.baseline = check_baseline(baseline)

    def _run(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        relus = _check_layers(model)
        base = expand_baseline(self.baseline, x)
        handles = [m.register_forward_hook(lambda mod, i, o: _RescaleReLU.apply(i[0])) for m in relus]
        out = []
        try:
            for s in chunks(x.shape[0], max(1, self.batch_size // 2)):
                with torch.enable_grad():
                    pair = torch.cat([x[s], base[s]]).requires_grad_(True)
                    t = torch.cat([target[s], target[s]])
                    score = select(forward_checked(model, pair), t)
                    (g,) = torch.autograd.grad(score.sum(), pair)
                out.append((x[s] - base[s]) * g.chunk(2)[0])
        finally:
            for h in handles:
                h.remove()
        return torch.cat(out)
