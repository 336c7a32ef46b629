"""``fortify audit MODEL``: the tables on stdout, JSON and figures saved with the run, records in the run store,
the same ECE as the library; bad input -> one ``fortify: error:`` line and exit 2."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from fortify import data, models
from fortify.audit.calibration import calibration_report, predict_probs
from fortify.cli import main
from fortify.store import RunStore
from _cli_helpers import error_line, save_trained_model


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_trained_model(tmp_path_factory.mktemp("models"), "mlp", n=300)


def test_audit_end_to_end(model_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # wide tables: no folded cells
    out = tmp_path / "runs"
    rc = main(["audit", str(model_file), "--out", str(out), "--sections", "calibration,ood,adversarial",
               "--detectors", "msp,energy", "--ood-sets", "gaussian-noise", "--n", "40", "--n-fit", "100",
               "--eps", "0.1", "audit.n_adv=10", "audit.adaptive_steps=3", "audit.pgd_steps=3", "audit.bootstrap=10"])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    assert "calibration" in printed.out and "adaptive" in printed.out and "gaussian-noise" in printed.out
    store = RunStore(out / "fortify.db")
    (rec,) = store.list_runs()
    rec = store.get_run(rec.id)
    assert rec.verb == "audit" and rec.status == "ok" and rec.config["stages"] == ["load", "audit", "report"]
    final = store.final_metrics(rec.id)
    x, y = data.load("mnist-5k", "test", limit=40)
    ref = calibration_report(predict_probs(models.load(model_file), x[20:]), y[20:])
    assert final["audit/model/uncalibrated/ece"] == pytest.approx(ref.ece, abs=1e-6)
    run_dir = next(p for p in out.iterdir() if p.is_dir())
    doc = json.loads((run_dir / "audit" / "audit.json").read_text())
    assert {r["kind"] for r in doc["models"]["model"]["adversarial"]["rows"]} == {"static", "adaptive"}
    assert (run_dir / "audit" / "reliability.png").is_file()


@pytest.mark.parametrize("argv,needle", [
    (["--sections", "calibration,vibes"], "vibes"),
    (["--detectors", "nope"], "nope"),
    (["--eps", "a,b"], "--eps"),
    (["--detectors", ","], "--detectors"),
    (["--n", "2"], "audit.n"),
    (["--ood-sets", "nope"], "nope"),
])
def test_bad_input_is_one_line(model_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                               argv: list[str], needle: str) -> None:
    line = error_line(capsys, ["audit", str(model_file), "--out", str(tmp_path / "runs"), *argv])
    assert needle in line


def test_missing_model_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = error_line(capsys, ["audit", str(tmp_path / "nope.safetensors"), "--out", str(tmp_path / "runs")])
    assert "nope.safetensors" in line
