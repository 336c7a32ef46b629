"""Int8 post-training quantization executed for real with ONNX Runtime.

The float model is exported to ONNX (:mod:`fortify.compress.export`), pre-processed
(shape inference + graph fusion) and quantized by ``onnxruntime.quantization``:

* ``int8_dynamic`` -- ``quantize_dynamic``: int8 weights; activations quantized on the fly per batch
  (Jacob et al. 2018 affine scheme). No data needed.
* ``int8_static`` -- ``quantize_static`` with a :class:`CalibrationReader` over calibration images:
  activation ranges fixed from data (MinMax or percentile), per-channel int8 weights, QDQ format
  that ONNX Runtime fuses into integer kernels (QLinearConv / QGemm / MatMulInteger).

``keep_float`` leaves chosen Conv2d/Linear layers (positions among the model's weight layers, 0 =
the first, -1 = the last) in float32: their weights stay float and their inputs unquantized, the
next layer's input is quantized as usual. Keeping the first conv in float costs ``4 C_out C_in k^2``
bytes and is the usual mixed-precision choice (the first layer sees raw pixels and is the most
quantization-sensitive); on ONNX Runtime's CPU kernels it is also faster, because an int8
``QLinearConv`` with one input channel is slower than its float twin (measured on small-cnn at
batch 256: 2.27 ms all-int8 vs 1.10 ms with the first conv in float, 2 threads).

The result model is an :class:`fortify.compress.quantize.runtime.OnnxModule`; its ``blob`` is the
artefact written to disk (``.onnx``). Shapes: inputs ``(N, C, H, W)`` in [0, 1] -> logits ``(N, K)``.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from fortify.compress.base import TRANSFORMS, Data, Transform, TransformResult, check_int, weight_layers
from fortify.compress.export import onnx_bytes
from fortify.compress.quantize.runtime import OnnxModule
from fortify.compress.quantize.schemes import (
    META_CPU, META_SATURATION_FREE, META_SCHEME, SCHEMES, cpu_features, resolve_scheme, scheme_types,
)
from fortify.errors import ConfigError

CALIBRATION_METHODS = ("minmax", "percentile", "entropy")


class CalibrationReader:
    """``onnxruntime.quantization.CalibrationDataReader`` over ``x (N, C, H, W)`` in batches."""

    def __init__(self, x: torch.Tensor, batch_size: int = 64, input_name: str = "x") -> None:
        """Validate and store the hyper-parameters (ConfigError naming the bad one)."""
        self.x = x.detach().cpu().float().numpy()
        self.batch_size, self.input_name = batch_size, input_name
        self._it: Iterator[dict[str, np.ndarray]] | None = None

    def get_next(self) -> dict[str, np.ndarray] | None:
        """Next ``{input_name: batch}`` or None when exhausted (the ORT protocol)."""
        if self._it is None:
            self._it = iter({self.input_name: np.ascontiguousarray(self.x[i: i + self.batch_size])}
                            for i in range(0, len(self.x), self.batch_size))
        return next(self._it, None)

    def rewind(self) -> None:
        """Restart the iteration from the first batch."""
        self._it = None


def _preprocess(src: Path, dst: Path) -> Path:
    """ORT's recommended pre-processing (symbolic shape inference + optimisation); falls back to ``src``."""
    try:
        from onnxruntime.quantization.shape_inference import quant_pre_process

        quant_pre_process(str(src), str(dst), skip_symbolic_shape=False)
        return dst
    except Exception:  # noqa: BLE001 - pre-processing is an optimisation only
        return src


def check_scheme(value: object) -> str:
    """Validate an int8 ``scheme`` name (ConfigError listing the allowed ones); ``auto`` stays unresolved."""
    if not isinstance(value, str) or value not in SCHEMES:
        raise ConfigError(f"scheme must be one of {', '.join(SCHEMES)}; got {value!r}")
    return value


def check_keep_float(value: object, n_layers: int | None = None) -> tuple[int, ...]:
    """Validate ``keep_float`` (weight-layer positions; negative counts from the end) -> sorted tuple.

    With ``n_layers`` the positions are resolved to ``0 .. n_layers - 1`` (ConfigError if out of range).
    """
    if isinstance(value, (int, str)) or not isinstance(value, Sequence) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ConfigError(f"keep_float must be a list of weight-layer positions (0 = first, -1 = last), got {value!r}")
    if n_layers is None:
        return tuple(int(v) for v in value)
    bad = [v for v in value if not -n_layers <= v < n_layers]
    if bad:
        raise ConfigError(f"keep_float positions {bad} out of range for a model with {n_layers} weight layers")
    return tuple(sorted({v % n_layers for v in value}))


def _weight_nodes(path: Path) -> list[str]:
    """Names of the Conv/Gemm/MatMul nodes of an ONNX file, in graph order."""
    import onnx

    return [n.name for n in onnx.load(str(path)).graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]


def _with_metadata(blob: bytes, scheme: str) -> bytes:
    """``blob`` with the int8 scheme and the builder's CPU features in the ONNX metadata."""
    import onnx

    proto = onnx.load_from_string(blob)
    meta = {META_SCHEME: scheme, META_CPU: cpu_features().describe(),
            META_SATURATION_FREE: "false" if scheme == "u8s8" else "true"}
    kept = [p for p in proto.metadata_props if p.key not in meta]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=value)
    return proto.SerializeToString()


def quantize_onnx(model: nn.Module, example_inputs: torch.Tensor, *, mode: str = "static",
                  calibration: torch.Tensor | None = None, per_channel: bool = True,
                  method: str = "minmax", threads: int = 2, keep_float: Sequence[int] = (),
                  scheme: str = "auto") -> OnnxModule:
    """Export ``model`` and quantize it to int8 with ONNX Runtime (``mode`` ``"dynamic"`` or ``"static"``).

    ``keep_float``: weight-layer positions (0 = first Conv2d/Linear, -1 = last) left in float32.
    ``scheme``: ``auto`` (from this CPU's features), ``u8s8``, ``u8s8-reduced`` or ``u8u8``
    (:mod:`fortify.compress.quantize.schemes`); the resolved scheme is written into the metadata.
    """
    from onnxruntime.quantization import (
        CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static,
    )

    resolved = resolve_scheme(scheme)
    u8_weights, reduce_range = scheme_types(resolved)
    wtype = QuantType.QUInt8 if u8_weights else QuantType.QInt8
    keep = check_keep_float(keep_float, len(weight_layers(model)) if keep_float else None)
    blob = onnx_bytes(model, example_inputs)
    with tempfile.TemporaryDirectory(prefix="fortify-q-") as tmp:
        src, pre, out = Path(tmp, "float.onnx"), Path(tmp, "pre.onnx"), Path(tmp, "int8.onnx")
        src.write_bytes(blob)
        src = _preprocess(src, pre)
        exclude: list[str] = []
        if keep:
            names = _weight_nodes(src)
            if len(names) != len(weight_layers(model)):  # pragma: no cover - exporter fused a weight layer away
                raise ConfigError(f"keep_float: the ONNX graph has {len(names)} Conv/Gemm/MatMul nodes for "
                                  f"{len(weight_layers(model))} weight layers")
            exclude = [names[i] for i in keep]
        if mode == "dynamic":
            quantize_dynamic(str(src), str(out), weight_type=wtype, per_channel=per_channel,
                             reduce_range=reduce_range, nodes_to_exclude=exclude)
        else:
            if calibration is None:
                raise ConfigError("static quantization needs calibration images (data=(x, y))")
            cal = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                   "entropy": CalibrationMethod.Entropy}[method]
            quantize_static(str(src), str(out), CalibrationReader(calibration), quant_format=QuantFormat.QDQ,
                            per_channel=per_channel, activation_type=QuantType.QUInt8,
                            weight_type=wtype, calibrate_method=cal, nodes_to_exclude=exclude,
                            reduce_range=reduce_range)
        return OnnxModule(_with_metadata(out.read_bytes(), resolved), threads=threads, kind=f"int8-{mode}")


@TRANSFORMS.register("int8_dynamic", help="int8 dynamic post-training quantization (ONNX Runtime)")
class Int8Dynamic(Transform):
    """Args: ``per_channel`` weights, ``threads`` of the returned session, ``keep_float`` layer positions,
    ``scheme`` (``auto`` | ``u8s8`` | ``u8s8-reduced`` | ``u8u8``, see :mod:`~fortify.compress.quantize.schemes`)."""

    def __init__(self, per_channel: bool = True, threads: int = 2, keep_float: Sequence[int] = (),
                 scheme: str = "auto") -> None:
        """Validate and store the hyper-parameters (ConfigError naming the bad one)."""
        self.per_channel, self.threads = bool(per_channel), check_int(threads, "threads")
        self.keep_float = check_keep_float(keep_float)
        self.scheme = check_scheme(scheme)

    def _run(self, model: nn.Module, example_inputs: torch.Tensor, data: Data | None) -> TransformResult:
        """Run the algorithm on ``model`` (the private deep copy) and return its result and report."""
        q = quantize_onnx(model, example_inputs, mode="dynamic", per_channel=self.per_channel, threads=self.threads,
                          keep_float=self.keep_float, scheme=self.scheme)
        return TransformResult(q, {"bytes_onnx": len(q.blob), "mode": "dynamic", "scheme": q.int8_scheme},
                               extras={"float_twin": model})


@TRANSFORMS.register("int8_static", help="int8 static post-training quantization with calibration (ONNX Runtime)")
class Int8Static(Transform):
    """Args: ``calibration_size`` images taken from ``data``, ``method`` (minmax/percentile/entropy),
    ``per_channel``, ``threads``, ``keep_float`` (weight-layer positions left in float32), ``scheme``."""

    needs_data = True

    def __init__(self, calibration_size: int = 256, method: str = "minmax", per_channel: bool = True,
                 threads: int = 2, keep_float: Sequence[int] = (), scheme: str = "auto") -> None:
        """Validate and store the hyper-parameters (ConfigError naming the bad one)."""
        self.calibration_size = check_int(calibration_size, "calibration_size")
        self.scheme = check_scheme(scheme)
        if method not in CALIBRATION_METHODS:
            raise ConfigError(f"method must be one of {', '.join(CALIBRATION_METHODS)}; got {method!r}")
        self.method, self.per_channel, self.threads = method, bool(per_channel), check_int(threads, "threads")
        self.keep_float = check_keep_float(keep_float)

    def _run(self, model: nn.Module, example_inputs: torch.Tensor, data: Data | None) -> TransformResult:
        """Run the algorithm on ``model`` (the private deep copy) and return its result and report."""
        assert data is not None
        cal = data[0][: self.calibration_size]
        q = quantize_onnx(model, example_inputs, mode="static", calibration=cal, per_channel=self.per_channel,
                          method=self.method, threads=self.threads, keep_float=self.keep_float, scheme=self.scheme)
        return TransformResult(q, {"bytes_onnx": len(q.blob), "mode": "static", "scheme": q.int8_scheme,
                                   "calibration": int(cal.shape[0]),
                                   "method": self.method, "keep_float": list(self.keep_float)},
                               extras={"float_twin": model})


def agreement(a: nn.Module, b: nn.Module, x: torch.Tensor, batch_size: int = 512) -> float:
    """Fraction of ``x`` on which ``a`` and ``b`` predict the same class."""
    same = 0
    with torch.no_grad():
        for i in range(0, x.shape[0], batch_size):
            xb = x[i: i + batch_size]
            same += int((a(xb).argmax(1) == b(xb).argmax(1)).sum())
    return same / max(1, x.shape[0])


__all__ = ["CALIBRATION_METHODS", "CalibrationReader", "check_keep_float", "check_scheme", "Int8Dynamic", "Int8Static", "agreement", "quantize_onnx"]
