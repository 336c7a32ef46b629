"""``fortify explain MODEL --methods ... --metrics ... --n N``: the metric x method table (equal to the
library's metrics on the same images and targets), verdicts, the attribution grid and JSON saved with
the run, run store records; every bad input -> one ``fortify: error:`` line, exit 2, earlier runs kept.

A small-cnn and an MLP, each trained for one short pass on 500 mnist-5k images, are saved once per module."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fortify import data, models
from fortify.cli import main
from fortify.explain import ATTRIBUTION_METRICS, ATTRIBUTIONS
from fortify.store import RunStore
from _cli_helpers import error_line as _error_line, save_trained_model


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("models")
    return {"cnn": save_trained_model(folder, "small-cnn", n=500), "mlp": save_trained_model(folder, n=500)}


def test_help_documents_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["explain", "--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for opt in ("--methods A,B", "--metrics A,B", "--n N", "--target T", "--target-layer NAME", "--data PATH",
                "--dataset NAME", "--store PATH", "--seed", "integrated-gradients", "randomisation"):
        assert opt in out, opt


def test_end_to_end_matches_the_library(files: dict[str, Path], tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "runs"
    rc = main(["explain", str(files["cnn"]), "--out", str(out), "--methods", "saliency,gradcam",
               "--metrics", "deletion,insertion,randomisation", "--n", "6", "--target-layer", "2"])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    text = printed.out
    assert "attribution metrics" in text and "random" in text and "deletion" in text
    verdict_lines = [ln for ln in text.splitlines() if ln.startswith(("saliency: ", "gradcam: "))]
    assert len(verdict_lines) == 2 and all("randomisation check" in ln for ln in verdict_lines), verdict_lines

    store = RunStore(out / "fortify.db")
    (rec,) = store.list_runs()
    rec = store.get_run(rec.id)
    assert rec.verb == "explain" and rec.status == "ok" and rec.config["stages"] == ["load", "explain", "report"]
    assert rec.config["explain"]["methods"] == ["saliency", "gradcam"] and rec.config["explain"]["n"] == 6
    final = store.final_metrics(rec.id)

    # reference: the library on the same six images, explaining the predicted class
    model = models.load(files["cnn"])
    x, _ = data.load("mnist-5k", "test", limit=6)
    with torch.no_grad():
        pred = model.eval()(x).argmax(dim=1)
    for method, kwargs in (("saliency", {}), ("gradcam", {"layer": "2"})):
        attr = ATTRIBUTIONS.create(method, **kwargs)(model, x, pred)
        for metric in ("deletion", "insertion"):
            ref = ATTRIBUTION_METRICS.create(metric)(model, x, attr, pred).mean
            assert final[f"explain/{method}/{metric}"] == pytest.approx(ref, abs=1e-6), (method, metric)
    rnd = torch.rand(x.shape, generator=torch.Generator().manual_seed(0))
    ref = ATTRIBUTION_METRICS.create("deletion")(model, x, rnd, pred).mean
    assert final["explain/random/deletion"] == pytest.approx(ref, abs=1e-6)
    assert "explain/saliency/randomisation" in final and "explain/random/randomisation" not in final

    run_dir = Path(rec.run_dir)
    arts = {a.name: Path(a.path) for a in rec.artefacts}
    assert arts["attributions"] == run_dir / "explain" / "attributions.png"
    assert arts["attributions"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = json.loads(arts["explain_json"].read_text())
    assert doc["n"] == 6 and set(doc["verdicts"]) == {"saliency", "gradcam"}
    assert len(doc["table"]["saliency"]["deletion"]["values"]) == 6
    report = json.loads((run_dir / "report.json").read_text())
    (sec,) = [s for s in report["sections"] if s["stage"] == "explain"]
    assert sec["figures"] == ["explain/attributions.png"] and len(sec["tables"]) == 2


def test_quiet_prints_one_line_per_method(files: dict[str, Path], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["explain", str(files["mlp"]), "--out", str(tmp_path / "runs"), "--n", "4", "--metrics", "deletion",
               "--target", "label", "-q"])
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("explain[")]
    assert rc == 0
    assert [ln.split("]")[0] for ln in lines] == ["explain[saliency", "explain[gradient-x-input",
                                                  "explain[integrated-gradients"]
    assert all(" deletion=" in ln and " n=4 verdict=" in ln for ln in lines)


def _nan_npz(tmp_path: Path) -> Path:
    x = np.random.default_rng(0).random((20, 1, 28, 28), dtype=np.float32)
    x[3, 0, 5, 5] = np.nan
    path = tmp_path / "nan.npz"
    np.savez(path, x=x, y=np.arange(20) % 10)
    return path


@pytest.mark.parametrize("model, args, text", [
    ("mlp", ["--methods", "nope"], "unknown attribution 'nope'; allowed: deeplift"),
    ("mlp", ["--metrics", "deletion,nope"], "unknown attribution metric 'nope'; allowed: completeness"),
    ("mlp", ["--methods", ""], "--methods needs at least one"),
    ("mlp", ["--n", "0"], "explain.n must be"),
    ("mlp", ["--target", "-1"], "explain.target must be a class index"),
    ("mlp", ["--target", "best"], "explain.target must be predicted, label or a class index"),
    ("mlp", ["--target-layer", "1"], "add gradcam to explain.methods"),
    ("mlp", ["explain.options={saliency: {steps: 3}}"], "explain.options.saliency"),
    ("mlp", ["--target", "10"], "target 10 is out of range: the model has 10 classes"),
    ("mlp", ["--methods", "gradcam"], "has no convolution layer: Grad-CAM needs one"),
    ("cnn", ["--methods", "gradcam", "--target-layer", "99"], "layer '99' does not exist"),
    ("mlp", ["--data", "NAN"], "NaN"),
])
def test_bad_input_one_line_exit_2_earlier_runs_kept(model: str, args: list[str], text: str, files: dict[str, Path],
                                                     tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "runs"
    assert main(["explain", str(files[model]), "--out", str(out), "--n", "2", "--metrics", "deletion", "-q",
                 "explain.options={integrated-gradients: {steps: 2}}"]) == 0
    capsys.readouterr()
    (first,) = RunStore(out / "fortify.db").list_runs()
    args = [str(_nan_npz(tmp_path)) if a == "NAN" else a for a in args]
    line = _error_line(capsys, ["explain", str(files[model]), "--out", str(out), "--n", "4", "-q", *args])
    assert text in line, line
    runs = {r.id: r for r in RunStore(out / "fortify.db").list_runs()}
    assert runs[first.id].status == "ok" and (Path(first.run_dir) / "explain" / "explain.json").is_file()
    assert all(r.status == "failed" for i, r in runs.items() if i != first.id)


def test_compare_model_side_by_side(files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--compare MODEL2: the second model's verdicts and the per-image gap are printed and logged."""
    out = tmp_path / "runs"
    rc = main(["explain", str(files["cnn"]), "--out", str(out), "--methods", "saliency", "--metrics", "deletion",
               "--n", "4", "--compare", str(files["mlp"]), "--compare-label", "mlp"])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    line = next(ln for ln in printed.out.splitlines() if ln.startswith("saliency (mlp): "))
    assert "run minus mlp: deletion" in line
    store = RunStore(out / "fortify.db")
    (rec,) = store.list_runs()
    final = store.final_metrics(rec.id)
    mlp = models.load(files["mlp"])
    x, _ = data.load("mnist-5k", "test", limit=4)
    with torch.no_grad():
        pred = mlp(x).argmax(dim=1)
    attr = ATTRIBUTIONS.create("saliency")(mlp, x, pred)
    ref = ATTRIBUTION_METRICS.create("deletion")(mlp, x, attr, pred).mean
    assert final["explain/mlp/saliency/deletion"] == pytest.approx(ref, abs=1e-6)
    bad = ["explain", str(files["cnn"]), "--out", str(out), "--compare", str(tmp_path / "none.safetensors")]
    assert _error_line(capsys, bad).startswith("fortify: error: explain.compare")
