"""Quantization-aware (adversarial) fine-tuning, then a real int8 export.

Fake quantization (Jacob et al. 2018, "Quantization and training of neural networks for efficient
integer-arithmetic-only inference"): during training every Conv2d/Linear sees

* weights rounded to symmetric per-output-channel int8, ``scale_u = max|W_u| / 127``;
* inputs rounded to asymmetric uint8 with a per-layer range tracked by an exponential moving
  average of the batch min/max (the ranges ONNX Runtime's static calibration will find),

with straight-through gradients (``torch.fake_quantize_*``). The task can be adversarial
(``pgd_at``, ``trades``: the attack runs against the fake-quantized network), which is the
quantization-aware adversarial fine-tuning of Lin et al. 2019 ("Defensive quantization"). The
fine-tuned float weights are then quantized for real with :func:`quantize_onnx` (static, calibrated).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn

from fortify.compress.base import TRANSFORMS, Data, Transform, TransformResult, check_data, check_int, weight_layers
from fortify.compress.quantize.ptq import check_keep_float, check_scheme, quantize_onnx
from fortify.compress.quantize.schemes import resolve_scheme, scheme_types
from fortify.compress.reparam import ReparamNet
from fortify.models.state import train_mode
from fortify.train import Trainer, TrainConfig
from fortify.train.tasks import create as create_task


class FakeQuant:
    """Weight and activation fake-quantizers for :class:`ReparamNet` (state: per-layer EMA ranges).

    ``float_layers``: Sequential indices of layers kept in float32 (neither their weights nor their
    inputs are fake-quantized), matching ``keep_float`` of the int8 export.
    """

    def __init__(self, momentum: float = 0.1, float_layers: tuple[int, ...] = (), weight_qmax: int = 127) -> None:
        """``weight_qmax``: 127 for 8-bit weights, 64 for ONNX Runtime's reduced (7-bit) range."""
        self.momentum, self.weight_qmax = momentum, int(weight_qmax)
        self.float_layers = frozenset(float_layers)
        self.ranges: dict[int, tuple[float, float]] = {}
        self.training = True

    def weight(self, i: int, w: torch.Tensor) -> torch.Tensor:
        """Symmetric per-channel int8 fake quantization of ``w (U, ...)``."""
        if i in self.float_layers:
            return w
        q = self.weight_qmax
        scale = (w.detach().reshape(w.shape[0], -1).abs().amax(1) / float(q)).clamp_min(1e-8)
        zero = torch.zeros(w.shape[0], dtype=torch.int32, device=w.device)
        return torch.fake_quantize_per_channel_affine(w, scale.float(), zero, 0, -q - 1 if q == 127 else -q, q)

    def act(self, i: int, x: torch.Tensor, update: bool | None = None) -> torch.Tensor:
        """Asymmetric uint8 fake quantization of a layer input with an EMA min/max range.

        ``update``: whether the EMA range moves (default: :attr:`training`).
        """
        if i in self.float_layers:
            return x
        lo, hi = float(x.detach().min()), float(x.detach().max())
        if i not in self.ranges:
            self.ranges[i] = (lo, hi)
        elif self.training if update is None else update:
            a, b = self.ranges[i]
            self.ranges[i] = (a + self.momentum * (lo - a), b + self.momentum * (hi - b))
        a, b = self.ranges[i]
        a, b = min(a, 0.0), max(b, 0.0)
        scale = max((b - a) / 255.0, 1e-8)
        zero = int(round(-a / scale))
        return torch.fake_quantize_per_tensor_affine(x, scale, zero, 0, 255)


class QATNet(ReparamNet):
    """A :class:`ReparamNet` with :class:`FakeQuant`; observers update only while the net's own
    ``training`` flag is set (read at every forward, so :mod:`fortify.models.state`'s context
    managers, which set the flags directly, switch the observers too)."""

    def __init__(self, model: nn.Module, keep_float: tuple[int, ...] = (), weight_qmax: int = 127) -> None:
        """Wrap ``model``; ``keep_float``: weight-layer positions (0 = first Conv2d/Linear) left in float;
        ``weight_qmax``: 127 (8-bit weights) or 64 (the reduced range of scheme ``u8s8-reduced``)."""
        layers = [i for i, _ in weight_layers(model)]
        self.fq = FakeQuant(float_layers=tuple(layers[k] for k in check_keep_float(keep_float, len(layers))),
                            weight_qmax=weight_qmax)
        super().__init__(model, self.fq.weight, lambda i, x: self.fq.act(i, x, update=self.training))


@TRANSFORMS.register("qat_int8", help="quantization-aware (adversarial) fine-tuning, then real int8 export")
class QuantAwareInt8(Transform):
    """Args: ``epochs`` of fake-quant fine-tuning, ``task``/``task_args`` (``pgd_at`` for adversarial
    QAT), ``config`` (TrainConfig fields), ``calibration_size``, ``threads``, ``keep_float`` (weight-layer
    positions trained and exported in float32, e.g. ``[0]`` for the first conv), ``scheme`` (int8 scheme of the
    export, :mod:`~fortify.compress.quantize.schemes`)."""

    needs_data = True

    def __init__(self, epochs: int = 1, task: str = "standard", task_args: Mapping[str, Any] | None = None,
                 config: Mapping[str, Any] | None = None, calibration_size: int = 256, threads: int = 2,
                 keep_float: Sequence[int] = (), scheme: str = "auto") -> None:
        """Validate and store the hyper-parameters (ConfigError naming the bad one)."""
        self.epochs = check_int(epochs, "epochs")
        self.scheme = check_scheme(scheme)
        self.keep_float = check_keep_float(keep_float)
        self.task, self.task_args, self.config = task, dict(task_args or {}), dict(config or {})
        self.calibration_size, self.threads = check_int(calibration_size, "calibration_size"), check_int(threads, "threads")

    def _run(self, model: nn.Module, example_inputs: torch.Tensor, data: Data | None) -> TransformResult:
        """Run the algorithm on ``model`` (the private deep copy) and return its result and report."""
        x, y = check_data(data)
        scheme = resolve_scheme(self.scheme)  # train against the weight grid the export will use
        net = QATNet(model, self.keep_float, weight_qmax=64 if scheme_types(scheme)[1] else 127)
        cfg = TrainConfig.from_dict({"lr": 0.005, "weight_decay": 0.0, "batch_size": 128, **self.config,
                                     "epochs": self.epochs})
        with train_mode(model):  # the copy trains as the Trainer would train it (the wrapper's root is new)
            hist = Trainer(net, create_task(self.task, **self.task_args), cfg, progress=False).fit((x, y))
        q = quantize_onnx(model, example_inputs, mode="static", calibration=x[: self.calibration_size],
                          threads=self.threads, keep_float=self.keep_float, scheme=scheme)
        return TransformResult(q, {"bytes_onnx": len(q.blob), "mode": "qat-static", "scheme": q.int8_scheme,
                                   "keep_float": list(self.keep_float), "qat_train_acc": hist[-1].get("train_acc")},
                               extras={"float_twin": model})


__all__ = ["FakeQuant", "QATNet", "QuantAwareInt8"]
