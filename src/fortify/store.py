"""The run store: every CLI run, its resolved config, versions, status, metrics and artefacts.

One SQLite file (default ``fortify-runs/fortify.db``; ``--store`` or the ``FORTIFY_STORE``
environment variable choose another) in WAL mode, so readers never block the writer, with a busy
timeout plus an explicit retry loop around every write transaction, so several processes writing
at once lose nothing. Each write is one short ``BEGIN IMMEDIATE`` transaction.

Tables::

    runs(id, created, finished, verb, argv, config, seed, versions, status, error, run_dir)
    metrics(run_id, key, value, stage, step, time)
    artefacts(run_id, name, path, kind)

``status`` is ``running`` while a run executes, then ``ok`` or ``failed`` (``error`` holds the
one-line error message).
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

DEFAULT_OUT = "fortify-runs"
DB_NAME = "fortify.db"
STATUSES = ("running", "ok", "failed")

_T = TypeVar("_T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
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
    run_dir TEXT
);
CREATE TABLE IF NOT EXISTS metrics (
    run_id TEXT NOT NULL REFERENCES runs(id),
    key TEXT NOT NULL,
    value REAL,
    stage TEXT NOT NULL DEFAULT '',
    step INTEGER,
    time REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS metrics_run ON metrics(run_id);
CREATE TABLE IF NOT EXISTS artefacts (
    run_id TEXT NOT NULL REFERENCES runs(id),
    name TEXT NOT NULL,
    path TEXT NOT NULL,
    kind TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS artefacts_run ON artefacts(run_id);
"""


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
    """One row of the ``runs`` table, JSON columns decoded."""

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
    metrics: list[Metric] = field(default_factory=list)
    artefacts: list[Artefact] = field(default_factory=list)

    @property
    def duration(self) -> float | None:
        """Seconds from start to finish (``None`` while running)."""
        return None if self.finished is None else self.finished - self.created


class RunStore:
    """SQLite-backed record of runs; safe for many concurrent writer processes.

    >>> store = RunStore("fortify-runs/fortify.db")            # doctest: +SKIP
    >>> rid = store.start_run("run", argv=[], config={}, seed=0)  # doctest: +SKIP
    >>> store.log_metric(rid, "test_acc", 0.98, stage="evaluate")  # doctest: +SKIP
    >>> store.finish_run(rid, "ok")                             # doctest: +SKIP
    """

    def __init__(self, path: str | os.PathLike[str], *, timeout: float = 60.0, retries: int = 50) -> None:
        self.path = Path(path)
        self.timeout = float(timeout)
        self.retries = int(retries)
        try:
            if self.path.parent != Path(""):
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self._write(lambda con: con.executescript(_SCHEMA), script=True)
        except (OSError, sqlite3.Error) as e:
            raise OutputError(f"cannot open run store {str(self.path)!r}: {_reason(e)}") from None

    # -- connection handling -------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(str(self.path), timeout=self.timeout, isolation_level=None)
        con.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
        mode = con.execute("PRAGMA journal_mode").fetchone()[0]
        if str(mode).lower() != "wal":
            con.execute("PRAGMA journal_mode = WAL")
        con.execute("PRAGMA synchronous = NORMAL")
        return con

    def _write(self, fn: Callable[[sqlite3.Connection], _T], *, script: bool = False) -> _T:
        """Run ``fn`` in one ``BEGIN IMMEDIATE`` transaction, retrying while the database is busy."""
        delay = 0.01
        for attempt in range(self.retries + 1):
            try:
                with closing(self._connect()) as con:
                    if script:
                        return fn(con)
                    con.execute("BEGIN IMMEDIATE")
                    try:
                        result = fn(con)
                        con.execute("COMMIT")
                        return result
                    except BaseException:
                        con.execute("ROLLBACK")
                        raise
            except sqlite3.OperationalError as e:
                msg = str(e).lower()
                if ("locked" not in msg and "busy" not in msg) or attempt == self.retries:
                    raise
                time.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, 1.0)
        raise AssertionError("unreachable")  # pragma: no cover

    def _read(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            with closing(self._connect()) as con:
                return con.execute(sql, tuple(params)).fetchall()
        except sqlite3.Error as e:
            raise OutputError(f"cannot read run store {str(self.path)!r}: {_reason(e)}") from None

    def journal_mode(self) -> str:
        """The database's journal mode (``wal`` once opened by a RunStore)."""
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
        """Insert a ``running`` run and return its id (a fresh :func:`new_run_id` unless given)."""
        vers = json.dumps(dict(versions) if versions is not None else package_versions())
        cfg = json.dumps(config, default=str, sort_keys=True)
        for _ in range(20):
            rid = run_id or new_run_id()
            try:
                self._write(
                    lambda con: con.execute(
                        "INSERT INTO runs (id, created, verb, argv, config, seed, versions, status, run_dir)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, 'running', ?)",
                        (rid, time.time(), verb, json.dumps(list(argv)), cfg, seed, vers,
                         None if run_dir is None else str(run_dir)),
                    )
                )
                return rid
            except sqlite3.IntegrityError:
                if run_id is not None:
                    raise OutputError(f"run id {run_id!r} already exists in {str(self.path)!r}") from None
        raise OutputError("could not allocate a unique run id")  # pragma: no cover

    def reopen_run(self, run_id: str, argv: list[str] | None = None) -> None:
        """Mark an existing run ``running`` again (``--resume``); its metrics and artefacts are kept."""
        rid = self.resolve(run_id)
        self._write(lambda con: con.execute(
            "UPDATE runs SET status = 'running', error = NULL, finished = NULL"
            + (", argv = ?" if argv is not None else "") + " WHERE id = ?",
            ((json.dumps(list(argv)), rid) if argv is not None else (rid,))))

    def set_run_dir(self, run_id: str, run_dir: str | os.PathLike[str]) -> None:
        """Record where the run's files are written."""
        self._write(lambda con: con.execute("UPDATE runs SET run_dir = ? WHERE id = ?", (str(run_dir), run_id)))

    def log_metric(self, run_id: str, key: str, value: float | None, *, stage: str = "",
                   step: int | None = None) -> None:
        """Record one number (``None`` for NaN/undefined)."""
        self.log_metrics(run_id, {key: value}, stage=stage, step=step)

    def log_metrics(self, run_id: str, values: Mapping[str, float | None], *, stage: str = "",
                    step: int | None = None) -> None:
        """Record several numbers in one transaction."""
        now = time.time()
        rows = [(run_id, str(k), _num(v), stage, step, now) for k, v in values.items()]
        self._write(lambda con: con.executemany(
            "INSERT INTO metrics (run_id, key, value, stage, step, time) VALUES (?, ?, ?, ?, ?, ?)", rows))

    def add_artefact(self, run_id: str, name: str, path: str | os.PathLike[str], kind: str = "") -> None:
        """Record a file the run wrote (recording the same name and path twice keeps one row)."""
        self._write(lambda con: con.execute(
            "INSERT INTO artefacts (run_id, name, path, kind) SELECT ?, ?, ?, ? WHERE NOT EXISTS "
            "(SELECT 1 FROM artefacts WHERE run_id = ? AND name = ? AND path = ?)",
            (run_id, name, str(path), kind, run_id, name, str(path))))

    def finish_run(self, run_id: str, status: str = "ok", error: str | None = None) -> None:
        """Mark a run ``ok`` or ``failed`` (with its one-line ``error``)."""
        if status not in STATUSES:
            raise ConfigError(f"unknown run status {status!r}; allowed: {', '.join(STATUSES)}")
        line = None if error is None else (str(error).strip().splitlines() or [""])[0][:2000]
        self._write(lambda con: con.execute(
            "UPDATE runs SET status = ?, error = ?, finished = ? WHERE id = ?", (status, line, time.time(), run_id)))

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
        rec = self._record(self._read(f"SELECT {_RUN_COLS} FROM runs WHERE id = ?", (rid,))[0])
        rec.metrics = self.metrics(rid)
        rec.artefacts = self.artefacts(rid)
        return rec

    def list_runs(self, limit: int | None = None) -> list[RunRecord]:
        """Runs, newest first (metrics and artefacts not loaded)."""
        sql = f"SELECT {_RUN_COLS} FROM runs ORDER BY created DESC, id DESC"
        params: tuple[Any, ...] = ()
        if limit is not None:
            sql += " LIMIT ?"
            params = (int(limit),)
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

    @staticmethod
    def _record(row: tuple[Any, ...]) -> RunRecord:
        rid, created, finished, verb, argv, config, seed, versions, status, error, run_dir = row
        return RunRecord(rid, created, finished, verb, json.loads(argv), json.loads(config), seed,
                         json.loads(versions), status, error, run_dir)


_RUN_COLS = "id, created, finished, verb, argv, config, seed, versions, status, error, run_dir"


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


__all__ = ["RunStore", "RunRecord", "Metric", "Artefact", "default_store_path", "package_versions",
           "new_run_id", "DEFAULT_OUT", "DB_NAME"]
