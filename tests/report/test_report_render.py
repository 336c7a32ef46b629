"""Report: JSON is strict (no NaN), HTML is self-contained with tables and the embedded curve."""
from __future__ import annotations

import base64
import json
from pathlib import Path
from types import SimpleNamespace

from fortify.report import Section, Table, build_report, render_html, training_curve, write_html, write_json

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _history() -> list[dict]:
    return [{"epoch": e, "train_loss": 1.0 / e, "train_acc": 1 - 0.5 / e, "val_acc": None if e == 1 else 0.9,
             "val_loss": 0.5, "lr": 0.1, "wall_s": 1.0} for e in (1, 2, 3)]


def test_training_curve_png(tmp_path: Path) -> None:
    p = training_curve(_history(), tmp_path / "curve.png")
    assert p is not None and p.read_bytes()[:8] == PNG_MAGIC
    assert training_curve([], tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()
    assert training_curve([{"epoch": 1, "lr": 0.1}], tmp_path / "lr.png") is None


def test_json_and_html(tmp_path: Path) -> None:
    training_curve(_history(), tmp_path / "training_curve.png")
    sec = Section("Clean accuracy", stage="accuracy", text="a <b> c",
                  tables=[Table(["dataset", "acc"], [["mnist-5k", 0.975]])], figures=["training_curve.png"])
    config = SimpleNamespace(seed=7, to_dict=lambda: {"train": {"epochs": 3}})
    run = SimpleNamespace(run_id="r1", verb="run", config=config, versions={"torch": "2.13.0"},
                          metrics={"accuracy": {"clean_accuracy": 0.975, "bad": float("nan")}}, history=_history(),
                          artefacts={"model": "m.safetensors"}, sections=[sec], timing={"accuracy": 1.5})
    rep = build_report(run, status="failed", error="[x] boom")
    path = write_json(rep, tmp_path / "report.json")
    back = json.loads(path.read_text())
    assert back["metrics"]["accuracy"] == {"clean_accuracy": 0.975, "bad": None}
    assert back["history"][0]["val_acc"] is None and back["config"]["train"]["epochs"] == 3
    assert (back["run_id"], back["seed"], back["status"], back["error"]) == ("r1", 7, "failed", "[x] boom")
    assert back["timing"] == {"accuracy": 1.5} and back["versions"] == {"torch": "2.13.0"}
    assert back["sections"][0]["tables"][0]["rows"] == [["mnist-5k", 0.975]]
    html = write_html(back, tmp_path).read_text()
    assert html.startswith("<!doctype html>") and "clean_accuracy" in html and "0.975" in html
    assert "a &lt;b&gt; c" in html  # escaped
    b64 = html.split("data:image/png;base64,")[1].split("'")[0]
    assert base64.b64decode(b64) == (tmp_path / "training_curve.png").read_bytes()
    assert "http://" not in html and "https://" not in html  # self-contained
    assert "missing" in render_html({**back, "sections": [{"title": "x", "figures": ["nope.png"]}]}, tmp_path)
