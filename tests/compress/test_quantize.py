"""Int8 quantization executed by ONNX Runtime: agreement with the float model, real bytes, attacks on it."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fortify import ThreatModel
from fortify.attacks import create as create_attack
from fortify.compress import OnnxModule, create, export_onnx, load
from fortify.compress.quantize import CalibrationReader, agreement
from fortify.compress.measure import robust_accuracy_of
from fortify.errors import ConfigError


@pytest.fixture(scope="module")
def static_q(_cnn: nn.Module, train_data) -> object:
    return create("int8_static", calibration_size=256)(_cnn, train_data[0][:4], data=train_data)


def test_export_matches_torch(cnn: nn.Module, test_data, tmp_path: Path) -> None:
    path = export_onnx(cnn, tmp_path / "m.onnx", test_data[0][:4])
    onnx_model = load(path)
    with torch.no_grad():
        assert torch.allclose(onnx_model(test_data[0][:64]), cnn(test_data[0][:64]), atol=1e-4)


def test_static_int8_agrees_with_float_and_is_smaller(static_q, _cnn: nn.Module, test_data, tmp_path: Path) -> None:
    q = static_q.model
    assert isinstance(q, OnnxModule)
    assert agreement(_cnn, q, test_data[0]) >= 0.99
    float_bytes = len(export_onnx(_cnn, tmp_path / "f.onnx", test_data[0][:2]).read_bytes())
    assert len(q.blob) < 0.5 * float_bytes  # int8 weights: about 4x fewer weight bytes
    import onnx

    ops = {n.op_type for n in onnx.load_from_string(q.blob).graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    assert static_q.extras["float_twin"] is not _cnn


def test_dynamic_int8_agrees(_mlp: nn.Module, test_data) -> None:
    res = create("int8_dynamic")(_mlp, test_data[0][:4])
    assert agreement(_mlp, res.model, test_data[0]) >= 0.99
    import onnx

    ops = {n.op_type for n in onnx.load_from_string(res.model.blob).graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeLinear", "DynamicQuantizeMatMul"}


def test_saved_int8_reloads_identical(static_q, test_data, tmp_path: Path) -> None:
    path = static_q.model.save(tmp_path / "q.onnx")
    again = load(path)
    assert torch.equal(again(test_data[0][:32]), static_q.model(test_data[0][:32]))


def test_square_and_transfer_attack_the_int8_model(static_q, test_data) -> None:
    threat = ThreatModel.parse("linf:0.3")
    x, y = test_data[0][:40], test_data[1][:40]
    q, twin = static_q.model, static_q.extras["float_twin"]
    res = create_attack("square", queries=100)(q, x, y, threat, generator=torch.Generator().manual_seed(0))
    assert bool(threat.contains(res.x_adv, x).all())
    with torch.no_grad():  # success is judged on the quantized model's own predictions
        assert torch.equal(res.success, q(res.x_adv).argmax(1) != y)
    rob, method, extra = robust_accuracy_of(q, x, y, threat, float_twin=twin, pgd_steps=10, square_queries=100)
    assert "square" in method and "transfer" in method
    assert rob <= min(extra["robust_square"], extra["robust_transfer"])
    assert extra["robust_transfer"] < 0.5  # eps 0.3 PGD on a standard-trained twin transfers


def test_qat_adversarial_then_real_int8(cnn: nn.Module, train_data, test_data) -> None:
    res = create("qat_int8", epochs=1, task="pgd_at", task_args={"threat": "linf:0.1", "steps": 1})(
        cnn, train_data[0][:4], data=train_data)
    assert isinstance(res.model, OnnxModule)
    assert agreement(res.extras["float_twin"], res.model, test_data[0]) >= 0.97


def test_calibration_reader_protocol() -> None:
    r = CalibrationReader(torch.rand(10, 1, 4, 4), batch_size=4)
    sizes = []
    while (b := r.get_next()) is not None:
        sizes.append(b["x"].shape[0])
        assert b["x"].dtype == np.float32
    assert sizes == [4, 4, 2]
    r.rewind()
    assert r.get_next() is not None


def test_quantize_errors() -> None:
    with pytest.raises(ConfigError, match="method"):
        create("int8_static", method="mse")
    with pytest.raises(ConfigError, match="data"):
        create("int8_static")(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), torch.rand(2, 1, 2, 2))
