"""Grad-CAM (Selvaraju et al. 2017, "Grad-CAM: visual explanations from deep networks via
gradient-based localization").

At a convolutional layer with activations ``A (N, K, *spatial)``: channel weights ``a_k = mean over
spatial of d f_t / d A_k``, map ``relu(sum_k a_k A_k) (N, 1, *spatial)``, upsampled to the input's
spatial size (``bilinear`` for images, ``linear`` for signals, or ``nearest``) and repeated over the
input channels, so the result is shaped like ``x``. ``layer``: a module name
(``model.named_modules()``) or ``None`` for the convolution executed last (found by one forward
pass). Models without a convolution are an :class:`UnsupportedLayerError`. Without ``relu`` the
signed map is returned (Captum's ``relu_attributions=False``).

Shapes: ``x (N, C, H, W)`` or ``(N, C, L)`` -> same. Cost: N forward and backward passes (chunked).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fortify.errors import ConfigError, UnsupportedLayerError
from fortify.explain.attributions._layers import capture_outputs, last_conv, named_layer
from fortify.explain.base import ATTRIBUTIONS, DEFAULT_BATCH_SIZE, Attribution
from fortify.explain.ops import chunks, select
from fortify.validation import forward_checked

MODES = ("bilinear", "nearest")


def upsample(maps: torch.Tensor, x: torch.Tensor, mode: str) -> torch.Tensor:
    """``(N, 1, *spatial) -> x.shape``: interpolated to x's spatial size, repeated over channels."""
    if maps.dim() != x.dim():
        raise UnsupportedLayerError(f"the layer's output has shape {tuple(maps.shape[1:])}, which does not map onto "
                                    f"inputs of shape {tuple(x.shape[1:])}; name a convolution layer")
    if maps.dim() >= 3 and maps.shape[2:] != x.shape[2:]:
        m = mode if mode == "nearest" else {3: "linear", 4: "bilinear", 5: "trilinear"}[maps.dim()]
        maps = F.interpolate(maps, size=tuple(x.shape[2:]), mode=m)
    return maps.expand_as(x)


@ATTRIBUTIONS.register("gradcam", help="gradient-weighted class activation map of a conv layer (Selvaraju et al. 2017)")
class GradCAM(Attribution):
    """Grad-CAM at ``layer`` (default: the last convolution executed), upsampled to ``x``."""

    def __init__(self, layer: str | None = None, relu: bool = True, interpolate: str = "bilinear",
                 batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        super().__init__(batch_size)
        if layer is not None and (not isinstance(layer, str) or not layer):
            raise ConfigError(f"layer must be a module name or None, got {layer!r}")
        if interpolate not in MODES:
            raise ConfigError(f"interpolate {interpolate!r} unknown; allowed: {', '.join(MODES)}")
        self.layer, self.relu, self.interpolate = layer, bool(relu), interpolate

    def layer_maps(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The maps at the layer's resolution ``(N, 1, *spatial)`` (before upsampling)."""
        module = named_layer(model, self.layer) if self.layer is not None else last_conv(model, x)[1]
        maps = []
        for s in chunks(x.shape[0], self.batch_size):
            with torch.enable_grad(), capture_outputs([module]) as seen:
                xg = x[s].detach().requires_grad_(True)
                score = select(forward_checked(model, xg), target[s])
                if not seen[0] or not isinstance(seen[0][-1], torch.Tensor) or seen[0][-1].dim() < 3:
                    raise UnsupportedLayerError(f"layer {self.layer!r} gives no (N, K, *spatial) activation map "
                                                "on this input; Grad-CAM needs a convolutional layer")
                act = seen[0][-1]
                (grad,) = torch.autograd.grad(score.sum(), act)
            weights = grad.mean(dim=tuple(range(2, grad.dim())), keepdim=True)
            cam = (weights * act.detach()).sum(dim=1, keepdim=True)
            maps.append(cam.clamp_min(0) if self.relu else cam)
        return torch.cat(maps)

    def _run(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return upsample(self.layer_maps(model, x, target), x, self.interpolate).contiguous()
