"""``fortify compress MODEL --recipe NAME``: the printed table and the store hold the figures of the
artefact actually written (its bytes on disk, its reloaded accuracy); compress.json and the Pareto
PNG are in the run folder; the report has the section; --help lists the recipes; every bad input
(unknown recipe, sparsity outside [0, 1), rank 0, unsupported layer, corrupt model file,
unwritable --out) -> one ``fortify: error:`` line, exit 2, nothing already written lost."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from fortify import data, models
from fortify.cli import main
from fortify.store import RunStore
from _cli_helpers import error_line as _error_line, save_trained_model

LIMITS = ["data.train_limit=300", "data.test_limit=120", "compress.repeats=2", "compress.pgd_steps=5",
          "compress.square_queries=30"]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_trained_model(tmp_path_factory.mktemp("model"), n=600, lr=3e-3, hidden=(64, 32))


def test_help_lists_the_recipes(capsys: pytest.CaptureFixture[str]) -> None:
    from fortify.compress import RECIPES

    with pytest.raises(SystemExit) as e:
        main(["compress", "--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for name in RECIPES.names():
        assert f"{name}: " in out, name
    for opt in ("--recipe NAME", "--threat NORM:EPS", "--n N", "--dataset NAME", "--out DIR"):
        assert opt in out, opt


def test_int8_end_to_end_figures_of_the_file(model_file: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from fortify.compress import load

    out = tmp_path / "runs"
    rc = main(["compress", str(model_file), "--recipe", "int8-dynamic", "--threat", "linf:0.1", "--n", "20",
               "--out", str(out), *LIMITS])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    store = RunStore(out / "fortify.db")
    (rec,) = store.list_runs()
    rec = store.get_run(rec.id)
    assert rec.verb == "compress" and rec.status == "ok"
    assert rec.config["stages"] == ["load", "compress", "report"]
    assert rec.config["compress"]["recipe"] == "int8-dynamic" and rec.config["compress"]["threat"] == "linf:0.1"
    arts = {a.name: Path(a.path) for a in rec.artefacts}
    run_dir = Path(rec.run_dir)
    onnx = arts["compressed_model"]
    assert onnx == run_dir / "compress" / "model.onnx"
    assert arts["pareto"] == run_dir / "compress" / "pareto.png" and arts["pareto"].stat().st_size > 0
    final = store.final_metrics(rec.id)
    assert final["compress/bytes[compressed]"] == onnx.stat().st_size
    assert final["compress/bytes[original]"] > 3 * onnx.stat().st_size  # float32 -> int8 weights
    xt, yt = data.load("mnist-5k", "test", limit=120)
    with torch.no_grad():
        acc = float((load(str(onnx))(xt).argmax(1) == yt).float().mean())
        acc0 = float((models.load(model_file)(xt).argmax(1) == yt).float().mean())
    assert final["compress/clean_acc[compressed]"] == pytest.approx(acc)
    assert final["compress/clean_acc[original]"] == pytest.approx(acc0)
    for key in ("latency_b1_ms[compressed]", "latency_b256_ms[original]", "macs[original]", "robust_acc[compressed]"):
        assert f"compress/{key}" in final, key
    text = " ".join(printed.out.split())
    assert f"{onnx.stat().st_size:,}" in text and "CPU latency batch 256 (ms)" in text
    assert "square(30)+transfer-pgd(5)" in text
    doc = json.loads(arts["compress_json"].read_text())
    assert doc["measurements"][1]["bytes"] == onnx.stat().st_size and doc["n_robust"] == 20
    report = json.loads((run_dir / "report.json").read_text())
    assert any(s["title"] == "Compression" and s["figures"] == ["compress/pareto.png"] for s in report["sections"])


def test_bad_inputs_one_line_exit_2_nothing_lost(model_file: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "runs"
    base = ["compress", str(model_file), "--out", str(out), "-q", *LIMITS]
    assert "--recipe NAME is required" in _error_line(capsys, base)
    assert "unknown compression recipe 'nope'" in _error_line(capsys, [*base, "--recipe", "nope"])
    assert "sparsity must be a number in [0, 1)" in _error_line(
        capsys, [*base, "--recipe", "sparse", "compress.args.sparsity=1.5"])
    assert "rank must be an integer >= 1" in _error_line(
        capsys, [*base, "compress.steps=[{transform: low_rank, rank: 0}]"])
    assert not out.exists()  # config errors fail before any folder is made

    # a first good run, then errors that must not touch it
    assert main([*base, "compress.steps=[{transform: magnitude_prune, sparsity: 0.5}]", "--no-latency",
                 "--robust", "none"]) == 0
    capsys.readouterr()
    snapshot = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.suffix != ".db"}
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00garbage" * 10)
    assert "corrupt" in _error_line(capsys, ["compress", str(corrupt), "--out", str(out), "--recipe", "int8-dynamic"])
    assert corrupt.read_bytes() == b"\x00garbage" * 10
    blocker = tmp_path / "a-file"
    blocker.write_text("keep me")
    assert "not writable" in _error_line(capsys, [*base[:2], "--out", str(blocker / "runs"), "--recipe",
                                                  "int8-dynamic"])
    assert blocker.read_text() == "keep me"

    real_load = models.load

    def with_batchnorm(*a: object, **k: object) -> nn.Module:
        net = real_load(*a, **k)
        return nn.Sequential(nn.BatchNorm2d(1).eval(), *net)

    monkeypatch.setattr(models, "load", with_batchnorm)
    line = _error_line(capsys, [*base, "--recipe", "int8-static"])
    assert "BatchNorm2d" in line and "not supported" in line
    for p, blob in snapshot.items():
        assert p.read_bytes() == blob, p


def test_graph_prune_on_a_residual_network(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    net = models.create("resnet-mnist", in_shape=(1, 28, 28), num_classes=10, widths=(8, 8, 16))
    path = models.save(net.eval(), tmp_path / "resnet.safetensors", {"dataset": "mnist-5k"})
    rc = main(["compress", str(path), "--recipe", "graph-prune", "--dataset", "mnist-5k", "--n", "8",
               "--out", str(tmp_path / "runs"), "-q"])
    assert rc == 0, capsys.readouterr().err
    (doc,) = list((tmp_path / "runs").glob("*/compress/compress.json"))
    rows = {r["name"]: r for r in json.loads(doc.read_text())["measurements"]}
    assert rows["compressed"]["bytes"] < rows["original"]["bytes"]
    assert rows["compressed"]["params_total"] < rows["original"]["params_total"]
    assert rows["compressed"]["macs"] < rows["original"]["macs"]
