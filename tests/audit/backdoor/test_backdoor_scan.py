"""The application side: ``data.poison`` plants a backdoor in the train split (indices recorded), the ``scan``
stage flags the planted model with findings and a trigger figure, ``fortify scan`` runs end to end, and
mistakes are typed errors / exit 2."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import TARGET, Planted
from fortify import models
from fortify.cli import main
from fortify.config import resolve
from fortify.errors import ConfigError, UnknownNameError
from fortify.models.state import fingerprint
from fortify.pipeline import RunContext
from fortify.pipeline.stages.scan import ScanResult, ScanStage


def test_data_poison_plants_the_backdoor_and_records_the_indices(tmp_path: Path) -> None:
    cfg = resolve({"data": {"name": "mnist-5k", "train_limit": 200,
                            "poison": {"kind": "badnets", "rate": 0.1, "target": 2}},
                   "stages": ["train"], "output": {"dir": str(tmp_path)}}, check_names=True)
    ctx = RunContext(config=cfg, run_dir=tmp_path, run_id="r", quiet=True)
    x, y = ctx.data("train")
    rec = json.loads((tmp_path / "poison.json").read_text())
    assert rec["poisoned"] == 20 and len(rec["indices"]) == 20 and rec["target"] == 2
    idx = torch.tensor(rec["indices"])
    assert bool((y[idx] == 2).all()) and ctx.metrics["data"]["poisoned"] == 20
    x0, y0 = ctx.data("train")
    assert x0 is x  # planted once per run


@pytest.mark.parametrize("poison,err,match", [({"kind": "nope"}, UnknownNameError, "nope"),
                                              ({"kind": "badnets", "rate": 1.5}, ConfigError, "data.poison"),
                                              ({"rate": 0.1}, ConfigError, "kind")])
def test_bad_poison_recipes_are_refused_before_the_run(poison: dict[str, object], err: type, match: str) -> None:
    with pytest.raises(err, match=match):
        resolve({"data": {"poison": poison}, "stages": ["train"]})


def test_scan_stage_flags_the_planted_model(tmp_path: Path, planted: Planted) -> None:
    cfg = resolve({"stages": ["scan"], "output": {"dir": str(tmp_path)},
                   "data": {"poison": {"kind": "badnets", "rate": 0.1, "target": TARGET, "seed": 1}},
                   "scan": {"n": 120, "steps": 100}}, check_names=False)
    ctx = RunContext(config=cfg, run_dir=tmp_path, run_id="r", model=planted.model, quiet=True, stage="scan")
    ctx.set_data("test", planted.x_test[:120], planted.y_test[:120])
    before = fingerprint(planted.model)
    res = ScanStage().run(ctx)
    assert fingerprint(planted.model) == before
    assert isinstance(res, ScanResult) and res.verdict.startswith(f"trojaned: target {TARGET}")
    assert res.asr is not None and res.asr > 0.9 and res.strip_far is not None
    sec = ctx.sections[-1]
    keys = {f.key for f in sec.findings}
    assert {"scan.verdict", "scan.neural-cleanse.anomaly_index", "scan.asr", "scan.strip.far"} <= keys
    assert (tmp_path / "scan" / "triggers_neural-cleanse.png").stat().st_size > 1000
    assert json.loads((tmp_path / "scan" / "scan.json").read_text())["detections"]["neural-cleanse"]["target"] == TARGET


def test_fortify_scan_end_to_end_and_bad_input(tmp_path: Path, planted: Planted,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    path = models.save(planted.model, tmp_path / "m.safetensors", meta={"dataset": "mnist-5k"})
    common = ["--out", str(tmp_path / "runs"), "--store", str(tmp_path / "s.db"), "--dataset", "mnist-5k"]
    code = main(["scan", str(path), "--steps", "100", "--n", "120", "--detectors", "neural-cleanse", *common])
    out = capsys.readouterr().out
    assert code == 0 and f"trojaned: target {TARGET}" in out and "triggers neural-cleanse" in out
    assert main(["scan", str(path), "--detectors", "nope", *common]) == 2
    assert "--detectors" in capsys.readouterr().err
    assert main(["scan", str(path), "scan.steps=0", *common]) == 2
