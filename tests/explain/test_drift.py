"""Explanation drift under compression: the identity scores 1, a pruned model's figure is the rank
correlation computed by hand, a model without gradients is explained through its float twin, and the
compress stage puts the drift next to robust accuracy in its table and metrics."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from fortify import data, models
from fortify.config import resolve
from fortify.errors import ConfigError, UnknownNameError
from fortify.explain import ATTRIBUTIONS
from fortify.explain.drift import explanation_drift
from fortify.explain.similarity import spearman
from fortify.pipeline.base import RunContext

from tests.explain.helpers import images, relu_cnn


class NoGrad(nn.Module):
    """Forward without autograd (like an ONNX Runtime model): gradient methods cannot run on it."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.inner(x)


def test_drift_reference_values() -> None:
    model, x = relu_cnn(), images(6)
    same = explanation_drift(model, model, x, methods=["saliency", "gradient-x-input"])
    assert all(torch.allclose(r.values, torch.ones(6, dtype=torch.float64)) for r in same.values())
    pruned = relu_cnn()
    with torch.no_grad():
        w = next(p for p in pruned.parameters() if p.dim() == 4)  # the first convolution's weight
        w.mul_((w.abs() > w.abs().median()).to(w.dtype))
    res = explanation_drift(model, pruned, x, methods=["saliency"])["saliency"]
    with torch.no_grad():
        pred = model(x).argmax(dim=1)
    sal = ATTRIBUTIONS.create("saliency")
    expect = spearman(sal(model, x, pred).abs(), sal(pruned, x, pred).abs())
    assert torch.allclose(res.values, expect.double()) and res.model == "compressed"
    assert res.interval is not None and res.interval[0] <= res.mean <= res.interval[1]
    twin = explanation_drift(model, NoGrad(pruned), x, methods=["saliency"], float_twin=pruned)["saliency"]
    assert twin.model == "float twin" and torch.allclose(twin.values, res.values)
    with pytest.raises(ConfigError):
        explanation_drift(model, pruned, x, methods=[])


def test_compress_stage_reports_drift_next_to_robust_accuracy(tmp_path: Path) -> None:
    from fortify.pipeline.stages.compress import CompressConfig, CompressStage

    torch.manual_seed(0)
    net = models.create("mlp", in_shape=(1, 28, 28), num_classes=10, hidden=(32,)).eval()
    sec = {"steps": [{"transform": "magnitude_prune", "sparsity": 0.5, "scope": "global"}], "n_robust": 8,
           "n_test": 16, "repeats": 2, "pgd_steps": 2, "latency": False, "n_drift": 8}
    cfg = resolve({"data": {"name": "mnist-5k"}, "model": {"name": "mlp"}, "stages": ["compress"], "compress": sec})
    ctx = RunContext(config=cfg, run_dir=tmp_path, run_id="t", quiet=True, model=net, stage="compress")
    ctx.set_data("train", *data.load("mnist-5k", "train", limit=64))
    ctx.set_data("test", *data.load("mnist-5k", "test", limit=16))
    res = CompressStage().run(ctx)
    m = ctx.metrics["compress"]
    x = ctx.data("test")[0][:8]
    ref = explanation_drift(net, res.model, x, methods=["saliency"])["saliency"]
    assert m["explain_drift[saliency]"] == pytest.approx(ref.mean) and m["n_drift"] == 8
    table = ctx.sections[0].tables[0]
    col = table.headers.index("saliency drift (rank corr. with the original, 8 images)")
    assert table.headers[col - 1] == "robust accuracy" and table.rows[1][col].startswith(f"{ref.mean:.3f}")
    with pytest.raises(UnknownNameError):
        CompressConfig(drift_methods=["nope"])
    with pytest.raises(ConfigError):
        CompressConfig(n_drift=0)


def test_stage_helpers_mark_the_float_twin_and_run_occlusion_on_the_model_itself() -> None:
    from fortify.pipeline.stages.explain import compress_drift, drift_columns

    model, x = relu_cnn(), images(4)
    frozen_copy = NoGrad(model)  # forward-only, like an int8 ONNX Runtime model
    m = compress_drift(model, frozen_copy, model, x, ["saliency", "occlusion"], 4)
    assert m["explain_drift[saliency]_float_twin"] == 1 and "explain_drift[occlusion]_float_twin" not in m
    assert m["explain_drift[occlusion]"] == pytest.approx(1.0) and m["n_drift"] == 4
    head, (orig, comp) = drift_columns(m, ["saliency", "occlusion"])
    assert head[1] == "occlusion drift (rank corr. with the original, 4 images)" and orig[0] == "1 (reference)"
    assert comp[0].endswith("(float twin)") and not comp[1].endswith("(float twin)")
