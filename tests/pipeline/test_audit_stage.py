"""The ``audit`` stage on a tiny conv net: its numbers are the library's (calibration, detection), the model is not
changed, the compressed / comparison model is audited side by side, figures, JSON, findings and metrics are
written; configuration mistakes are typed errors before anything runs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from fortify.audit.calibration import calibration_report
from fortify.config import resolve
from fortify.errors import ConfigError, UnknownNameError
from fortify.models.state import fingerprint
from fortify.pipeline import RunContext
from fortify.pipeline.stages.audit import AuditResult, AuditStage

CHEAP = {"n": 40, "n_fit": 60, "n_ood": 20, "n_adv": 10, "adaptive_steps": 3, "pgd_steps": 3, "n_corrupt": 10,
         "corruptions": ["shot_noise", "rotate"], "fooling_per_class": 1, "fooling_steps": 3, "bootstrap": 10,
         "ood_sets": ["gaussian-noise", "uniform-noise"], "detectors": ["msp", "mahalanobis"]}


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 28 * 28, 16), nn.ReLU(),
                         nn.Linear(16, 3))


def _data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 3, (n,), generator=g)


def _run(tmp_path: Path, model: nn.Module, **section: object) -> tuple[RunContext, AuditResult]:
    cfg = resolve({"stages": ["audit"], "output": {"dir": str(tmp_path)}, "audit": {**CHEAP, **section}},
                  check_names=False)
    ctx = RunContext(config=cfg, run_dir=tmp_path, run_id="r", model=model, quiet=True, stage="audit")
    ctx.set_data("test", *_data(40, 1))
    ctx.set_data("train", *_data(60, 2))
    return ctx, AuditStage().run(ctx)


def test_stage_matches_the_library_and_leaves_the_model(tmp_path: Path) -> None:
    model = _net().train()
    before = fingerprint(model)
    ctx, res = _run(tmp_path, model, compare_model=None)
    assert fingerprint(model) == before and model.training
    a = res.audits["model"]
    x, y = _data(40, 1)
    with torch.no_grad():
        probs = model.eval()(x[20:]).softmax(1)
    model.train()
    ref = calibration_report(probs, y[20:])
    assert a.calibration["uncalibrated"].ece == pytest.approx(ref.ece, abs=1e-6)
    assert set(a.ood) == {"msp", "mahalanobis"} and set(a.ood["msp"]) >= {"gaussian-noise", "uniform-noise", "fooling"}
    kinds = {r.kind for r in a.adversarial.rows}
    assert kinds == {"static", "adaptive"}
    (sec,) = ctx.sections
    assert sec.stage == "audit" and "audit/reliability.png" in sec.figures and "audit/risk_coverage.png" in sec.figures
    assert "audit/corruptions.png" in sec.figures
    keys = [f.key for f in sec.findings]
    assert keys[:2] == ["calibration.ece", "ood.best_auroc"] and 1 <= len(keys) <= 5
    for f in sec.findings:  # every headline figure carries its n and a 95% interval that contains it
        assert f.n and f.interval is not None and f.interval[0] <= f.value <= f.interval[1], f
    doc = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert doc["models"]["model"]["calibration"]["uncalibrated"]["ece"] == pytest.approx(ref.ece, abs=1e-6)
    assert ctx.metrics["audit"]["model/uncalibrated/ece"] == pytest.approx(ref.ece, abs=1e-6)


def test_compare_model_is_audited_side_by_side(tmp_path: Path) -> None:
    from fortify import models

    torch.manual_seed(3)
    other = models.create("mlp", in_shape=(1, 28, 28), num_classes=3)
    path = tmp_path / "other.safetensors"
    models.save(other, path)
    ctx, res = _run(tmp_path / "run", _net(), compare_model=str(path), sections=["calibration", "ood"])
    assert set(res.audits) == {"model", "compare"}
    assert (tmp_path / "run" / "audit" / "reliability_compare.png").is_file()
    assert res.audits["compare"].calibration["uncalibrated"].ece != res.audits["model"].calibration["uncalibrated"].ece


@pytest.mark.parametrize("section,error", [({"sections": ["calibration", "vibes"]}, ConfigError),
                                           ({"detectors": ["nope"]}, UnknownNameError),
                                           ({"calibrators": ["platt"]}, UnknownNameError),
                                           ({"n": 2}, ConfigError), ({"eps": [-0.1]}, ConfigError),
                                           ({"ood_sets": ["nope"]}, UnknownNameError)])
def test_config_errors_are_typed(tmp_path: Path, section: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        resolve({"stages": ["audit"], "output": {"dir": str(tmp_path)}, "audit": section}, check_names=False)


def test_compressed_model_of_the_run_is_audited(tmp_path: Path) -> None:
    from fortify.pipeline.results import CompressResult

    small = _net()
    with torch.no_grad():
        small[-1].weight.mul_(0.5)
    cfg = resolve({"stages": ["audit"], "output": {"dir": str(tmp_path)},
                   "audit": {**CHEAP, "sections": ["calibration", "ood"]}}, check_names=False)
    ctx = RunContext(config=cfg, run_dir=tmp_path, run_id="r", model=_net(), quiet=True, stage="audit")
    ctx.set_data("test", *_data(40, 1))
    ctx.set_data("train", *_data(60, 2))
    ctx.results["compress"] = CompressResult(rows=[], model=small, float_twin=None, artefact=tmp_path / "m.onnx",
                                             reports=[], config=None, pareto=None, n_test=0)  # type: ignore[arg-type]
    res = AuditStage().run(ctx)
    assert set(res.audits) == {"model", "compressed"}
    assert "compressed/uncalibrated/ece" in ctx.metrics["audit"]
    assert (tmp_path / "audit" / "reliability_compressed.png").is_file()
