"""End to end on a tiny budget: `fortify run` (300 images, 1 epoch) writes the model, report.json,
report.html and the curve, records the run; `fortify evaluate` of the saved model reproduces the
accuracy; `fortify runs ls/show` list it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from fortify.cli import main
from fortify.store import RunStore


def test_run_then_evaluate_then_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "runs"
    rc = main(["run", "--out", str(out), "--seed", "3", "train.epochs=1", "data.train_limit=300",
               "data.test_limit=200", "train.batch_size=50", "--quiet", "--threads", "1",
               "stages=[train, evaluate, save, report]", "task.name=standard", "task.args={}"])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    # 'evaluate' is the clean-accuracy stage's old name: it runs as 'accuracy' with one deprecation line
    notes = [ln for ln in printed.err.splitlines() if "'evaluate' is now called 'accuracy'" in ln]
    assert len(notes) == 1 and notes[0].startswith("fortify: warning: ")
    store = RunStore(out / "fortify.db")
    (rec,) = store.list_runs()
    rec = store.get_run(rec.id)
    assert printed.out.startswith(f"run {rec.id} ok clean_accuracy=")
    assert rec.config["stages"] == ["train", "accuracy", "save", "report"]
    assert rec.status == "ok" and rec.verb == "run" and rec.seed == 3
    assert rec.config["train"]["epochs"] == 1 and rec.config["train"]["seed"] == 3
    assert rec.config["data"]["train_limit"] == 300 and "train.epochs=1" in rec.argv
    run_dir = Path(rec.run_dir)
    assert run_dir == out / rec.id
    for name in ("model.safetensors", "report.json", "report.html", "training_curve.png", "config.json"):
        assert (run_dir / name).is_file(), name
    arts = {a.name: a.path for a in rec.artefacts}
    assert {"model", "report_json", "report_html", "training_curve", "config"} <= set(arts)
    final = store.final_metrics(rec.id)
    acc = final["accuracy/clean_accuracy"]
    assert 0.0 <= acc <= 1.0 and final["accuracy/test_examples"] == 200 and final["train/train_examples"] == 300
    assert any(m.stage == "train" and m.step == 1 and m.key == "train_loss" for m in rec.metrics)

    report = json.loads((run_dir / "report.json").read_text())
    assert report["run_id"] == rec.id and report["status"] == "ok"
    assert report["metrics"]["accuracy"]["clean_accuracy"] == acc
    assert len(report["history"]) == 1 and report["history"][0]["epoch"] == 1
    assert report["config"] == rec.config and report["versions"] == rec.versions
    assert set(report["timing"]) >= {"train", "accuracy", "save", "report", "total"}
    assert [s["title"] for s in report["sections"]] == ["Training", "Clean accuracy"]
    html = (run_dir / "report.html").read_text()
    assert rec.id in html and "Clean accuracy" in html and "data:image/png;base64," in html

    # the saved model, evaluated by the evaluate verb on the same 200 images, gives the same accuracy
    rc = main(["evaluate", str(run_dir / "model.safetensors"), "--out", str(out), "data.test_limit=200", "-q"])
    assert rc == 0, capsys.readouterr().err
    ev = store.list_runs()[0]
    assert ev.verb == "evaluate" and ev.status == "ok" and ev.config["data"]["name"] == "mnist-5k"
    assert store.final_metrics(ev.id)["accuracy/clean_accuracy"] == pytest.approx(acc)
    capsys.readouterr()

    assert main(["runs", "ls", "--out", str(out)]) == 0
    listing = capsys.readouterr().out
    assert rec.id in listing and ev.id in listing
    assert main(["runs", "show", rec.id[:-2], "--out", str(out), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["id"] == rec.id and shown["config"] == rec.config
    assert main(["runs", "show", rec.id, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "clean_accuracy" in text and "model.safetensors" in text
    assert main(["run", "--resume", rec.id, "--out", str(out)]) == 2
    assert "finished ok; nothing to resume" in capsys.readouterr().err
    assert main(["run", "--resume", rec.id, "train.epochs=2", "--out", str(out)]) == 2
    assert "drop --recipe and KEY=VALUE" in capsys.readouterr().err
    assert main(["train", "--resume", "nope", "--out", str(out)]) == 2
    assert "unknown run id 'nope'" in capsys.readouterr().err
