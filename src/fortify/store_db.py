"""The SQLite layer of the run store: schema versions and migrations, recognising fortify's own
files, the sqlite3 error -> typed error mapping, and run liveness (host, pid, heartbeat thread).

:mod:`fortify.store` is the API; this module holds what it needs to be safe to point at any file.
A store is recognised by its ``fortify_meta`` table (``application = fortify-run-store``,
``schema_version``) and ``PRAGMA application_id`` = :data:`APPLICATION_ID`; the version-1 layout
(before ``fortify_meta``) is recognised by its exact tables and columns. ``MIGRATIONS[v]`` upgrades
version ``v`` to ``v + 1`` inside the caller's write transaction.
"""
from __future__ import annotations

import os
import socket
import sqlite3
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from fortify.errors import OutputError

if TYPE_CHECKING:  # pragma: no cover
    from fortify.store import RunStore

SCHEMA_VERSION = 2
APPLICATION = "fortify-run-store"
APPLICATION_ID = 0x466F7274  # "Fort", in the SQLite header (offset 68), so tools can tell the file apart
SQLITE_MAGIC = b"SQLite format 3\x00"
HEARTBEAT_SECONDS = 5.0  # one tiny UPDATE; a killed run loses at most this much active time
STALE_SECONDS = 300.0


# ------------------------------------------------------------------------------------------------ errors
class StoreError(OutputError):
    """The run store cannot be used; the message is one line naming the file and what to do."""


class ForeignStoreError(StoreError):
    """The file is an SQLite database that is not a fortify run store (it is left untouched)."""


class CorruptStoreError(StoreError):
    """The file is not an SQLite database, or its pages are damaged."""


class StoreVersionError(StoreError):
    """The store was written by a newer fortify (a schema version this one does not know)."""


class ReadOnlyStoreError(StoreError):
    """The store (or its folder) cannot be written; it can still be read (``runs ls`` / ``runs show``)."""


class StoreBusyError(StoreError):
    """Another process held the store's lock for longer than the busy timeout and every retry."""


class StoreFullError(StoreError):
    """The disk (or SQLite's page limit) is full."""


# ------------------------------------------------------------------------------------------------ schema
_V1_RUN_COLS = ("id", "created", "finished", "verb", "argv", "config", "seed", "versions", "status", "error",
                "run_dir")
_V1_TABLES = frozenset({"runs", "metrics", "artefacts"})

_SCHEMA = """
CREATE TABLE fortify_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE runs (
    id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    finished REAL,
    verb TEXT NOT NULL,
    argv TEXT NOT NULL,
    config TEXT NOT NULL,
    seed INTEGER,
    versions TEXT NOT NULL,
    status TEXT NOT NULL,
    error TEXT,
    run_dir TEXT,
    pid INTEGER,
    host TEXT,
    started REAL,
    heartbeat REAL,
    active REAL NOT NULL DEFAULT 0
);
CREATE TABLE metrics (
    run_id TEXT NOT NULL REFERENCES runs(id),
    key TEXT NOT NULL,
    value REAL,
    stage TEXT NOT NULL DEFAULT '',
    step INTEGER,
    time REAL NOT NULL
);
CREATE INDEX metrics_run ON metrics(run_id);
CREATE TABLE artefacts (
    run_id TEXT NOT NULL REFERENCES runs(id),
    name TEXT NOT NULL,
    path TEXT NOT NULL,
    kind TEXT NOT NULL DEFAULT ''
);
CREATE INDEX artefacts_run ON artefacts(run_id);
"""


def _migrate_1_to_2(con: sqlite3.Connection) -> None:
    """Liveness and active time: a v1 run's start is its creation, a finished one was active all along."""
    for ddl in ("pid INTEGER", "host TEXT", "started REAL", "heartbeat REAL", "active REAL NOT NULL DEFAULT 0"):
        con.execute(f"ALTER TABLE runs ADD COLUMN {ddl}")
    con.execute("UPDATE runs SET started = created, heartbeat = COALESCE(finished, created), "
                "active = CASE WHEN finished IS NULL THEN 0 ELSE MAX(0, finished - created) END")
    con.execute("CREATE TABLE fortify_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")


#: ``MIGRATIONS[v]`` turns a version-``v`` store into version ``v + 1`` inside the open transaction.
MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {1: _migrate_1_to_2}

# the run columns as read from each schema version (version 1 is read without migrating in read-only mode)
RUN_COLS = ", ".join(_V1_RUN_COLS) + ", pid, host, started, heartbeat, active"
RUN_COLS_V1 = (", ".join(_V1_RUN_COLS) + ", NULL, NULL, created, COALESCE(finished, created), "
                "CASE WHEN finished IS NULL THEN 0 ELSE MAX(0, finished - created) END")


def _stamp(con: sqlite3.Connection) -> None:
    """Write the current version marks (inside the open transaction)."""
    con.executemany("INSERT OR REPLACE INTO fortify_meta (key, value) VALUES (?, ?)",
                    [("application", APPLICATION), ("schema_version", str(SCHEMA_VERSION))])
    con.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def identify(con: sqlite3.Connection, path: Path) -> int:
    """The schema version of the database behind ``con`` (0: an empty database, fortify's to initialise).

    Raises ForeignStoreError for any other SQLite database and StoreVersionError for a newer store."""
    tables = {r[0] for r in con.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")}
    app_id = int(con.execute("PRAGMA application_id").fetchone()[0])
    if "fortify_meta" in tables:
        meta = dict(con.execute("SELECT key, value FROM fortify_meta").fetchall())
        if meta.get("application") == APPLICATION:
            try:
                version = int(meta.get("schema_version", ""))
            except ValueError:
                raise CorruptStoreError(f"run store {str(path)!r} has an unreadable schema_version "
                                        f"{meta.get('schema_version')!r}") from None
            if version > SCHEMA_VERSION:
                raise StoreVersionError(
                    f"run store {str(path)!r} has schema version {version}, newer than this fortify knows "
                    f"({SCHEMA_VERSION}); upgrade fortify to use it")
            return version
    if app_id == 0 and not tables:
        return 0
    if app_id == 0 and tables == _V1_TABLES and _columns(con, "runs") == _V1_RUN_COLS:
        return 1
    shown = ", ".join(sorted(tables)[:6]) + (", ..." if len(tables) > 6 else "") or "none"
    raise ForeignStoreError(
        f"{str(path)!r} is an SQLite database but not a fortify run store (its tables: {shown}); "
        "it was left untouched: pass --store with a new file or an existing fortify.db")


def initialise(con: sqlite3.Connection, path: Path) -> int:
    """Create (an empty database) or migrate (an older store) the schema inside the caller's write
    transaction, then stamp the version; returns :data:`SCHEMA_VERSION`."""
    found = identify(con, path)  # again, under the lock: another process may have won the race
    if found == 0:  # statement by statement: executescript would COMMIT the open transaction first
        for statement in filter(str.strip, _SCHEMA.split(";")):
            con.execute(statement)
    for v in range(found or SCHEMA_VERSION, SCHEMA_VERSION):
        MIGRATIONS[v](con)
    if found != SCHEMA_VERSION:
        _stamp(con)
    return SCHEMA_VERSION


def _columns(con: sqlite3.Connection, table: str) -> tuple[str, ...]:
    return tuple(r[1] for r in con.execute(f"PRAGMA table_info({table})"))


def store_error(e: sqlite3.Error, path: Path, action: str, timeout: float) -> StoreError:
    """The typed, one-line error for an sqlite3 error met on ``path`` while ``action`` (open, read, write)."""
    where, reason, kind = str(path), str(e) or type(e).__name__, error_kind(e)
    if kind == "readonly" or (kind == "cantopen" and action == "write"):
        return ReadOnlyStoreError(f"run store {where!r} cannot be written ({reason}): `fortify runs ls/show` "
                                  "can read it; pass --store with a writable file to record runs")
    if kind == "busy":
        return StoreBusyError(f"run store {where!r} stayed locked by another process for more than "
                              f"{timeout:g}s ({reason}); try again later")
    if kind == "full":
        return StoreFullError(f"run store {where!r}: the disk is full ({reason}); free some space or pass "
                              "--store on another disk")
    if kind == "corrupt":
        return CorruptStoreError(f"run store {where!r} is damaged or not an SQLite database ({reason}); "
                                 "it was left untouched")
    verb = "open" if action == "open" else action
    return StoreError(f"cannot {verb} run store {where!r}: {reason}")


def use_wal(con: sqlite3.Connection) -> None:
    """Switch to WAL (persistent in the file; a no-op when already set)."""
    if str(con.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
        con.execute("PRAGMA journal_mode = WAL")


def rollback(con: sqlite3.Connection) -> None:
    """Roll back if a transaction is still open (SQLite may have ended it itself, e.g. on a full disk)."""
    if con.in_transaction:
        try:
            con.execute("ROLLBACK")
        except sqlite3.Error:
            pass


_KINDS = {8: "readonly", 5: "busy", 6: "busy", 13: "full", 11: "corrupt", 26: "corrupt", 14: "cantopen"}


def error_kind(e: sqlite3.Error) -> str:
    """readonly | busy | full | corrupt | cantopen | other, from the SQLite result code (or the message)."""
    code = getattr(e, "sqlite_errorcode", None)
    if isinstance(code, int) and (code & 0xFF) in _KINDS:
        return _KINDS[code & 0xFF]
    msg = str(e).lower()
    for needle, kind in (("readonly", "readonly"), ("read-only", "readonly"), ("locked", "busy"), ("busy", "busy"),
                         ("full", "full"), ("not a database", "corrupt"), ("malformed", "corrupt"),
                         ("unable to open", "cantopen")):
        if needle in msg:
            return kind
    return "other"


# ------------------------------------------------------------------------------------------------ liveness
def this_host() -> str:
    """The host name recorded with a run (``socket.gethostname()``)."""
    return socket.gethostname()


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host and is not a zombie (killed but not yet reaped)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


class Heartbeat:
    """A daemon thread refreshing one run's heartbeat every ``interval`` seconds until :meth:`stop`.

    A failed beat (e.g. the store is busy) is skipped: the next one retries, and a run is only
    reported interrupted after ``stale_after`` seconds without any."""

    def __init__(self, store: "RunStore", run_id: str, interval: float = HEARTBEAT_SECONDS) -> None:
        self.store, self.run_id, self.interval = store, run_id, float(interval)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"fortify-heartbeat-{run_id}", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.store.heartbeat(self.run_id)
            except Exception:  # noqa: BLE001 - a missed beat must never break the run
                pass

    def stop(self) -> None:
        """Stop beating (waits at most a few seconds for a beat in progress)."""
        self._stop.set()
        self._thread.join(timeout=5.0)

    def __enter__(self) -> "Heartbeat":
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


__all__ = ["SCHEMA_VERSION", "APPLICATION", "APPLICATION_ID", "MIGRATIONS", "HEARTBEAT_SECONDS", "STALE_SECONDS",
           "StoreError", "ForeignStoreError", "CorruptStoreError", "StoreVersionError", "ReadOnlyStoreError",
           "StoreBusyError", "StoreFullError", "identify", "initialise", "store_error", "error_kind",
           "rollback", "use_wal", "RUN_COLS", "RUN_COLS_V1", "this_host", "process_alive", "Heartbeat"]
