"""audit_model on a gradient-free (ONNX Runtime) model, like the int8 model of the compress stage: forward-only
sections run, the rest become notices; calibrators wrap it without changing its dtype."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from fortify.audit.suite import AuditOptions, audit_model, gradient_free


def test_onnx_model_is_audited_with_notices() -> None:
    pytest.importorskip("onnxruntime")
    from fortify.compress.export import onnx_bytes
    from fortify.compress.quantize.runtime import OnnxModule

    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(60, 1, 8, 8, generator=g), torch.randint(0, 3, (60,), generator=g)
    om = OnnxModule(onnx_bytes(net, x[:1]))
    assert gradient_free(om) and not gradient_free(net)
    opt = AuditOptions(sections=["calibration", "ood", "adversarial", "fooling"], ood_sets=["uniform-noise"], n_ood=20,
                       detectors=["msp", "knn"], fooling_per_class=1, fooling_steps=2, bootstrap=5)
    a = audit_model(om, (x, y), (x[:40], y[:40]), opt)
    ref = audit_model(net, (x, y), (x[:40], y[:40]), AuditOptions(sections=["calibration"]))
    assert a.calibration["uncalibrated"].ece == pytest.approx(ref.calibration["uncalibrated"].ece, abs=1e-5)
    assert "temperature" in a.calibration and list(a.ood) == ["msp"] and a.adversarial is None
    assert a.fooling is not None and a.fooling.method == "evolution"
    assert any("knn" in n for n in a.notices) and any("adversarial" in n for n in a.notices)
