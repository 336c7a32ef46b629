"""The main job on other modalities: the shipped tabular and residual recipes run end to end (shortened)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from fortify.cli import main
from fortify.config import list_recipes


@pytest.mark.parametrize("recipe, overrides, stages", [
    ("tabular-breast-cancer", ["train.epochs=3", "robustness.preset=fast"],
     {"train", "accuracy", "robustness", "certify", "compress", "save", "report"}),
    ("resnet-mnist-5k", ["train.epochs=1", "data.train_limit=128", "data.test_limit=32", "robustness.n=16",
                         "certify.n=2", "certify.compare=[]"],
     {"train", "accuracy", "robustness", "certify", "save", "report"}),
])
def test_modality_recipe_end_to_end(recipe: str, overrides: list[str], stages: set[str], tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert recipe in list_recipes()
    rc = main(["run", "--recipe", recipe, *overrides, "--out", str(tmp_path), "-q"])
    assert rc == 0, capsys.readouterr().err
    (run,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    report = json.loads((run / "report.json").read_text())
    assert report["status"] == "ok" and stages <= set(report["metrics"])
    assert 0.0 <= report["metrics"]["certify"]["certified_accuracy"] <= 1.0
    assert 0.0 <= report["metrics"]["robustness"]["robust_accuracy"] <= report["metrics"]["robustness"]["clean_accuracy"]
    assert (run / "model.safetensors").is_file() and (run / "report.html").is_file()
