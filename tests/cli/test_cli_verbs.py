"""CLI: --help on every verb; every bad input that reaches the CLI -> exit 2 and one stderr line
``fortify: error: ...`` (no traceback), with nothing already written lost."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fortify import models
from fortify.cli import VERBS, main
from fortify.store import RunStore
from _cli_helpers import error_line as _error_line

SCRIPT = Path(sys.executable).with_name("fortify")


def _cli(*argv: str) -> list[str]:
    """The command that runs the installed console script (or the module entry point)."""
    if SCRIPT.exists():
        return [str(SCRIPT), *argv]
    return [sys.executable, "-c", "import sys; from fortify.cli import main; sys.exit(main())", *argv]


@pytest.mark.parametrize("verb", sorted(VERBS.names()) + ["runs ls", "runs show"])
def test_help_on_every_verb(verb: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main([*verb.split(), "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: fortify {verb}") and "--help" in out


def test_top_level_help_lists_every_verb(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    out = capsys.readouterr().out
    assert {"train", "evaluate", "run", "runs"} <= set(VERBS.names())
    assert all(v in out for v in VERBS.names())


def test_console_script_help_and_error_exit(tmp_path: Path) -> None:
    env = {**os.environ, "FORTIFY_STORE": str(tmp_path / "s.db")}
    ok = subprocess.run(_cli("--help"), capture_output=True, text=True, env=env, timeout=120)
    assert ok.returncode == 0 and "usage: fortify" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: 3\n  lr: [0.1,\n")
    r = subprocess.run(_cli("run", "--recipe", str(bad), "--out", str(tmp_path / "o")), capture_output=True,
                       text=True, env=env, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith(f"fortify: error: malformed YAML in {bad} at line ")
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()


def test_config_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = ["--out", str(tmp_path / "runs")]
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  name: [mnist\n")
    assert "at line" in _error_line(capsys, ["run", "--recipe", str(bad), *out])
    line = _error_line(capsys, ["run", "train.epoch=2", *out])
    assert "'train.epoch'" in line and "epochs" in line
    assert "sgd, adam" in _error_line(capsys, ["train", "train.optimizer=rmsprop", *out])
    assert "unknown dataset 'nope'; allowed:" in _error_line(capsys, ["run", "data.name=nope", *out])
    assert "unknown model 'nope'; allowed:" in _error_line(capsys, ["train", "--model", "nope", *out])
    assert "unknown recipe 'nope'" in _error_line(capsys, ["run", "--recipe", "nope", *out])
    assert "unrecognized arguments: --bogus" in _error_line(capsys, ["run", "--bogus", *out])
    assert "invalid int value" in _error_line(capsys, ["run", "--seed", "x", *out])
    assert "must look like key=value" in _error_line(capsys, ["run", "oops", *out])
    assert "unknown verb 'nosuchverb'" in _error_line(capsys, ["nosuchverb"])
    assert not (tmp_path / "runs").exists()  # validation happens before anything is written


def test_unwritable_out_and_unknown_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("precious")
    line = _error_line(capsys, ["run", "--out", str(blocker / "runs"), "train.epochs=1"])
    assert "is not writable" in line and blocker.read_text() == "precious"
    store = tmp_path / "s.db"
    RunStore(store).start_run("run", argv=[], config={}, seed=0, run_id="20260101-000000-abcdef")
    assert "unknown run id 'nope'" in _error_line(capsys, ["runs", "show", "nope", "--store", str(store)])
    assert "no run store" in _error_line(capsys, ["runs", "ls", "--store", str(tmp_path / "none.db")])
    RunStore(store).finish_run("20260101-000000-abcdef", "failed", "[train] it broke")
    assert main(["runs", "ls", "--store", str(store)]) == 0
    listing = capsys.readouterr().out
    assert "failed" in listing and "20260101-000000-abcdef  [train] it broke" in listing


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (self.marker, "w"))


def test_bad_model_files_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = ["--out", str(tmp_path / "runs"), "data.test_limit=20", "-q"]
    good = tmp_path / "digits.safetensors"
    models.save(models.create("small-cnn", in_shape=(1, 8, 8), num_classes=10), good, {"dataset": "digits"})
    corrupt = tmp_path / "corrupt.safetensors"
    blob = bytearray(good.read_bytes())
    corrupt.write_bytes(bytes(blob[: len(blob) // 2]))
    assert str(corrupt) in _error_line(capsys, ["evaluate", str(corrupt), *out])
    evil = tmp_path / "evil.pt"
    marker = tmp_path / "pwned"
    torch.save({"w": _Evil(str(marker))}, evil)
    line = _error_line(capsys, ["evaluate", str(evil), "--architecture", "small-cnn", *out])
    assert "refused" in line and not marker.exists()
    # wrong input shape: an 8x8 (digits) model evaluated on 28x28 mnist-5k; the run is recorded as failed
    line = _error_line(capsys, ["evaluate", str(good), "--dataset", "mnist-5k", *out])
    assert "(1, 28, 28)" in line and "(1, 8, 8)" in line
    runs = RunStore(tmp_path / "runs" / "fortify.db").list_runs()
    assert [r.status for r in runs] == ["failed"] * 3  # corrupt and refused files fail in the load stage
    rec = runs[0]
    assert rec.verb == "evaluate" and rec.error.startswith("[accuracy] ")
    assert all(r.error.startswith("[load] ") for r in runs[1:])
    assert (Path(rec.run_dir) / "config.json").is_file() and (Path(rec.run_dir) / "report.json").is_file()
    assert good.is_file()  # the input model is untouched
