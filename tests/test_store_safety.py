"""The run store is safe to point anywhere: foreign, corrupt, newer, read-only, busy and full databases each
give one typed error (CLI: one line, exit 2) and leave the file byte-identical; schema migrations are versioned."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from contextlib import closing
from pathlib import Path
from typing import Callable

import pytest

from fortify.cli import main
from fortify.store import (
    APPLICATION, APPLICATION_ID, MIGRATIONS, SCHEMA_VERSION, CorruptStoreError, ForeignStoreError,
    ReadOnlyStoreError, RunStore, StoreBusyError, StoreError, StoreFullError, StoreVersionError,
)

# The schema of git HEAD before fortify_meta existed (fortify/store.py at 708bc0a): schema version 1.
V1_DDL = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY, created REAL NOT NULL, finished REAL, verb TEXT NOT NULL, argv TEXT NOT NULL,
    config TEXT NOT NULL, seed INTEGER, versions TEXT NOT NULL, status TEXT NOT NULL, error TEXT, run_dir TEXT
);
CREATE TABLE IF NOT EXISTS metrics (
    run_id TEXT NOT NULL REFERENCES runs(id), key TEXT NOT NULL, value REAL, stage TEXT NOT NULL DEFAULT '',
    step INTEGER, time REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS metrics_run ON metrics(run_id);
CREATE TABLE IF NOT EXISTS artefacts (
    run_id TEXT NOT NULL REFERENCES runs(id), name TEXT NOT NULL, path TEXT NOT NULL, kind TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS artefacts_run ON artefacts(run_id);
"""


def _digest(folder: Path) -> dict[str, str]:
    """sha256 of every file in ``folder`` but SQLite's WAL side files (-wal/-shm: a reader of a WAL database
    may create them and rewrites the -shm index; the database file itself must not change)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())
            if p.is_file() and not p.name.endswith(("-wal", "-shm"))}


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _sql(path: Path) -> sqlite3.Connection:
    """A connection closed at the end of the ``with`` block (sqlite3's own context manager only commits)."""
    return closing(sqlite3.connect(path, isolation_level=None))  # type: ignore[return-value]


def _one_error_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2, argv
    captured = capsys.readouterr()
    lines = [ln for ln in captured.err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("fortify: error: ") and "Traceback" not in captured.err, lines
    return lines[0]


def _foreign(path: Path) -> Path:
    with _sql(path) as con:
        con.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
        con.executemany("INSERT INTO notes (text) VALUES (?)", [("keep",), ("me",)])
    return path


def _polluted(path: Path) -> Path:
    """What the old store did to a foreign file: its own tables added next to the user's."""
    _foreign(path)
    with _sql(path) as con:
        con.executescript(V1_DDL)
    return path


def _garbage(path: Path) -> Path:
    path.write_bytes(b"not a database at all\n" * 50)
    return path


def _newer(path: Path) -> Path:
    RunStore(path).start_run("run", argv=[], config={}, seed=0, versions={}, run_id="20260101-000000-aaaaaa")
    with _sql(path) as con:
        con.execute("UPDATE fortify_meta SET value = '99' WHERE key = 'schema_version'")
    return path


def _other_app(path: Path) -> Path:
    with _sql(path) as con:
        con.execute("PRAGMA application_id = 1234")
    return path


BAD_FILES: dict[str, tuple[Callable[[Path], Path], type[StoreError], str]] = {
    "foreign": (_foreign, ForeignStoreError, "not a fortify run store (its tables: notes)"),
    "polluted": (_polluted, ForeignStoreError, "not a fortify run store"),
    "other-app-id": (_other_app, ForeignStoreError, "not a fortify run store (its tables: none)"),
    "garbage": (_garbage, CorruptStoreError, "is not an SQLite database"),
    "newer": (_newer, StoreVersionError, "schema version 99"),
}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
@pytest.mark.parametrize("readonly", [False, True])
def test_a_file_that_is_not_our_store_is_refused_untouched(kind: str, readonly: bool, tmp_path: Path) -> None:
    make, error, needle = BAD_FILES[kind]
    path = make(tmp_path / "other.db")
    before, names = _digest(tmp_path), _names(tmp_path)
    with pytest.raises(error, match="^[^\n]*$") as info:
        RunStore(path, readonly=readonly)
    assert needle in str(info.value) and str(path) in str(info.value)
    assert _digest(tmp_path) == before  # the same bytes
    if kind != "newer":  # a non-WAL file: not even a side file appears
        assert _names(tmp_path) == names


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_cli_refuses_a_foreign_or_corrupt_store_in_one_line(kind: str, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    make, _, needle = BAD_FILES[kind]
    (tmp_path / "db").mkdir()
    db = make(tmp_path / "db" / "other.db")
    before = _digest(db.parent)
    for argv in (["runs", "ls", "--store", str(db)], ["runs", "show", "2026", "--store", str(db)],
                 ["run", "--resume", "2026", "--store", str(db)],
                 ["run", "--store", str(db), "--out", str(tmp_path / "runs"), "-q"]):
        assert needle in _one_error_line(capsys, argv)
    assert _digest(db.parent) == before
    assert not [p for p in (tmp_path / "runs").glob("*") if p.is_dir()]  # no run was started


def test_damaged_pages_are_a_corrupt_store_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "fortify.db"
    store = RunStore(path)
    rid = store.start_run("run", argv=[], config={"pad": "x" * 20000}, seed=0, versions={})
    store.log_metrics(rid, {f"m{i}": float(i) for i in range(300)})
    del store
    blob = bytearray(path.read_bytes())
    page = int.from_bytes(blob[16:18], "big")
    blob[page:] = b"\xa5" * (len(blob) - page)  # every page after the first (sqlite_master) overwritten
    path.write_bytes(bytes(blob))
    before = _digest(tmp_path)
    with pytest.raises(CorruptStoreError, match="damaged or not an SQLite database"):
        RunStore(path, readonly=True).list_runs()
    assert "damaged" in _one_error_line(capsys, ["runs", "ls", "--store", str(path)])
    assert _digest(tmp_path) == before


def test_an_empty_file_becomes_a_store_only_when_writing(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    path.write_bytes(b"")
    assert RunStore(path, readonly=True).list_runs() == [] and path.read_bytes() == b""
    store = RunStore(path)
    assert store.schema_version == SCHEMA_VERSION and path.stat().st_size > 0


def _fortify_store(path: Path) -> str:
    store = RunStore(path)
    rid = store.start_run("run", argv=["run"], config={"a": 1}, seed=3, versions={})
    store.log_metric(rid, "test_acc", 0.5, stage="evaluate")
    store.finish_run(rid, "ok")
    return rid


def test_read_only_open_lists_and_shows_and_never_writes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "fortify.db"
    rid = _fortify_store(path)
    blob, mtime = path.read_bytes(), path.stat().st_mtime_ns
    ro = RunStore(path, readonly=True)
    assert [r.id for r in ro.list_runs()] == [rid] and ro.get_run(rid).metrics[0].value == 0.5
    for write in (lambda: ro.start_run("run", argv=[], config={}, seed=0, versions={}),
                  lambda: ro.log_metric(rid, "x", 1.0), lambda: ro.finish_run(rid, "failed"),
                  lambda: ro.heartbeat(rid)):
        with pytest.raises(ReadOnlyStoreError, match="opened read-only; nothing was written"):
            write()
    assert main(["runs", "ls", "--store", str(path)]) == 0 and rid in capsys.readouterr().out
    assert main(["runs", "show", rid[:12], "--store", str(path)]) == 0 and "test_acc" in capsys.readouterr().out
    assert path.read_bytes() == blob and path.stat().st_mtime_ns == mtime


def test_sqlites_own_read_only_error_is_typed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A store that opened for writing but whose writes SQLite refuses (a read-only connection underneath:
    what a read-only file gives where the permission check cannot see it)."""
    path = tmp_path / "fortify.db"
    rid = _fortify_store(path)
    blob = path.read_bytes()
    store = RunStore(path)
    uri = path.absolute().as_uri() + "?mode=ro"
    monkeypatch.setattr(store, "_connect", lambda: sqlite3.connect(uri, uri=True, isolation_level=None))
    with pytest.raises(ReadOnlyStoreError, match="cannot be written .*readonly database.*runs ls/show"):
        store.log_metric(rid, "x", 1.0)
    assert store.get_run(rid).status == "ok" and path.read_bytes() == blob


_READ_ONLY_SCRIPT = textwrap.dedent("""
    import json, sys
    from fortify.cli import main
    from fortify.store import RunStore, ReadOnlyStoreError
    db, rid, out = sys.argv[1], sys.argv[2], sys.argv[3]
    res = {"ls": main(["runs", "ls", "--store", db]), "show": main(["runs", "show", rid, "--store", db])}
    try:
        RunStore(db)
    except ReadOnlyStoreError as e:
        res["open"] = str(e)
    res["run"] = main(["run", "--store", db, "--out", out, "-q", "data.train_limit=10"])
    print("RESULT " + json.dumps(res))
""")


def _read_only_cmd(folder: Path) -> list[str] | None:
    """A command prefix under which ``folder`` is truly read-only: chmod for a normal user; for root (who
    ignores permissions) a private read-only bind mount of the folder; None when neither is possible."""
    if os.geteuid() != 0:
        return []
    if shutil.which("unshare") is None or subprocess.run(
            ["unshare", "-m", "sh", "-c", f"mount --bind -o ro {folder} {folder}"], capture_output=True).returncode:
        return None
    return ["unshare", "-m", "sh", "-c", f'mount --bind -o ro "{folder}" "{folder}" && exec "$@"', "sh"]


def test_a_store_in_a_read_only_folder_can_be_browsed_but_not_written(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    rid = _fortify_store(shared / "fortify.db")
    prefix = _read_only_cmd(shared)
    if prefix is None:
        pytest.skip("cannot make a read-only folder here (root without mount namespaces)")
    before = _digest(shared)
    if not prefix:
        shared.chmod(0o555)
        (shared / "fortify.db").chmod(0o444)
    try:
        proc = subprocess.run([*prefix, sys.executable, "-c", _READ_ONLY_SCRIPT, str(shared / "fortify.db"), rid,
                               str(tmp_path / "runs")], capture_output=True, text=True, timeout=120)
    finally:
        shared.chmod(0o755)
    res = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    got = json.loads(res[len("RESULT "):])
    assert got["ls"] == 0 and got["show"] == 0 and rid in proc.stdout, proc.stdout + proc.stderr
    assert "is read-only" in got["open"] and "runs ls/show" in got["open"]
    assert got["run"] == 2
    err = [ln for ln in proc.stderr.splitlines() if ln.startswith("fortify: error:")]
    assert len(err) == 1 and "is read-only" in err[0] and "Traceback" not in proc.stderr, proc.stderr
    assert _digest(shared) == before


def test_locked_too_long_is_a_busy_error(tmp_path: Path) -> None:
    path = tmp_path / "fortify.db"
    rid = _fortify_store(path)
    store = RunStore(path, timeout=0.02, retries=2)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreBusyError, match=r"stayed locked by another process for more than 0.02s"):
            store.log_metric(rid, "x", 1.0)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    store.log_metric(rid, "x", 2.0)  # once released, writes go through
    assert store.final_metrics(rid)["x"] == 2.0


def test_a_full_disk_is_a_full_error_and_loses_no_committed_row(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "fortify.db"
    rid = _fortify_store(path)
    store = RunStore(path)
    real = store._connect

    def capped() -> sqlite3.Connection:  # SQLite's page limit: the same SQLITE_FULL a full disk gives
        con = real()
        con.execute(f"PRAGMA max_page_count = {con.execute('PRAGMA page_count').fetchone()[0]}")
        return con

    monkeypatch.setattr(store, "_connect", capped)
    with pytest.raises(StoreFullError, match="the disk is full"):
        store.log_metrics(rid, {f"k{i}": float(i) for i in range(5000)})
    monkeypatch.undo()
    rec = RunStore(path).get_run(rid)
    assert rec.status == "ok" and [m.key for m in rec.metrics] == ["test_acc"]


def test_an_error_inside_a_transaction_is_not_masked_by_rollback(tmp_path: Path) -> None:
    """The old 'cannot rollback - no transaction is active' on top of a MemoryError."""
    store = RunStore(tmp_path / "fortify.db")

    def oom(con: sqlite3.Connection) -> None:
        con.execute("ROLLBACK")  # SQLite may end the transaction itself before the error reaches us
        raise MemoryError("Unable to allocate")

    with pytest.raises(MemoryError, match="Unable to allocate"):
        store._write(oom)


def _v1_store(path: Path) -> None:
    with _sql(path) as con:
        con.executescript(V1_DDL)
        con.execute("PRAGMA journal_mode = WAL")
        con.executemany("INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", [
            ("20250101-000000-aaaaaa", 1000.0, 1250.0, "run", '["run"]', '{"train": {"epochs": 2}}', 7, "{}", "ok",
             None, "/r/a"),
            ("20250101-000100-bbbbbb", 2000.0, None, "train", '["train"]', "{}", 0, "{}", "running", None, None),
        ])
        con.execute("INSERT INTO metrics VALUES ('20250101-000000-aaaaaa', 'test_acc', 0.9, 'evaluate', NULL, 1.0)")
        con.execute("INSERT INTO artefacts VALUES ('20250101-000000-aaaaaa', 'model', '/r/a/m.st', 'model')")


def test_a_version_1_store_is_read_as_is_and_migrated_on_write_keeping_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "fortify.db"
    _v1_store(path)
    before = _digest(tmp_path)
    ro = RunStore(path, readonly=True)  # read-only: readable without migrating
    assert ro.schema_version == 1 and [r.id for r in ro.list_runs()] == ["20250101-000100-bbbbbb",
                                                                         "20250101-000000-aaaaaa"]
    assert _digest(tmp_path) == before

    store = RunStore(path)
    assert store.schema_version == SCHEMA_VERSION
    done, old_running = store.get_run("20250101-000000"), store.get_run("20250101-000100")
    assert (done.config, done.seed, done.status, done.run_dir) == ({"train": {"epochs": 2}}, 7, "ok", "/r/a")
    assert [(m.key, m.value, m.stage) for m in done.metrics] == [("test_acc", 0.9, "evaluate")]
    assert [(a.name, a.path) for a in done.artefacts] == [("model", "/r/a/m.st")]
    assert done.duration == 250.0 and done.wall_seconds == 250.0
    assert old_running.status == "interrupted"  # no pid, no heartbeat since 1970 + 2000 s
    with _sql(path) as con:
        assert dict(con.execute("SELECT key, value FROM fortify_meta")) == {
            "application": APPLICATION, "schema_version": str(SCHEMA_VERSION)}
        assert con.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        migrated = con.execute("PRAGMA table_info(runs)").fetchall()
    RunStore(tmp_path / "fresh.db")
    with _sql(tmp_path / "fresh.db") as con:
        fresh = con.execute("PRAGMA table_info(runs)").fetchall()
    assert [c[1:3] for c in migrated] == [c[1:3] for c in fresh]  # migrated == freshly created schema
    rid = store.start_run("run", argv=[], config={}, seed=1, versions={})
    store.finish_run(rid, "ok")
    assert len(RunStore(path).list_runs()) == 3


def test_reopening_a_current_store_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "fortify.db"
    _fortify_store(path)
    before = _digest(tmp_path)
    RunStore(path).list_runs()
    assert _digest(tmp_path) == before


def test_every_older_schema_version_has_a_migration() -> None:
    assert sorted(MIGRATIONS) == list(range(1, SCHEMA_VERSION))
