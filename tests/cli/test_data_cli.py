"""``fortify train --data PATH`` / ``data.path``: a user's own files through the whole train verb."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fortify.cli import main
from _cli_helpers import error_line


def _table(path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = ["a,b,colour,target"]
    for i in range(120):
        k = i % 2
        a, b = rng.normal(2.0 * k, 0.3), rng.normal(-k, 0.3)
        rows.append(f"{a:.4f},{b:.4f},{'red' if k else 'blue'},{'yes' if k else 'no'}")
    path.write_text("\n".join(rows) + "\n")


def test_train_on_a_csv_table_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _table(tmp_path / "t.csv")
    rc = main(["train", "--data", str(tmp_path / "t.csv"), "model.name=mlp", "model.args.hidden=[8]",
               "task.name=standard", "task.args={}", "train.epochs=20", "train.batch_size=16",
               "--out", str(tmp_path / "runs"), "-q"])
    assert rc == 0, capsys.readouterr().err
    (run,) = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["data"]["path"] == str(tmp_path / "t.csv") and cfg["data"]["name"].startswith("file:t-")
    report = json.loads((run / "report.json").read_text())
    accs = [v for stage in report["metrics"].values() for k, v in stage.items() if k == "clean_accuracy"]
    assert accs and accs[0] >= 0.9  # two well separated classes (and the colour column says it)


def test_train_on_an_npz_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(1)
    y = np.arange(200) % 2
    x = np.clip(rng.normal(0.3 + 0.4 * y[:, None, None, None], 0.1, (200, 1, 6, 6)), 0, 1).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    rc = main(["train", "--data", str(tmp_path / "d.npz"), "model.name=mlp", "model.args.hidden=[8]",
               "task.name=standard", "task.args={}", "train.epochs=2", "--out", str(tmp_path / "runs"), "-q"])
    assert rc == 0, capsys.readouterr().err


@pytest.mark.parametrize("content, extra, needle", [
    (None, [], "does not exist"),
    ("a,b\n1,2\n3,4\n", [], "no label column"),
    ("a,label\n1,x\n2,y\n", ["data.label=nope"], "'nope' not found"),
    ("a,label\n1,x\n2,y\n", ["data.test_fraction=1.5"], "data.test_fraction"),
])
def test_bad_user_data_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None,
                                   extra: list[str], needle: str) -> None:
    path = tmp_path / "u.csv"
    if content is not None:
        path.write_text(content)
    before = sorted(tmp_path.iterdir())
    line = error_line(capsys, ["train", "--data", str(path), "--out", str(tmp_path / "runs"), *extra])
    assert needle in line
    assert sorted(tmp_path.iterdir()) == before  # nothing written
