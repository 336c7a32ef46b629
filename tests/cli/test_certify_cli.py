"""``fortify certify MODEL --method ibp|crown|smoothing|milp --threat NORM:EPS``: certified accuracy
(equal to the library's), the curve PNG saved with the run, run store records and the report
section; every bad input -> one ``fortify: error:`` line, exit 2, nothing already written lost.

A LeNet-300-100 trained for one short epoch on mnist-5k is saved once per module."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from fortify import data, models
from fortify.certify import certified_accuracy
from fortify.cli import main
from fortify.store import RunStore
from fortify.threat import ThreatModel
from _cli_helpers import error_line as _error_line, save_trained_model


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_trained_model(tmp_path_factory.mktemp("model"))


def test_help_documents_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["certify", "--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for opt in ("--method NAME", "ibp | crown | alpha-crown | crown-ibp | smoothing | milp", "--threat NORM:EPS", "--n N",
                "--sigma S", "--samples N", "--time-limit S", "--eps-grid", "--compare", "--curve-points K"):
        assert opt in out, opt


def test_crown_end_to_end_matches_the_library(model_file: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "runs"
    rc = main(["certify", str(model_file), "--out", str(out), "--method", "crown", "--threat", "linf:0.02",
               "--n", "12", "--curve-points", "3", "--compare", "ibp", "-q"])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    store = RunStore(out / "fortify.db")
    (rec,) = store.list_runs()
    rec = store.get_run(rec.id)
    assert rec.verb == "certify" and rec.status == "ok"
    assert rec.config["stages"] == ["load", "accuracy", "certify", "report"]
    assert rec.config["certify"]["method"] == "crown" and rec.config["certify"]["threat"] == "linf:0.02"
    final = store.final_metrics(rec.id)
    x, y = data.load("mnist-5k", "test", limit=12)
    ref = certified_accuracy(models.load(model_file), x, y, ThreatModel("linf", 0.02), "crown")
    assert final["certify/certified_accuracy"] == pytest.approx(ref)
    line = printed.out.strip().splitlines()[1]
    assert line == f"certified_accuracy[crown,linf:0.02]={ref:.4f} n=12"

    run_dir = Path(rec.run_dir)
    arts = {a.name: Path(a.path) for a in rec.artefacts}
    assert arts["certified_curve"] == run_dir / "certify" / "certified_curve.png" and arts["certified_curve"].is_file()
    doc = json.loads(arts["certification_json"].read_text())
    crown, ibp = doc["curves"]
    assert crown["eps"] == pytest.approx([0.0, 0.01, 0.02]) and crown["accuracy"][-1] == pytest.approx(ref)
    assert all(c >= i for c, i in zip(crown["accuracy"], ibp["accuracy"]))
    html = (run_dir / "report.html").read_text()
    assert "Certification" in html and "certify/certified_curve.png" in html and "data:image/png;base64," in html


def test_smoothing_and_milp(model_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "runs"
    assert main(["certify", str(model_file), "--out", str(out), "--method", "smoothing", "--sigma", "0.25",
                 "--samples", "100", "--n", "6", "-q"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[1].startswith("certified_accuracy[smoothing,l2:0.5]=")
    assert main(["certify", str(model_file), "--out", str(out), "--method", "milp", "--threat", "linf:0.001",
                 "--n", "2", "--curve-points", "0"]) == 0
    shown = " ".join(capsys.readouterr().out.split())
    assert "certified accuracy (milp, linf:0.001, 2 images)" in shown
    store = RunStore(out / "fortify.db")
    milp, smooth = (store.get_run(r.id) for r in store.list_runs())
    m = store.final_metrics(milp.id)
    assert m["certify/certified_accuracy"] * 2 == m.get("certify/status[verified]", 0)
    assert smooth.config["certify"]["threat"] == "l2:0.5" and smooth.config["certify"]["samples"] == 100
    assert "certify/abstain_rate" in store.final_metrics(smooth.id)


@pytest.mark.parametrize("args, text", [
    (["--method", "magic"], "unknown certifier 'magic'; allowed:"),
    (["--method", "smoothing", "--threat", "linf:0.1"], "'smoothing' does not support norm 'linf'"),
    (["--method", "milp", "--threat", "l2:0.1"], "'milp' does not support norm 'l2'"),
    (["--threat", "linf:-0.1"], "eps must be"),
    (["--threat", "l9:1"], "unknown norm 'l9'"),
    (["--threat", "0.1"], "threat must look like NORM:EPS"),
    (["--eps-grid", "0.1,-0.2"], "curve_eps"),
    (["--compare", "smoothing"], "cannot be compared"),
    (["--n", "0"], "certify.n must be"),
])
def test_bad_options_one_line_before_anything_is_written(args: list[str], text: str, model_file: Path,
                                                         tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "runs"
    assert text in _error_line(capsys, ["certify", str(model_file), "--out", str(out), *args])
    assert not out.exists()


def test_unsupported_layer_and_label_mismatch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "runs"
    lenet = tmp_path / "lenet.safetensors"
    models.save(models.create("lenet5", in_shape=(1, 28, 28), num_classes=10), lenet, {"dataset": "mnist-5k"})
    line = _error_line(capsys, ["certify", str(lenet), "--out", str(out), "--method", "milp", "--threat",
                                "linf:0.01", "--n", "2", "-q"])
    assert "(MaxPool) is not supported by the MILP verifier" in line and "layer '" in line
    five = tmp_path / "five.safetensors"
    models.save(models.create("mlp", in_shape=(1, 28, 28), num_classes=5), five, {"dataset": "mnist-5k"})
    line = _error_line(capsys, ["certify", str(five), "--out", str(out), "data.test_limit=50", "-q"])
    assert "label 9 but the model has 5 classes" in line
    runs = RunStore(out / "fortify.db").list_runs()
    assert [r.status for r in runs] == ["failed", "failed"] and runs[1].error.startswith("[certify] ")
    assert all((Path(r.run_dir) / "report.json").is_file() for r in runs) and lenet.is_file() and five.is_file()
