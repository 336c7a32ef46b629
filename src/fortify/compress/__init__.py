"""Compress: pruning, quantization, low-rank, distillation and Deep Compression with real bytes and latency.

Every transform follows ``result = transform(model, example_inputs, *, data=None)`` ->
:class:`TransformResult` ``(model, report, extras)``; the input model is never mutated. All are
registered in :data:`TRANSFORMS` by its own module, and :func:`fortify.registry.discover` imports
every module of this package (``prune/`` and ``quantize/`` included), so a new file's transform is
never silently unregistered; :func:`compress` runs a recipe (:data:`RECIPES`) or a list of
steps, saves the artefact and measures it with :func:`measure`.

>>> from fortify import compress as C                                        # doctest: +SKIP
>>> res = C.compress(model, "robust-int8", (x, y), test=(xt, yt), threat="linf:0.3", out_dir="out")
>>> rows = C.measure({"float": model, "int8": res.model}, xt, yt, float_twins={"int8": res.float_twin})
"""
from __future__ import annotations

from torch import nn

from fortify.compress.base import TRANSFORMS, Transform, TransformResult, count_params, create
from fortify.compress.deep_compression import DeepCompression
from fortify.compress.distill import Distill
from fortify.compress.export import export_onnx, onnx_bytes
from fortify.compress.finetune import finetune
from fortify.compress.formats import load_compressed, read_record, save_compressed
from fortify.compress.lowrank import LowRank
from fortify.compress.measure import Measurement, format_table, measure
from fortify.compress.pareto import plot_pareto
from fortify.compress.pipeline import RECIPES, CompressionResult, compress
from fortify.compress.quantize import OnnxModule
from fortify.compress.quantize.qat import QuantAwareInt8
from fortify.registry import discover

discover(__name__)


def load(path: str) -> nn.Module:
    """Load any compression artefact: ``.onnx`` -> :class:`OnnxModule`, else :func:`load_compressed`."""
    if str(path).endswith(".onnx"):
        return OnnxModule.load(path)
    return load_compressed(path)


__all__ = ["RECIPES", "TRANSFORMS", "CompressionResult", "DeepCompression", "Distill", "LowRank", "Measurement",
           "OnnxModule", "QuantAwareInt8", "Transform", "TransformResult", "compress", "count_params", "create",
           "export_onnx", "finetune", "format_table", "load", "load_compressed", "measure", "onnx_bytes",
           "plot_pareto", "read_record", "save_compressed"]
