"""Certified-training recipes: they validate, build the IBP task with the smoothed ramp, initialise the
model with IBP initialisation (``model.init``), and run end to end; bad values exit 2 with one line."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from fortify import models
from fortify.config import list_recipes, load_config
from fortify.threat import ThreatModel
from fortify.train import tasks


@pytest.mark.parametrize("name,train_eps,cert", [("ibp-mnist-5k", 0.2, "linf:0.1"), ("ibp-mnist", 0.4, "linf:0.3")])
def test_certified_recipes_validate_and_build(name: str, train_eps: float, cert: str) -> None:
    assert name in list_recipes()
    cfg = load_config(name)
    assert cfg.model.init == "ibp" and cfg.model.normalize is False
    task = tasks.create(cfg.task.name, **cfg.task.args)
    assert task.name == "ibp" and task.schedule == "smoothed" and task.threat.eps == pytest.approx(train_eps)
    assert cfg.sections["certify"].threat == ThreatModel.coerce(cert) and "certify" in cfg.stages


def test_model_init_ibp_redraws_all_but_the_last_layer_reproducibly() -> None:
    cfg = load_config("ibp-mnist-5k")
    a, b = models.from_config(cfg), models.from_config(cfg)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)  # seeded by train.seed
    layers = [m for m in a.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    for m in layers[:-1]:
        fan_in = m.weight[0].numel()
        assert float(m.weight.detach().std()) == pytest.approx(math.sqrt(2 * math.pi) / fan_in, rel=0.1)
    cfg.model.init = "default"
    plain = models.from_config(cfg)
    fc1 = [m for m in plain.modules() if isinstance(m, nn.Linear)][0]  # fan-in 1568: 2.5/1568 vs 1/sqrt(3*1568)
    assert float(fc1.weight.detach().std()) > 5 * float(layers[2].weight.detach().std())


def test_ibp_recipe_runs_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fortify.cli import main

    rc = main(["run", "--recipe", "ibp-mnist-5k", "--out", str(tmp_path), "-q", "train.epochs=2",
               "data.train_limit=200", "data.test_limit=40", "certify.n=16", "certify.curve_points=2"])
    assert rc == 0, capsys.readouterr().err
    (report,) = tmp_path.glob("*/report.json")
    doc = json.loads(report.read_text())
    assert doc["status"] == "ok"
    assert "certify" in json.dumps(doc["metrics"] if "metrics" in doc else doc)


def test_bad_model_init_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fortify.cli import main

    rc = main(["run", "--recipe", "ibp-mnist-5k", "--out", str(tmp_path), "-q", "model.init=xavier"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and "model.init" in err and "ibp" in err, err
