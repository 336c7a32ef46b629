"""``fortify export MODEL --onnx [--out PATH] [--int8 dynamic|static]``: the file written runs in
onnxruntime (checked here independently) with the torch model's logits (float) or classes (int8),
its size is printed and recorded in the run store; bad input -> one line, exit 2, nothing lost."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fortify import data, models
from fortify.cli import main
from fortify.store import RunStore
from _cli_helpers import error_line as _error_line, save_trained_model


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_trained_model(tmp_path_factory.mktemp("model"), "small-cnn", n=400, lr=3e-3, channels=(4, 8), hidden=32)


def _ort(path: Path, x: torch.Tensor) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x.numpy().astype(np.float32)})[0]


def test_float_and_int8_exports_agree_with_torch(model_file: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    runs, dest = tmp_path / "runs", tmp_path / "m.onnx"
    assert main(["export", str(model_file), "--onnx", "--out", str(dest), "--runs", str(runs), "-q",
                 "data.test_limit=200"]) == 0
    out = capsys.readouterr().out
    x, y = data.load("mnist-5k", "test", limit=200)
    with torch.no_grad():
        ref = models.load(model_file)(x).numpy()
    np.testing.assert_allclose(_ort(dest, x), ref, atol=1e-4, rtol=1e-3)
    assert f"{dest}: {dest.stat().st_size:,} bytes" in out
    store = RunStore(runs / "fortify.db")
    (rec,) = store.list_runs()
    rec = store.get_run(rec.id)
    assert rec.verb == "export" and rec.status == "ok" and rec.config["stages"] == ["load", "export", "report"]
    assert {a.name: Path(a.path) for a in rec.artefacts}["onnx_model"] == dest
    assert store.final_metrics(rec.id)["export/onnx_bytes"] == dest.stat().st_size

    # int8 static into the run folder (default path): >= 99% of the classes agree, the file is smaller
    assert main(["export", str(model_file), "--onnx", "--int8", "static", "--runs", str(runs), "-q",
                 "data.test_limit=200", "data.train_limit=200"]) == 0
    capsys.readouterr()
    rec8 = store.get_run(next(r.id for r in store.list_runs() if r.id != rec.id))
    q = Path(rec8.run_dir) / "model.int8.onnx"
    assert q.is_file() and q.stat().st_size < 0.5 * dest.stat().st_size
    assert float((_ort(q, x).argmax(1) == ref.argmax(1)).mean()) >= 0.99


def test_bad_inputs_one_line_exit_2_nothing_lost(model_file: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs"
    dest = tmp_path / "keep.onnx"
    dest.write_bytes(b"old contents")
    assert "--onnx" in _error_line(capsys, ["export", str(model_file), "--runs", str(runs)])
    assert "int8" in _error_line(capsys, ["export", str(model_file), "--onnx", "--int8", "int4"])
    assert "does not exist or is not writable" in _error_line(
        capsys, ["export", str(model_file), "--onnx", "--out", str(tmp_path / "missing" / "m.onnx"), "--runs",
                 str(runs)])
    assert not runs.exists()
    corrupt = tmp_path / "bad.safetensors"
    corrupt.write_bytes(b"\x00not a model")
    _error_line(capsys, ["export", str(corrupt), "--onnx", "--out", str(dest), "--runs", str(runs)])
    assert dest.read_bytes() == b"old contents" and corrupt.read_bytes() == b"\x00not a model"
    blocker = tmp_path / "file"
    blocker.write_text("keep")
    assert "not writable" in _error_line(capsys, ["export", str(model_file), "--onnx", "--runs",
                                                  str(blocker / "runs")])
    assert blocker.read_text() == "keep"
