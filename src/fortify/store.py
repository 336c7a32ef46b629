"""The run store: every CLI run, its resolved config, versions, status, liveness, metrics and artefacts.

One SQLite file (default ``fortify-runs/fortify.db``; ``--store`` or the ``FORTIFY_STORE``
environment variable choose another) in WAL mode, so readers never block the writer, with a busy
timeout plus an explicit retry loop around every write transaction, so several processes writing
at once lose nothing. Each write is one short ``BEGIN IMMEDIATE`` transaction.

Tables (schema version 2)::

    fortify_meta(key, value)          application = fortify-run-store, schema_version = 2
    runs(id, created, finished, verb, argv, config, seed, versions, status, error, run_dir,
         pid, host, started, heartbeat, active)
    metrics(run_id, key, value, stage, step, time)
    artefacts(run_id, name, path, kind)

**Safe to point anywhere.** The store recognises its own files by ``fortify_meta`` (and
``PRAGMA application_id``): an existing file is inspected through a read-only connection first, and
a foreign SQLite database (:class:`ForeignStoreError`), a file that is not SQLite
(:class:`CorruptStoreError`) or a store of a newer schema (:class:`StoreVersionError`) is refused
without writing a byte. A version-1 store (the schema before ``fortify_meta``: ``runs`` without the
liveness columns) is migrated in one transaction on the first open for writing, rows kept.
``RunStore(path, readonly=True)`` opens with ``mode=ro`` (``immutable=1`` when even the
``-shm`` side file cannot be created, e.g. a read-only folder) and never writes. Every
``sqlite3`` error becomes one :class:`StoreError` subclass with a one-line message.

**Liveness.** ``status`` is stored as ``running`` while a run executes, then ``ok`` or ``failed``
(``error`` holds the one-line error message). A running run records the ``pid`` and ``host`` of its
process and a ``heartbeat`` time, refreshed by every metric write and by :meth:`RunStore.keep_alive`
(a daemon thread, every :data:`HEARTBEAT_SECONDS`). A reader reports a ``running`` row as
``interrupted`` when its process is gone: same host and the pid is not alive (or its heartbeat is
older than ``stale_after``, i.e. the pid was reused or the process hangs), other host and the
heartbeat is older than ``stale_after``. ``active`` accumulates the seconds of every closed
running segment (start or resume to finish or last heartbeat), so a resumed run's time excludes
the downtime; ``finished - created`` stays the wall time.
"""
from __future__ import annotations

import json
import os
import platform
import random
import sqlite3
import time
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, TypeVar

from fortify.errors import ConfigError, OutputError, UnknownNameError
from fortify.store_db import (
    APPLICATION, APPLICATION_ID, HEARTBEAT_SECONDS, MIGRATIONS, RUN_COLS, RUN_COLS_V1, SCHEMA_VERSION, SQLITE_MAGIC,
    STALE_SECONDS, CorruptStoreError, ForeignStoreError, Heartbeat, ReadOnlyStoreError, StoreBusyError, StoreError,
    StoreFullError, StoreVersionError, error_kind, identify, initialise, process_alive, rollback, store_error,
    this_host, use_wal,
)

DEFAULT_OUT = "fortify-runs"
DB_NAME = "fortify.db"
STATUSES = ("running", "ok", "failed")
SHOWN_STATUSES = (*STATUSES, "interrupted")

_T = TypeVar("_T")


# ----------------------------------------------------------------------------------------------- helpers
def default_store_path(out_dir: str | os.PathLike[str] | None = None) -> Path:
    """``$FORTIFY_STORE`` if set, else ``<out_dir>/fortify.db`` (``out_dir`` defaults to ``fortify-runs``)."""
    env = os.environ.get("FORTIFY_STORE")
    if env:
        return Path(env)
    return Path(out_dir if out_dir is not None else DEFAULT_OUT) / DB_NAME


def package_versions() -> dict[str, str]:
    """Versions of python, torch, numpy and fortify plus the platform string."""
    import numpy
    import torch

    import fortify

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "fortify": fortify.__version__,
        "platform": platform.platform(),
    }


def new_run_id(now: float | None = None) -> str:
    """A short, readable, sortable id: ``YYYYmmdd-HHMMSS-xxxxxx`` (UTC time plus 6 random hex digits)."""
    t = time.gmtime(time.time() if now is None else now)
    return time.strftime("%Y%m%d-%H%M%S", t) + f"-{random.SystemRandom().getrandbits(24):06x}"


# --------------------------------------------------------------------------------------------- records
@dataclass
class Metric:
    """One measured number of a run; ``stage`` names the pipeline stage, ``step`` e.g. the epoch."""

    key: str
    value: float | None
    stage: str = ""
    step: int | None = None


@dataclass
class Artefact:
    """A file a run wrote (model, report, figure), by name and path."""

    name: str
    path: str
    kind: str = ""


@dataclass
class RunRecord:
    """One row of the ``runs`` table, JSON columns decoded.

    ``status`` is what a reader sees: the stored ``running`` becomes ``interrupted`` when the run's
    process is gone. ``started`` is when the current (or last) running segment began, ``active``
    the seconds of the closed segments."""

    id: str
    created: float
    finished: float | None
    verb: str
    argv: list[str]
    config: dict[str, Any]
    seed: int | None
    versions: dict[str, str]
    status: str
    error: str | None
    run_dir: str | None
    pid: int | None = None
    host: str | None = None
    started: float | None = None
    heartbeat: float | None = None
    active: float = 0.0
    metrics: list[Metric] = field(default_factory=list)
    artefacts: list[Artefact] = field(default_factory=list)

    @property
    def active_seconds(self) -> float:
        """Seconds the run's processes ran: closed segments plus the open one (to now, or to the last
        heartbeat of an interrupted run); the downtime between a kill and a resume is not counted."""
        if self.status not in ("running", "interrupted"):
            return self.active
        start = self.started if self.started is not None else self.created
        end = time.time() if self.status == "running" else (self.heartbeat or start)
        return self.active + max(0.0, end - start)

    @property
    def wall_seconds(self) -> float | None:
        """Seconds from creation to finish (``None`` while running or interrupted)."""
        return None if self.finished is None else self.finished - self.created

    @property
    def duration(self) -> float | None:
        """Active seconds (see :attr:`active_seconds`); ``None`` while the run is still running."""
        return None if self.status == "running" else self.active_seconds

    def resume_command(self, store_arg: str | None = None) -> str:
        """The command line that continues this run (``--store PATH`` appended when given)."""
        tail = f" --store {store_arg}" if store_arg else ""
        return f"fortify {self.verb} --resume {self.id}{tail}"


# ----------------------------------------------------------------------------------------------- store
class RunStore:
    """SQLite-backed record of runs; safe for many concurrent writer processes.

    ``readonly=True`` opens an existing store without ever writing to it (``runs ls``/``show``);
    ``stale_after`` is the heartbeat age (seconds) after which a run is reported ``interrupted``.

    >>> store = RunStore("fortify-runs/fortify.db")            # doctest: +SKIP
    >>> rid = store.start_run("run", argv=[], config={}, seed=0)  # doctest: +SKIP
    >>> store.log_metric(rid, "test_acc", 0.98, stage="evaluate")  # doctest: +SKIP
    >>> store.finish_run(rid, "ok")                             # doctest: +SKIP
    """

    def __init__(self, path: str | os.PathLike[str], *, timeout: float = 60.0, retries: int = 50,
                 readonly: bool = False, stale_after: float = STALE_SECONDS) -> None:
        self.path = Path(path)
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.readonly = bool(readonly)
        self.stale_after = float(stale_after)
        self._ro_query = "mode=ro"
        self.schema_version = self._open_readonly() if self.readonly else self._open_for_writing()
        self._run_cols = RUN_COLS_V1 if self.schema_version == 1 else RUN_COLS

    # -- opening -------------------------------------------------------------------------------
    def _check_magic(self) -> bool:
        """False for an empty file; CorruptStoreError for a file that is not SQLite."""
        if self.path.is_dir():
            raise StoreError(f"run store {str(self.path)!r} is a folder; pass the SQLite file (e.g. "
                             f"{str(self.path / DB_NAME)!r})")
        try:
            with open(self.path, "rb") as f:
                head = f.read(len(SQLITE_MAGIC))
        except OSError as e:
            raise StoreError(f"cannot open run store {str(self.path)!r}: {_reason(e)}") from None
        if head and head != SQLITE_MAGIC:
            raise CorruptStoreError(f"{str(self.path)!r} is not an SQLite database (not a fortify run store, "
                                    "nor anything else it can read); it was left untouched")
        return bool(head)

    def _open_readonly(self) -> int:
        if not self.path.is_file():
            raise StoreError(f"no run store at {str(self.path)!r}")
        if not self._check_magic():
            return 0
        return self._guard(lambda: self._with_ro(lambda con: identify(con, self.path)), "open")

    def _open_for_writing(self) -> int:
        try:
            if self.path.parent != Path(""):
                self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot open run store {str(self.path)!r}: {_reason(e)}") from None
        exists = self.path.exists()
        if exists and self._check_magic():  # look before touching: a foreign file is refused unwritten
            version = self._guard(lambda: self._with_ro(lambda con: identify(con, self.path)), "open")
            if version == SCHEMA_VERSION:
                self._check_writable(exists)
                return version
        self._check_writable(exists)
        version = self._write(lambda con: initialise(con, self.path))
        self._write(use_wal, transaction=False)
        return version

    def _check_writable(self, exists: bool) -> None:
        folder = self.path.parent if str(self.path.parent) else Path(".")
        blocked = folder if not os.access(folder, os.W_OK) else self.path if exists and not os.access(
            self.path, os.W_OK) else None
        if blocked is not None:
            raise ReadOnlyStoreError(
                f"run store {str(self.path)!r} is read-only ({str(blocked)!r} cannot be written): `fortify runs "
                "ls/show` can read it; pass --store with a writable file to record runs")

    # -- connection handling -------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(str(self.path), timeout=self.timeout, isolation_level=None)
        con.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
        con.execute("PRAGMA synchronous = NORMAL")
        return con

    def _connect_ro(self) -> sqlite3.Connection:
        """A connection that cannot write: ``mode=ro``, or ``immutable=1`` where the folder is read-only."""
        uri = self.path.absolute().as_uri()
        while True:
            con = sqlite3.connect(f"{uri}?{self._ro_query}", uri=True, timeout=self.timeout, isolation_level=None)
            try:
                con.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
                con.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
                return con
            except sqlite3.OperationalError as e:
                con.close()
                if self._ro_query != "mode=ro" or error_kind(e) not in ("cantopen", "readonly"):
                    raise
                self._ro_query = "immutable=1"  # no -shm can be made: nobody can be writing it either

    def _with_ro(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        with closing(self._connect_ro()) as con:
            return fn(con)

    def _with_rw(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        with closing(self._connect()) as con:
            return fn(con)

    def _guard(self, fn: Callable[[], _T], action: str) -> _T:
        """Run ``fn``, turning any sqlite3 error into a one-line StoreError."""
        try:
            return fn()
        except sqlite3.Error as e:
            raise self._error(e, action) from None

    def _write(self, fn: Callable[[sqlite3.Connection], _T], *, transaction: bool = True) -> _T:
        """Run ``fn`` in one ``BEGIN IMMEDIATE`` transaction (or none: ``transaction=False``), retrying
        while the database is busy; an sqlite3 error becomes a StoreError."""
        if self.readonly:
            raise ReadOnlyStoreError(f"run store {str(self.path)!r} was opened read-only; nothing was written")
        delay = 0.01
        for attempt in range(self.retries + 1):
            try:
                with closing(self._connect()) as con:
                    if not transaction:
                        return fn(con)
                    con.execute("BEGIN IMMEDIATE")
                    try:
                        result = fn(con)
                        con.execute("COMMIT")
                        return result
                    except BaseException:
                        rollback(con)
                        raise
            except sqlite3.Error as e:
                if error_kind(e) != "busy" or attempt == self.retries:
                    raise self._error(e, "write") from None
                time.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, 1.0)
        raise AssertionError("unreachable")  # pragma: no cover

    def _read(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        run = self._with_ro if self.readonly else self._with_rw
        return self._guard(lambda: run(lambda con: con.execute(sql, tuple(params)).fetchall()), "read")

    def _error(self, e: sqlite3.Error, action: str) -> StoreError:
        """The typed, one-line error for an sqlite3 error met while ``action`` (open, read, write)."""
        return store_error(e, self.path, action, self.timeout)


    def journal_mode(self) -> str:
        """The database's journal mode (``wal`` once opened for writing by a RunStore)."""
        return str(self._read("PRAGMA journal_mode")[0][0]).lower()

    # -- writing -------------------------------------------------------------------------------
    def start_run(
        self,
        verb: str,
        *,
        argv: list[str],
        config: Mapping[str, Any],
        seed: int | None,
        run_dir: str | os.PathLike[str] | None = None,
        run_id: str | None = None,
        versions: Mapping[str, str] | None = None,
    ) -> str:
        """Insert a ``running`` run owned by this process (pid, host, heartbeat) and return its id (a
        fresh :func:`new_run_id` unless given)."""
        vers = json.dumps(dict(versions) if versions is not None else package_versions())
        cfg = json.dumps(config, default=str, sort_keys=True)
        folder = None if run_dir is None else str(run_dir)

        def insert(con: sqlite3.Connection, rid: str) -> bool:
            if con.execute("SELECT 1 FROM runs WHERE id = ?", (rid,)).fetchone():
                return False
            now = time.time()
            con.execute(
                "INSERT INTO runs (id, created, verb, argv, config, seed, versions, status, run_dir, pid, host,"
                " started, heartbeat, active) VALUES (?, ?, ?, ?, ?, ?, ?, 'running', ?, ?, ?, ?, ?, 0)",
                (rid, now, verb, json.dumps(list(argv)), cfg, seed, vers, folder, os.getpid(), this_host(),
                 now, now))
            return True

        for _ in range(20):
            rid = run_id or new_run_id()
            if self._write(lambda con: insert(con, rid)):
                return rid
            if run_id is not None:
                raise OutputError(f"run id {run_id!r} already exists in {str(self.path)!r}")
        raise OutputError("could not allocate a unique run id")  # pragma: no cover

    def reopen_run(self, run_id: str, argv: list[str] | None = None) -> None:
        """Mark an existing run ``running`` again in this process (``--resume``); its metrics and artefacts
        are kept, the interrupted segment's time (to its last heartbeat) joins ``active``. A run whose
        process is still alive is refused (ConfigError)."""
        rid = self.resolve(run_id)

        def reopen(con: sqlite3.Connection) -> None:
            rec = self._record(con.execute(f"SELECT {RUN_COLS} FROM runs WHERE id = ?", (rid,)).fetchone())
            if rec.status == "running" and not (rec.pid == os.getpid() and rec.host == this_host()):
                raise ConfigError(f"run {rid} is still running (pid {rec.pid} on {rec.host}, last heartbeat "
                                  f"{time.time() - (rec.heartbeat or rec.created):.0f}s ago); wait for it or stop it")
            closed = rec.active_seconds if rec.status == "interrupted" else rec.active
            now = time.time()
            sets = ("status = 'running', error = NULL, finished = NULL, pid = ?, host = ?, started = ?, "
                    "heartbeat = ?, active = ?")
            params: list[Any] = [os.getpid(), this_host(), now, now, closed]
            if argv is not None:
                sets += ", argv = ?"
                params.append(json.dumps(list(argv)))
            con.execute(f"UPDATE runs SET {sets} WHERE id = ?", (*params, rid))

        self._write(reopen)

    def heartbeat(self, run_id: str) -> None:
        """Record that ``run_id``'s process is alive now (no effect once the run has finished)."""
        self._write(lambda con: con.execute(
            "UPDATE runs SET heartbeat = ? WHERE id = ? AND status = 'running'", (time.time(), run_id)))

    def keep_alive(self, run_id: str, interval: float = HEARTBEAT_SECONDS) -> "Heartbeat":
        """Start a daemon thread writing :meth:`heartbeat` every ``interval`` seconds; ``stop()`` it."""
        return Heartbeat(self, run_id, interval)

    def set_run_dir(self, run_id: str, run_dir: str | os.PathLike[str]) -> None:
        """Record where the run's files are written."""
        self._write(lambda con: con.execute("UPDATE runs SET run_dir = ? WHERE id = ?", (str(run_dir), run_id)))

    def log_metric(self, run_id: str, key: str, value: float | None, *, stage: str = "",
                   step: int | None = None) -> None:
        """Record one number (``None`` for NaN/undefined)."""
        self.log_metrics(run_id, {key: value}, stage=stage, step=step)

    def log_metrics(self, run_id: str, values: Mapping[str, float | None], *, stage: str = "",
                    step: int | None = None) -> None:
        """Record several numbers in one transaction (which also refreshes the run's heartbeat)."""
        now = time.time()
        rows = [(run_id, str(k), _num(v), stage, step, now) for k, v in values.items()]

        def insert(con: sqlite3.Connection) -> None:
            con.executemany(
                "INSERT INTO metrics (run_id, key, value, stage, step, time) VALUES (?, ?, ?, ?, ?, ?)", rows)
            con.execute("UPDATE runs SET heartbeat = ? WHERE id = ? AND status = 'running'", (now, run_id))

        self._write(insert)

    def add_artefact(self, run_id: str, name: str, path: str | os.PathLike[str], kind: str = "") -> None:
        """Record a file the run wrote (recording the same name and path twice keeps one row)."""
        self._write(lambda con: con.execute(
            "INSERT INTO artefacts (run_id, name, path, kind) SELECT ?, ?, ?, ? WHERE NOT EXISTS "
            "(SELECT 1 FROM artefacts WHERE run_id = ? AND name = ? AND path = ?)",
            (run_id, name, str(path), kind, run_id, name, str(path))))

    def finish_run(self, run_id: str, status: str = "ok", error: str | None = None) -> None:
        """Mark a run ``ok`` or ``failed`` (with its one-line ``error``), closing its active segment."""
        if status not in STATUSES:
            raise ConfigError(f"unknown run status {status!r}; allowed: {', '.join(STATUSES)}")
        line = None if error is None else (str(error).strip().splitlines() or [""])[0][:2000]
        now = time.time()
        self._write(lambda con: con.execute(
            "UPDATE runs SET active = CASE WHEN status = 'running' THEN active + MAX(0, ? - COALESCE(started, "
            "created)) ELSE active END, status = ?, error = ?, finished = ?, heartbeat = ? WHERE id = ?",
            (now, status, line, now, now, run_id)))

    # -- reading -------------------------------------------------------------------------------
    def resolve(self, run_id: str) -> str:
        """The full id of the run whose id is or starts with ``run_id`` (unique prefix allowed)."""
        exact = self._read("SELECT id FROM runs WHERE id = ?", (run_id,))
        if exact:
            return str(exact[0][0])
        like = run_id.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        rows = self._read("SELECT id FROM runs WHERE id LIKE ? ESCAPE '\\' ORDER BY id", (like,))
        if len(rows) == 1:
            return str(rows[0][0])
        if not rows:
            raise UnknownNameError(f"unknown run id {run_id!r} in {str(self.path)!r}")
        raise UnknownNameError(f"run id prefix {run_id!r} is ambiguous: {', '.join(r[0] for r in rows[:5])}")

    def get_run(self, run_id: str) -> RunRecord:
        """The run (by id or unique prefix) with its metrics and artefacts."""
        rid = self.resolve(run_id)
        rec = self._record(self._read(f"SELECT {self._run_cols} FROM runs WHERE id = ?", (rid,))[0])
        rec.metrics = self.metrics(rid)
        rec.artefacts = self.artefacts(rid)
        return rec

    def list_runs(self, limit: int | None = None) -> list[RunRecord]:
        """Runs, newest first (metrics and artefacts not loaded); ``limit`` must be >= 1 when given."""
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise ConfigError(f"limit must be a whole number >= 1 (or None for all runs), got {limit!r}")
        if self.schema_version == 0:
            return []
        sql = f"SELECT {self._run_cols} FROM runs ORDER BY created DESC, id DESC"
        params: tuple[Any, ...] = ()
        if limit is not None:
            sql += " LIMIT ?"
            params = (limit,)
        return [self._record(r) for r in self._read(sql, params)]

    def metrics(self, run_id: str) -> list[Metric]:
        """Every metric row of ``run_id`` in logging order."""
        rows = self._read("SELECT key, value, stage, step FROM metrics WHERE run_id = ? ORDER BY rowid", (run_id,))
        return [Metric(k, v, s, st) for k, v, s, st in rows]

    def artefacts(self, run_id: str) -> list[Artefact]:
        """Every artefact row of ``run_id`` in logging order."""
        rows = self._read("SELECT name, path, kind FROM artefacts WHERE run_id = ? ORDER BY rowid", (run_id,))
        return [Artefact(n, p, k) for n, p, k in rows]

    def final_metrics(self, run_id: str) -> dict[str, float | None]:
        """The last value logged for each metric key (``stage/key`` when a stage is recorded)."""
        out: dict[str, float | None] = {}
        for m in self.metrics(run_id):
            out[f"{m.stage}/{m.key}" if m.stage else m.key] = m.value
        return out

    def is_alive(self, pid: int | None, host: str | None, heartbeat: float | None, now: float | None = None) -> bool:
        """Whether a ``running`` row with this pid, host and heartbeat still has a live process."""
        now = time.time() if now is None else now
        fresh = heartbeat is not None and now - heartbeat <= self.stale_after
        if pid is not None and host == this_host():
            return process_alive(int(pid)) and fresh
        return fresh

    def _record(self, row: tuple[Any, ...]) -> RunRecord:
        rid, created, finished, verb, argv, config, seed, versions, status, error, run_dir, *live = row
        pid, host, started, beat, active = live
        if status == "running" and not self.is_alive(pid, host, beat):
            status = "interrupted"
        return RunRecord(rid, created, finished, verb, json.loads(argv), json.loads(config), seed,
                         json.loads(versions), status, error, run_dir, pid, host, started, beat, float(active or 0))


def _num(v: Any) -> float | None:
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ConfigError(f"metric values must be numbers, got {v!r}") from None
    return None if f != f else f


def _reason(e: BaseException) -> str:
    return getattr(e, "strerror", None) or str(e) or type(e).__name__


__all__ = ["RunStore", "RunRecord", "Metric", "Artefact", "Heartbeat", "default_store_path", "package_versions",
           "new_run_id", "this_host", "process_alive", "DEFAULT_OUT", "DB_NAME", "SCHEMA_VERSION", "MIGRATIONS",
           "APPLICATION", "APPLICATION_ID", "StoreError", "ForeignStoreError", "CorruptStoreError",
           "StoreVersionError", "ReadOnlyStoreError", "StoreBusyError", "StoreFullError"]
