"""Run store: round trip, WAL mode, unknown ids, and many concurrent writer processes losing nothing
(safety in test_store_safety.py, liveness in test_store_liveness.py)."""
from __future__ import annotations

import multiprocessing as mp
import os
import sqlite3
from pathlib import Path

import pytest

from fortify.errors import OutputError, UnknownNameError
from fortify.store import SCHEMA_VERSION, RunStore, default_store_path, new_run_id, package_versions, this_host


def test_round_trip(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "s" / "fortify.db")
    cfg = {"train": {"epochs": 3, "lr": 0.1}, "data": {"name": "mnist-5k"}}
    rid = store.start_run("run", argv=["run", "train.epochs=3"], config=cfg, seed=7, run_dir=tmp_path / "r")
    assert store.get_run(rid).status == "running"
    store.log_metrics(rid, {"loss": 0.5, "acc": 0.9}, stage="train", step=1)
    store.log_metric(rid, "test_acc", 0.97, stage="evaluate")
    store.log_metric(rid, "nan_metric", float("nan"))
    store.add_artefact(rid, "model", tmp_path / "r" / "model.safetensors", kind="model")
    store.finish_run(rid, "ok")

    rec = RunStore(tmp_path / "s" / "fortify.db").get_run(rid[:17])  # a fresh handle, unique prefix
    assert rec.id == rid and rec.verb == "run" and rec.seed == 7 and rec.status == "ok"
    assert rec.config == cfg and rec.argv == ["run", "train.epochs=3"]
    assert set(rec.versions) == {"python", "torch", "numpy", "fortify", "platform"}
    assert rec.versions == package_versions()
    assert [(m.key, m.value, m.stage, m.step) for m in rec.metrics] == [
        ("loss", 0.5, "train", 1), ("acc", 0.9, "train", 1), ("test_acc", 0.97, "evaluate", None),
        ("nan_metric", None, "", None)]
    assert rec.artefacts[0].name == "model" and rec.artefacts[0].path.endswith("model.safetensors")
    assert rec.duration is not None and rec.duration >= 0
    assert rec.wall_seconds is not None and 0 <= rec.duration <= rec.wall_seconds + 1e-6
    assert (rec.pid, rec.host) == (os.getpid(), this_host()) and rec.heartbeat is not None
    assert store.schema_version == SCHEMA_VERSION
    assert store.final_metrics(rid)["evaluate/test_acc"] == 0.97
    assert store.journal_mode() == "wal"
    with sqlite3.connect(tmp_path / "s" / "fortify.db") as con:  # independent reader
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_failed_run_keeps_first_error_line(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "fortify.db")
    rid = store.start_run("train", argv=[], config={}, seed=None)
    store.finish_run(rid, "failed", "boom: it broke\nsecond line")
    rec = store.get_run(rid)
    assert rec.status == "failed" and rec.error == "boom: it broke"


def test_unknown_and_ambiguous_ids(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "fortify.db")
    a = store.start_run("run", argv=[], config={}, seed=0, run_id="20260101-000000-aaaa")
    store.start_run("run", argv=[], config={}, seed=0, run_id="20260101-000000-aaab")
    with pytest.raises(UnknownNameError, match="unknown run id"):
        store.get_run("nope")
    with pytest.raises(UnknownNameError, match="ambiguous"):
        store.get_run("20260101-000000-aa")
    assert store.get_run("20260101-000000-aaaa").id == a
    with pytest.raises(OutputError, match="already exists"):
        store.start_run("run", argv=[], config={}, seed=0, run_id=a)
    assert [r.id for r in store.list_runs(limit=1)] in (["20260101-000000-aaab"], ["20260101-000000-aaaa"])
    assert len(store.list_runs()) == 2


def test_unwritable_store_is_output_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="cannot open run store"):
        RunStore(blocker / "sub" / "fortify.db")


def test_default_path_and_ids(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("FORTIFY_STORE", raising=False)
    assert default_store_path() == Path("fortify-runs/fortify.db")
    assert default_store_path(tmp_path) == tmp_path / "fortify.db"
    monkeypatch.setenv("FORTIFY_STORE", str(tmp_path / "x.db"))
    assert default_store_path("elsewhere") == tmp_path / "x.db"
    ids = {new_run_id() for _ in range(50)}
    assert len(ids) == 50 and all(len(i) == 22 for i in ids)


def _writer(path: str, worker: int, n: int) -> None:
    store = RunStore(path, timeout=0.05)  # tiny busy timeout: exercise the retry loop, not just SQLite's wait
    for i in range(n):
        rid = store.start_run("run", argv=[str(worker)], config={"w": worker, "i": i}, seed=i,
                              run_id=f"w{worker}-{i}")
        store.log_metrics(rid, {"a": float(i), "b": float(worker)}, stage="s", step=i)
        store.add_artefact(rid, "f", f"/x/{worker}/{i}")
        store.finish_run(rid, "ok")


def test_concurrent_writer_processes_lose_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "fortify.db")
    workers, n = 4, 15
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    procs = [ctx.Process(target=_writer, args=(path, w, n)) for w in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert all(p.exitcode == 0 for p in procs)
    store = RunStore(path)
    runs = store.list_runs()
    assert len(runs) == workers * n and all(r.status == "ok" for r in runs)
    with sqlite3.connect(path) as con:
        assert con.execute("SELECT COUNT(*) FROM metrics").fetchone()[0] == workers * n * 2
        assert con.execute("SELECT COUNT(*) FROM artefacts").fetchone()[0] == workers * n
    rec = store.get_run("w3-14")
    assert rec.config == {"w": 3, "i": 14} and [m.value for m in rec.metrics] == [14.0, 3.0]
