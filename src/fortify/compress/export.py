"""ONNX export of fortify models (``fortify export --onnx``).

:func:`export_onnx` writes the model with the TorchScript-based exporter (no ``onnxscript``
needed), input ``x`` ``(N, C, H, W)`` in [0, 1] with a dynamic batch axis and output ``logits``
``(N, K)``; the ``Normalized`` standardisation is part of the graph. The exported graph is checked
with ``onnx.checker`` and, optionally, against the PyTorch outputs on ``example_inputs``.

Device: ONNX export and ONNX Runtime are CPU work. A model on another device is exported from a CPU
deep copy that fortify makes and owns (:func:`cpu_copy`); the caller's model is never moved.
"""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from fortify.errors import ConfigError, OutputError
from fortify.models.state import eval_mode

OPSET = 17


def cpu_copy(model: nn.Module) -> nn.Module:
    """``model`` itself when it lives on the CPU (or has no tensors), else a deep copy on the CPU (fortify's own:
    the caller's model is never moved). For the CPU-only steps: ONNX export, ONNX Runtime, CPU latency."""
    from fortify.models.state import device_of

    dev = device_of(model)
    if dev is None or dev.type == "cpu":
        return model
    import copy

    return copy.deepcopy(model).to("cpu")


def onnx_bytes(model: nn.Module, example_inputs: torch.Tensor, *, opset: int = OPSET) -> bytes:
    """Serialise ``model`` (eval mode for the call, every module's flag restored) to ONNX bytes.

    ``example_inputs`` ``(B, C, H, W)`` fixes the sample shape (batch axis dynamic). A model on another
    device than the CPU is exported from a CPU copy (:func:`cpu_copy`).
    """
    import onnx

    if not isinstance(model, nn.Module):
        raise ConfigError(f"export needs an nn.Module, got {type(model).__name__}")
    model, example_inputs = cpu_copy(model), example_inputs.detach().cpu()
    buf = io.BytesIO()
    with eval_mode(model), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # the TorchScript exporter (dynamo=False) writes to file-like objects; torch annotates f as a path only
        torch.onnx.export(model, (example_inputs[:1].detach().float(),),
                          buf, dynamo=False,  # type: ignore[arg-type]
                          input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}}, opset_version=opset)
    blob = buf.getvalue()
    onnx.checker.check_model(onnx.load_from_string(blob))
    return blob


def export_onnx(model: nn.Module, path: str | os.PathLike[str], example_inputs: torch.Tensor, *,
                opset: int = OPSET, check: bool = True, atol: float = 1e-4) -> Path:
    """Write ``model`` as ONNX to ``path``; with ``check`` compare ONNX Runtime and PyTorch logits.

    Raises ConfigError if the runtime disagrees with PyTorch by more than ``atol``, OutputError if
    the file cannot be written. ``model`` is run in eval mode; its flags are restored afterwards.
    """
    blob = onnx_bytes(model, example_inputs, opset=opset)
    if check:
        from fortify.compress.quantize.runtime import OnnxModule

        with torch.no_grad(), eval_mode(model):
            ref = model(example_inputs.float())
        got = OnnxModule(blob)(example_inputs.float())
        if not torch.allclose(ref, got, atol=atol, rtol=1e-3):
            raise ConfigError(f"ONNX export disagrees with PyTorch (max diff {float((ref - got).abs().max()):.3g})")
    dest = Path(path)
    try:
        dest.write_bytes(blob)
    except OSError as exc:
        raise OutputError(f"cannot write {dest}: {exc}") from None
    return dest


__all__ = ["OPSET", "export_onnx", "onnx_bytes"]
