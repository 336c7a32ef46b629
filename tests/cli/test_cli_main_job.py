"""The default main job end to end on a tiny budget: every default stage runs (robust training,
clean accuracy, attack cascade, certification, compression, save, report) and lands in the run
store, report.json, report.html and the printed summary; the certified accuracy never exceeds the
robust accuracy measured on the same images (a certified point cannot be broken)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from fortify.cli import main
from fortify.config import load_config
from fortify.store import RunStore

TINY = ["data.train_limit=400", "data.test_limit=100", "train.epochs=2", "train.batch_size=100",
        "robustness.n=30", "robustness.curve_points=0", "certify.n=30", "certify.curve_points=0",
        "compress.n_robust=30", "compress.n_test=100", "compress.repeats=1", "certify.threat=linf:0.3",
        "audit.n=40", "audit.n_fit=200", "audit.n_ood=50", "audit.n_adv=20", "audit.n_corrupt=40",
        "audit.adaptive_steps=5", "compress.n_drift=16"]


def test_default_main_job_runs_every_stage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    default = load_config()
    assert default.task.name == "pgd_at" and "robustness" in default.stages and "compress" in default.stages
    out = tmp_path / "runs"
    rc = main(["run", "--out", str(out), "--threads", "1", *TINY])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    for label in ("clean test accuracy", "robust accuracy", "certified accuracy", "compressed model"):
        assert label in printed.out, label
    store = RunStore(out / "fortify.db")
    (rec,) = store.list_runs()
    rec = store.get_run(rec.id)
    final = store.final_metrics(rec.id)
    assert rec.status == "ok" and rec.config["stages"] == default.stages
    rob, cert = final["robustness/robust_accuracy[linf:0.3]"], final["certify/certified_accuracy"]
    assert 0.0 <= cert <= rob <= final["robustness/clean_accuracy"] <= 1.0
    assert final["compress/bytes[compressed]"] < final["compress/bytes[original]"]
    assert any(m.stage == "train" and m.key == "robust_acc" for m in rec.metrics)  # per-epoch monitor ran
    run_dir = Path(rec.run_dir)
    report = json.loads((run_dir / "report.json").read_text())
    titles = [s["title"] for s in report["sections"]]
    assert titles == ["Training", "Clean accuracy", "Robustness (attacks)", "Certification", "Compression",
                      "Explanations", "Audit: calibration, detection, corruptions"]
    html = (run_dir / "report.html").read_text()
    assert all(t in html for t in titles)
