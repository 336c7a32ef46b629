"""``keep_float``: mixed-precision int8 export (chosen Conv2d/Linear layers stay float32) and its QAT twin."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from fortify.compress import create
from fortify.compress.quantize.qat import QATNet
from fortify.errors import ConfigError


def _weight_inputs(blob: bytes) -> list[tuple[str, np.ndarray | None]]:
    """Per Conv/Gemm node of an ONNX graph: (op, its weight initializer if it is a float tensor, else None)."""
    g = onnx.load_from_string(blob).graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    out = []
    for n in g.node:
        if n.op_type in ("Conv", "Gemm"):
            w = inits.get(n.input[1])
            out.append((n.op_type, w if w is not None and w.dtype == np.float32 else None))
    return out


def test_first_conv_stays_float_and_exact(_cnn: nn.Module, train_data, test_data) -> None:
    mixed = create("int8_static", calibration_size=128, keep_float=[0])(_cnn, train_data[0][:4], data=train_data)
    full = create("int8_static", calibration_size=128)(_cnn, train_data[0][:4], data=train_data)
    nodes = _weight_inputs(mixed.model.blob)
    assert len(nodes) == 4 and nodes[0][1] is not None  # first conv: float weight initializer
    assert np.array_equal(nodes[0][1], _cnn.inner[0].weight.detach().numpy())  # bit-exact float32 weights
    assert all(w is None for _, w in nodes[1:])  # the rest are int8 (weights behind DequantizeLinear)
    assert all(w is None for _, w in _weight_inputs(full.model.blob))
    assert mixed.report["keep_float"] == [0]
    x = test_data[0][:200]
    with torch.no_grad():
        ref = _cnn(x)
        err_mixed = (mixed.model(x) - ref).abs().mean()
        err_full = (full.model(x) - ref).abs().mean()
    assert err_mixed < err_full  # one quantization error source fewer
    assert float((mixed.model(x).argmax(1) == ref.argmax(1)).float().mean()) > 0.97


def test_qat_net_skips_fake_quant_on_float_layers(_cnn: nn.Module, test_data) -> None:
    x = test_data[0][:64]
    with torch.no_grad():
        ref = _cnn(x)
        all_float = QATNet(_cnn, keep_float=(0, 1, 2, 3)).eval()(x)
        quant = QATNet(_cnn).eval()(x)
        first_float = QATNet(_cnn, keep_float=(-4,))
    assert torch.allclose(all_float, ref, atol=1e-5)  # nothing quantized: the float model exactly
    assert not torch.allclose(quant, ref, atol=1e-5)
    assert first_float.fq.float_layers == {0}  # position -4 of 4 weight layers = Sequential index 0


def test_keep_float_errors(_cnn: nn.Module, train_data) -> None:
    for bad in ("first", 0, [True], [0.5]):
        with pytest.raises(ConfigError, match="keep_float"):
            create("int8_static", keep_float=bad)
    with pytest.raises(ConfigError, match="out of range"):
        create("int8_dynamic", keep_float=[4])(_cnn, train_data[0][:4])
    with pytest.raises(ConfigError, match="keep_float"):
        create("qat_int8", keep_float="first")
