"""``fortify evaluate MODEL --threat ...``: robust accuracy per threat and for the union, the
contribution table, sanity flags, curves; recorded in the run store and the report; resumable
state; every bad input -> one ``fortify: error:`` line, exit 2, nothing already written lost.

A LeNet-300-100 trained for one short epoch on mnist-5k is saved once per module."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fortify import data, models
from fortify.cli import main
from fortify.data.idx import write_idx
from fortify.evaluate import robust_accuracy
from fortify.store import RunStore
from _cli_helpers import error_line as _error_line, save_trained_model


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_trained_model(tmp_path_factory.mktemp("model"))


def test_help_documents_the_robustness_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["evaluate", "--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for opt in ("--threat NORM:EPS", "--preset NAME", "fast", "standard", "thorough", "--n N", "--budget X",
                "--state PATH", "--resume ID", "--dataset NAME", "--attacks", "union", "sanity"):
        assert opt in out, opt


def test_robust_evaluation_end_to_end(model_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "runs"
    rc = main(["evaluate", str(model_file), "--out", str(out), "--threat", "linf:0.1", "--threat", "l2:1",
               "--preset", "fast", "--n", "30", "--budget", "0.2", "--curve-points", "3", "-q"])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    lines = printed.out.strip().splitlines()
    store = RunStore(out / "fortify.db")
    (rec,) = store.list_runs()
    rec = store.get_run(rec.id)
    assert rec.verb == "evaluate" and rec.status == "ok" and rec.config["stages"] == [
        "load", "accuracy", "robustness", "report"]
    assert rec.config["robustness"]["threats"] == ["linf:0.1", "l2:1"] and rec.config["robustness"]["n"] == 30
    final = store.final_metrics(rec.id)
    assert lines[0].startswith(f"run {rec.id} ok clean_accuracy=")
    fields = dict(f.split("=") for f in lines[1].split())
    assert float(fields["robust_accuracy[linf:0.1]"]) == pytest.approx(final["robustness/robust_accuracy[linf:0.1]"], abs=1e-4)
    assert float(fields["robust_accuracy[union]"]) == pytest.approx(final["robustness/robust_accuracy"], abs=1e-4)

    # the CLI reports what the library computes on the same 30 images with the same seed
    x, y = data.load("mnist-5k", "test", limit=30)
    ref = robust_accuracy(models.load(model_file), x, y, ["linf:0.1", "l2:1"], preset="fast", budget=0.2, seed=0)
    assert final["robustness/robust_accuracy[linf:0.1]"] == pytest.approx(ref.by_threat()["linf:0.1"])
    assert final["robustness/robust_accuracy[l2:1]"] == pytest.approx(ref.by_threat()["l2:1"])
    assert final["robustness/robust_accuracy"] == pytest.approx(ref.robust_accuracy)
    assert final["robustness/robust_accuracy"] <= min(ref.by_threat().values()) <= final["robustness/clean_accuracy"]
    assert "accuracy/clean_accuracy" in final  # clean accuracy is still measured (whole test split)

    run_dir = Path(rec.run_dir)
    arts = {a.name: Path(a.path) for a in rec.artefacts}
    assert arts["robustness_curves"] == run_dir / "robustness" / "robustness_curves.png"
    assert all(arts[k].is_file() for k in ("robustness_curves", "evaluation_json", "robustness_state", "report_html"))
    doc = json.loads(arts["evaluation_json"].read_text())
    assert [t["threat"] for t in doc["threats"]] == ["linf:0.1", "l2:1"] and len(doc["curves"]) == 2
    assert {f["name"] for f in doc["flags"]} >= {"randomized_outputs", "zero_or_nan_gradients"}
    report = json.loads((run_dir / "report.json").read_text())
    sec = next(s for s in report["sections"] if s["stage"] == "robustness")
    assert sec["figures"] == ["robustness/robustness_curves.png"]
    assert [t["title"] for t in sec["tables"]][:3] == ["robust accuracy", "attack contributions: linf:0.1",
                                                       "attack contributions: l2:1"]
    html = (run_dir / "report.html").read_text()
    assert "Robustness (attacks)" in html and "sanity checks" in html and html.count("data:image/png;base64,") >= 1


def test_state_file_resumes_and_a_mismatch_loses_nothing(model_file: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    out, state = tmp_path / "runs", tmp_path / "cascade.safetensors"
    argv = ["evaluate", str(model_file), "--out", str(out), "--threat", "linf:0.1", "--n", "16", "--budget", "0.2",
            "--curve-points", "0", "--no-sanity", "--state", str(state)]
    assert main(argv) == 0
    shown = capsys.readouterr().out
    assert "attack contributions: linf:0.1" in shown and "apgd-ce" in shown  # the contribution table
    blob = state.read_bytes()
    assert main([*argv, "-q"]) == 0
    capsys.readouterr()
    store = RunStore(out / "fortify.db")
    second, first = store.list_runs()
    m1, m2 = store.final_metrics(first.id), store.final_metrics(second.id)
    assert m1["robustness/robust_accuracy"] == m2["robustness/robust_accuracy"]
    assert state.read_bytes() == blob  # read back, nothing recomputed
    line = _error_line(capsys, [*argv[:7], "20", *argv[8:], "-q"])  # other images, same state file
    assert "was written for different inputs" in line and state.read_bytes() == blob
    assert Path(first.run_dir, "robustness", "evaluation.json").is_file()
    assert "finished ok; nothing to resume" in _error_line(capsys, ["evaluate", "--resume", first.id, "--out", str(out)])
    assert "drop MODEL" in _error_line(capsys, ["evaluate", str(model_file), "--resume", first.id, "--out", str(out)])


@pytest.mark.parametrize("args, text", [
    (["--attacks", "pgd,nope"], "unknown attack 'nope'; allowed:"),
    (["--preset", "slow"], "unknown preset 'slow'; allowed: fast, standard, thorough"),
    (["--threat", "linf:-0.3"], "eps must be"),
    (["--threat", "l5:1"], "unknown norm 'l5'"),
    (["--threat", "linf"], "threat must look like NORM:EPS"),
    (["--threat", "linf:abc"], "is not a number"),
    (["--threat", "l1:5", "--attacks", "square"], "attack 'square' does not support norm 'l1'"),
    (["--budget", "0"], "robustness.budget must be a number > 0"),
    (["--n", "0"], "robustness.n must be"),
])
def test_bad_options_one_line_before_anything_is_written(args: list[str], text: str, model_file: Path,
                                                         tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "runs"
    line = _error_line(capsys, ["evaluate", str(model_file), "--out", str(out), *args])
    assert text in line, line
    assert not out.exists()


def test_labels_the_model_cannot_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    five = tmp_path / "five.safetensors"
    models.save(models.create("mlp", in_shape=(1, 28, 28), num_classes=5), five, {"dataset": "mnist-5k"})
    line = _error_line(capsys, ["evaluate", str(five), "--out", str(tmp_path / "runs"), "--threat", "linf:0.1",
                                "data.test_limit=50"])
    assert "label 9 but the model has 5 classes" in line
    (rec,) = RunStore(tmp_path / "runs" / "fortify.db").list_runs()
    assert rec.status == "failed" and (Path(rec.run_dir) / "report.json").is_file() and five.is_file()


@pytest.mark.parametrize("corruption, text", [
    ("nan-floats", "expected uint8 images"),
    ("truncated", "t10k-images-idx3-ubyte"),
])
def test_corrupt_idx_in_data_dir(corruption: str, text: str, model_file: Path, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "fashion"
    d.mkdir()
    imgs = np.random.default_rng(0).random((10, 28, 28)).astype(np.float32)
    imgs[0, 0, 0] = np.nan
    if corruption == "nan-floats":
        write_idx(d / "t10k-images-idx3-ubyte", imgs)
    else:
        write_idx(d / "t10k-images-idx3-ubyte", (imgs[1:] * 255).astype(np.uint8))
        blob = (d / "t10k-images-idx3-ubyte").read_bytes()
        (d / "t10k-images-idx3-ubyte").write_bytes(blob[:-100])
    write_idx(d / "t10k-labels-idx1-ubyte", np.arange(10, dtype=np.uint8) % 10)
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    line = _error_line(capsys, ["evaluate", str(model_file), "--out", str(tmp_path / "runs"), "--threat", "linf:0.1",
                                "--dataset", "fashion-mnist", "--data-dir", str(d)])
    assert text in line
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before and model_file.is_file()


def test_unwritable_state_location(model_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("precious")
    line = _error_line(capsys, ["evaluate", str(model_file), "--out", str(tmp_path / "runs"), "--threat", "linf:0.1",
                                "--n", "4", "--budget", "0.1", "--curve-points", "0", "--no-sanity",
                                "--state", str(blocker / "state.safetensors"), "-q"])
    assert "cannot write evaluation state" in line and blocker.read_text() == "precious"


def test_a_relative_out_folder_writes_inside_the_run_folder_once(model_file: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    rc = main(["evaluate", str(model_file), "--threat", "linf:0.1", "--n", "8", "--preset", "fast",
               "--out", "runs", "-q"])
    assert rc == 0, capsys.readouterr().err
    (run,) = [p for p in Path("runs").iterdir() if p.is_dir()]
    assert (run / "robustness" / "evaluation.json").is_file()
    assert not (run / "runs").exists()
