"""Live logs (issue 20 item 1): with stderr redirected to a file or a pipe, progress is written line by line while
the job runs, not at exit. The file test runs a real `fortify train` (tiny mnist-5k budget) and reads the log
while the process is alive; the pipe test reads the periodic plain lines of a step that never advances."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

CLI = "import sys; from fortify.cli import main; raise SystemExit(main(sys.argv[1:]))"
EPOCHS = 15
TINY = ["data.train_limit=600", "data.test_limit=100", f"train.epochs={EPOCHS}", "train.batch_size=100"]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "FORCE_TERMINAL", "TTY_COMPATIBLE")}
    env.update({"COLUMNS": "100", "FORTIFY_THREADS": "1", **extra})
    return env


def test_epoch_lines_reach_a_log_file_while_training_runs(tmp_path: Path) -> None:
    log = tmp_path / "train.log"
    cmd = [sys.executable, "-c", CLI, "train", "--recipe", "standard-mnist-5k", "--out", str(tmp_path / "runs"),
           "--threads", "1", *TINY]
    with log.open("w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=_env(), cwd=tmp_path)
        try:
            seen, alive = "", False
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:
                text = log.read_text()
                if f"epoch 1/{EPOCHS}  " in text:
                    alive, seen = proc.poll() is None, text
                    break
                if proc.poll() is not None:
                    break
                time.sleep(0.02)
            rc = proc.wait(timeout=240)
        finally:
            if proc.poll() is None:
                proc.kill()
    final = log.read_text()
    assert rc == 0, final
    assert seen and alive, f"no epoch line in the log while the process ran; log at exit:\n{final}"
    assert f"epoch {EPOCHS}/{EPOCHS}" not in seen  # read mid-run, not dumped at exit
    epochs = [ln for ln in final.splitlines() if ln.startswith("epoch ")]
    assert [ln.split("  ")[0] for ln in epochs] == [f"epoch {i}/{EPOCHS}" for i in range(1, EPOCHS + 1)]
    assert all(len(ln) <= 100 for ln in final.splitlines()), final
    assert "━" not in final and "\r" not in final and "\x1b" not in final  # plain lines, no live bar


CHILD = """
import time
from fortify import progress
progress.MIN_SECONDS = 0.5  # (default 2 s) so that the 1.5 s step prints its done line
with progress.enabled(), progress.task("fitting detector", total=3, unit="batches") as t:
    time.sleep(1.5)  # a step that never advances: only the ticker can report it
    t.advance(3)
progress.echo("finished", enabled=True)
"""


def test_periodic_lines_reach_a_pipe_while_a_step_runs() -> None:
    proc = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=_env(FORTIFY_PROGRESS_INTERVAL="0.2"), text=True)
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()
        alive = proc.poll() is None
        rest = proc.stderr.read()
        assert proc.wait(timeout=60) == 0, rest
    finally:
        if proc.poll() is None:
            proc.kill()
    assert first.startswith("fitting detector  0/3 batches (0%)  "), first + rest
    assert alive, "the first progress line arrived only after the child exited"
    lines = rest.splitlines()
    assert lines[-2].startswith("fitting detector  3/3 batches (100%)  done in ") and lines[-1] == "finished"
