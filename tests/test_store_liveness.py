"""Run liveness: pid, host and heartbeat recorded; a run whose process is gone reads as ``interrupted`` with
the command that resumes it; a resumed run's active time leaves out the downtime (wall time keeps it)."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from contextlib import closing
from pathlib import Path

import pytest

from fortify.cli import main
from fortify.errors import ConfigError
from fortify.store import RunStore, process_alive, this_host

_CHILD = textwrap.dedent("""
    import sys, time
    from fortify.store import RunStore
    store = RunStore(sys.argv[1])
    rid = store.start_run("run", argv=["run"], config={"train": {"epochs": 9}}, seed=0, versions={})
    beat = store.keep_alive(rid, interval=0.1)
    print(rid, flush=True)
    time.sleep(120)
""")


def _dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _set(path: Path, rid: str, **cols: object) -> None:
    with closing(sqlite3.connect(path, isolation_level=None)) as con:
        sets = ", ".join(f"{k} = ?" for k in cols)
        con.execute(f"UPDATE runs SET {sets} WHERE id = ?", (*cols.values(), rid))


def test_a_killed_run_reads_interrupted_with_its_resume_command(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "fortify.db"
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(db)], stdout=subprocess.PIPE, text=True)
    try:
        rid = child.stdout.readline().strip()  # type: ignore[union-attr]
        store = RunStore(db, readonly=True)
        first = store.get_run(rid)
        assert (first.status, first.pid, first.host) == ("running", child.pid, this_host())
        time.sleep(0.5)
        assert store.get_run(rid).heartbeat > first.heartbeat  # the periodic beat, with no metric written
        assert main(["runs", "ls", "--store", str(db)]) == 0
        alive = capsys.readouterr().out
        assert "running" in alive and "interrupted" not in alive
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    rec = store.get_run(rid)
    assert rec.status == "interrupted" and rec.finished is None
    assert 0.4 < rec.active_seconds < 60 and rec.duration == rec.active_seconds
    assert main(["runs", "ls", "--store", str(db)]) == 0
    listing = capsys.readouterr().out
    assert "interrupted" in listing and f"pid {child.pid} on {this_host()}" in listing
    assert f"resume: fortify run --resume {rid} --store {db}" in listing
    assert main(["runs", "show", rid, "--store", str(db)]) == 0
    assert f"fortify run --resume {rid}" in capsys.readouterr().out


def test_liveness_rules(tmp_path: Path) -> None:
    db = tmp_path / "fortify.db"
    store = RunStore(db, stale_after=60)
    rid = store.start_run("run", argv=[], config={}, seed=0, versions={})
    now = time.time()
    cases = [  # (pid, host, heartbeat age) -> shown status
        (os.getpid(), this_host(), 1.0, "running"),
        (_dead_pid(), this_host(), 1.0, "interrupted"),  # same host, process gone: at once
        (os.getpid(), this_host(), 3600.0, "interrupted"),  # pid alive but silent for an hour: reused or hung
        (12345, "another-host", 1.0, "running"),  # another host: only the heartbeat can tell
        (12345, "another-host", 3600.0, "interrupted"),
        (None, None, 3600.0, "interrupted"),
    ]
    for pid, host, age, want in cases:
        _set(db, rid, pid=pid, host=host, heartbeat=now - age)
        assert store.get_run(rid).status == want, (pid, host, age)
        assert store.list_runs()[0].status == want
    store.finish_run(rid, "ok")
    assert store.get_run(rid).status == "ok"


def test_a_zombie_is_not_alive() -> None:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    for _ in range(200):  # exited but not reaped: os.kill(pid, 0) still succeeds
        if open(f"/proc/{p.pid}/stat", "rb").read().rsplit(b")", 1)[-1].split()[0] == b"Z":
            break
        time.sleep(0.01)
    assert not process_alive(p.pid)
    p.wait()
    assert not process_alive(p.pid) and process_alive(os.getpid())


def test_resume_counts_active_time_not_downtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    clock = [1_000_000.0]
    monkeypatch.setattr("fortify.store.time.time", lambda: clock[0])
    db = tmp_path / "fortify.db"
    store = RunStore(db)
    rid = store.start_run("run", argv=["run"], config={}, seed=0, versions={})
    clock[0] += 10
    store.log_metric(rid, "loss", 1.0, stage="train", step=1)  # a metric write is a heartbeat too
    _set(db, rid, pid=_dead_pid())  # killed 10 s in
    clock[0] += 3600  # an hour of downtime
    assert store.get_run(rid).status == "interrupted" and store.get_run(rid).active_seconds == 10
    store.reopen_run(rid, argv=["run", "--resume", rid])
    again = store.get_run(rid)
    assert again.status == "running" and again.pid == os.getpid() and again.active == 10
    clock[0] += 30
    store.finish_run(rid, "ok")
    rec = store.get_run(rid)
    assert rec.duration == rec.active_seconds == 40.0 and rec.wall_seconds == 3640.0
    assert main(["runs", "ls", "--store", str(db)]) == 0
    row = next(ln for ln in capsys.readouterr().out.splitlines() if rid in ln)
    assert "40.0s" in row and "3640" not in row


def test_a_failed_run_resumed_keeps_its_first_segment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [5_000.0]
    monkeypatch.setattr("fortify.store.time.time", lambda: clock[0])
    store = RunStore(tmp_path / "fortify.db")
    rid = store.start_run("train", argv=[], config={}, seed=0, versions={})
    clock[0] += 7
    store.finish_run(rid, "failed", "[train] boom")
    clock[0] += 100
    store.reopen_run(rid)
    clock[0] += 5
    store.finish_run(rid, "ok")
    store.finish_run(rid, "ok")  # finishing twice adds nothing
    rec = store.get_run(rid)
    assert rec.active_seconds == 12.0 and rec.wall_seconds == 112.0


def test_resuming_a_live_run_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "fortify.db"
    store = RunStore(db)
    rid = store.start_run("run", argv=[], config={}, seed=0, versions={})
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _set(db, rid, pid=sleeper.pid)
        with pytest.raises(ConfigError, match=f"run {rid} is still running \\(pid {sleeper.pid}"):
            store.reopen_run(rid)
    finally:
        sleeper.kill()
        sleeper.wait()
    store.reopen_run(rid)  # its process is gone now
    assert store.get_run(rid).pid == os.getpid()


def test_the_pipeline_beats_while_a_stage_runs_and_stops_after(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from fortify.config import resolve
    from fortify.pipeline import run_pipeline
    from fortify.pipeline.base import STAGES, register_stage
    from fortify.store import Heartbeat

    seen: dict[str, float] = {}

    class _Slow:
        name = "t-liveness-slow"

        def run(self, ctx) -> None:  # type: ignore[no-untyped-def]
            seen["start"] = ctx.store.get_run(ctx.run_id).heartbeat
            time.sleep(0.5)
            seen["end"] = ctx.store.get_run(ctx.run_id).heartbeat

    if "t-liveness-slow" not in STAGES.names():
        register_stage(_Slow)
    beats: list[Heartbeat] = []
    real = RunStore.keep_alive
    monkeypatch.setattr(RunStore, "keep_alive", lambda self, rid, interval=0.0: beats.append(
        real(self, rid, interval=0.05)) or beats[-1])
    store = RunStore(tmp_path / "fortify.db")
    cfg = resolve({"stages": ["t-liveness-slow"], "output": {"dir": str(tmp_path / "runs")}})
    ctx = run_pipeline(cfg, store=store, quiet=True, stages=["t-liveness-slow"])
    assert seen["end"] > seen["start"]  # beats arrived during a stage that logged nothing
    assert len(beats) == 1 and not beats[0]._thread.is_alive()
    rec = store.get_run(ctx.run_id)
    assert rec.status == "ok" and rec.pid == os.getpid() and rec.host == this_host()
    assert 0.5 <= rec.active_seconds <= rec.wall_seconds  # type: ignore[operator]


def test_limit_must_be_positive(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "fortify.db"
    store = RunStore(db)
    for i in range(3):
        store.start_run("run", argv=[], config={}, seed=i, versions={}, run_id=f"20260101-00000{i}-aaaaaa")
    for bad in ("-1", "0"):
        assert main(["runs", "ls", "--limit", bad, "--store", str(db)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--limit must be >= 1" in err[0] and f"got {bad}" in err[0]
    assert main(["runs", "ls", "--limit", "1", "--store", str(db)]) == 0
    assert capsys.readouterr().out.count("20260101-") == 1
    assert main(["runs", "ls", "--all", "--store", str(db)]) == 0
    assert capsys.readouterr().out.count("20260101-") == 3
    with pytest.raises(ConfigError, match="limit must be"):
        store.list_runs(limit=0)
