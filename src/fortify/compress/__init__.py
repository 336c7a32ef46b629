"""Compress: pruning, quantization, low-rank, distillation and Deep Compression with real bytes and latency.

Every transform follows ``result = transform(model, example_inputs, *, data=None)`` ->
:class:`TransformResult` ``(model, report)`` and is registered in :data:`TRANSFORMS`.
"""
from __future__ import annotations

from fortify.compress import prune  # noqa: F401  (registers the pruning transforms)
from fortify.compress.base import TRANSFORMS, Transform, TransformResult, count_params, create
from fortify.compress.finetune import finetune
from fortify.compress.formats import load_compressed, save_compressed

__all__ = ["TRANSFORMS", "Transform", "TransformResult", "count_params", "create", "finetune",
           "load_compressed", "save_compressed"]
