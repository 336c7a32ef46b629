"""``OnnxModule``: an ONNX Runtime session behind the ``nn.Module`` interface.

The int8 models produced by :mod:`fortify.compress.quantize.ptq` run in ONNX Runtime, not in
PyTorch. Wrapping the session as a module (no parameters; ``forward`` maps a float tensor
``(N, C, H, W)`` to logits ``(N, K)`` via ``session.run``) lets fortify's score-based black-box
attacks (Square, NES) and the measurement code attack and time *the quantized model itself*.
It is not differentiable: gradient attacks must use its float twin (transfer attacks).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fortify.errors import ModelFileError


def make_session(blob: bytes, threads: int = 2) -> Any:
    """An ONNX Runtime CPU session over ``blob`` with ``threads`` intra-op threads and 1 inter-op thread."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # no busy-wait on a shared CPU
    try:
        return ort.InferenceSession(blob, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise ModelFileError(f"ONNX Runtime cannot load the model: {str(exc)[:200]}") from None


class OnnxModule(nn.Module):
    """Run ONNX bytes (float or int8) with ONNX Runtime; ``forward`` ``(N, C, H, W)`` -> ``(N, K)``."""

    def __init__(self, blob: bytes, *, threads: int = 2, kind: str = "onnx") -> None:
        """Validate and store the hyper-parameters (ConfigError naming the bad one)."""
        super().__init__()
        self.blob = bytes(blob)
        self.threads = int(threads)
        self.kind = kind
        self.session = make_session(self.blob, self.threads)
        self.input_name = self.session.get_inputs()[0].name
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)

    @property
    def int8_scheme(self) -> str | None:
        """The int8 scheme recorded at quantization (``u8s8`` / ``u8s8-reduced`` / ``u8u8``), None for float."""
        from fortify.compress.quantize.schemes import META_SCHEME

        return self.metadata.get(META_SCHEME)

    @property
    def portability_warning(self) -> str | None:
        """A one-line warning when this artefact's int8 kernel can saturate on the CPU running it."""
        from fortify.compress.quantize.schemes import portability_warning

        return portability_warning(self.int8_scheme)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the ONNX model (no gradient; output on ``x``'s device, float32)."""
        arr = np.ascontiguousarray(x.detach().cpu().float().numpy())
        out = self.session.run(None, {self.input_name: arr})[0]
        return torch.from_numpy(np.asarray(out, dtype=np.float32)).to(x.device)

    def set_threads(self, threads: int) -> None:
        """Rebuild the session with ``threads`` intra-op threads."""
        self.threads = int(threads)
        self.session = make_session(self.blob, self.threads)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the ONNX bytes to ``path`` (the artefact whose size is reported)."""
        from fortify.io import write_atomic

        return write_atomic(path, self.blob, what="ONNX model")

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, threads: int = 2) -> "OnnxModule":
        """Load an ``.onnx`` file written by :meth:`save`."""
        try:
            blob = Path(path).read_bytes()
        except OSError as exc:
            raise ModelFileError(f"cannot read {path}: {exc}") from None
        module = cls(blob, threads=threads)
        note = module.portability_warning
        if note is not None:  # an artefact built on a VNNI CPU, run on one whose kernel saturates
            warnings.warn(f"{path}: {note}", RuntimeWarning, stacklevel=2)
        return module

    def __deepcopy__(self, memo: dict[int, Any]) -> "OnnxModule":
        """A new session over the same ONNX bytes (sessions themselves cannot be copied)."""
        return OnnxModule(self.blob, threads=self.threads, kind=self.kind)

    def __getstate__(self) -> dict[str, Any]:
        """Refuse pickling: save the ONNX bytes with :meth:`save` instead."""
        raise TypeError("OnnxModule is not picklable; save it with .save(path)")

    def extra_repr(self) -> str:
        """Kind, size in bytes and threads, for ``repr``."""
        return f"kind={self.kind!r}, bytes={len(self.blob)}, threads={self.threads}"


__all__ = ["OnnxModule", "make_session"]
