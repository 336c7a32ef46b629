"""Quantization: real int8 via ONNX Runtime (dynamic, static), the ``OnnxModule`` wrapper, QAT."""
from __future__ import annotations

from fortify.compress.quantize.ptq import CalibrationReader, Int8Dynamic, Int8Static, agreement, quantize_onnx
from fortify.compress.quantize.runtime import OnnxModule

__all__ = ["CalibrationReader", "Int8Dynamic", "Int8Static", "OnnxModule", "agreement", "quantize_onnx"]
