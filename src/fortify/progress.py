"""Progress of long steps, shared by every pillar: live bars on a terminal, plain lines elsewhere.

A step opens a :func:`task` (a context manager) and advances it; :func:`echo` writes one finished line (an
epoch summary, a stage result). Where the output goes decides the look:

* **terminal** (stderr is a TTY): rich bars on stderr, one live display shared by nested tasks (a compression
  step and the fine-tuning epochs inside it), removed when the task ends; echoed lines print above them.
* **file or pipe** (batch jobs, CI, ``2> log``): a plain line per open task every ``interval`` seconds
  (``$FORTIFY_PROGRESS_INTERVAL``, default 10) from a background ticker, so a step that never advances still
  shows it is alive, and one ``... done`` line when a task that ran >= 2 s ends. Every line is written whole
  and flushed at once: a log read while the job runs (or after a ``kill -9``) holds everything so far.

Library calls stay silent unless asked: a task shows when ``enabled=True`` is passed, or, with the default
``enabled=None``, inside ``with progress.enabled():`` (the pipeline enables it unless ``--quiet``).

>>> with enabled(), task("curve linf", total=3, unit="attacks") as t:   # doctest: +SKIP
...     for _ in range(3):
...         t.advance()
"""
from __future__ import annotations

import math
import os
import sys
import threading
import time
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Iterator

from fortify.errors import ConfigError

#: seconds between two plain progress lines of one task when stderr is not a terminal
DEFAULT_INTERVAL = 10.0
#: a task that ran at least this long prints a ``done`` line in plain mode
MIN_SECONDS = 2.0
#: widest plain line (longer ones are cut with an ellipsis)
WIDTH = 100
INTERVAL_ENV = "FORTIFY_PROGRESS_INTERVAL"

_ENABLED: ContextVar[bool] = ContextVar("fortify_progress_enabled", default=False)


@contextmanager
def enabled(flag: bool = True) -> Iterator[None]:
    """Show (``flag=True``) or hide the tasks opened with ``enabled=None`` inside the block."""
    token = _ENABLED.set(bool(flag))
    try:
        yield
    finally:
        _ENABLED.reset(token)


def is_enabled(override: bool | None = None) -> bool:
    """``override`` when given, else whether an enclosing :func:`enabled` block turned progress on."""
    return _ENABLED.get() if override is None else bool(override)


def interval() -> float:
    """Seconds between plain progress lines: ``$FORTIFY_PROGRESS_INTERVAL`` (> 0) or :data:`DEFAULT_INTERVAL`."""
    raw = os.environ.get(INTERVAL_ENV, "").strip()
    if not raw:
        return DEFAULT_INTERVAL
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{INTERVAL_ENV} must be a number of seconds > 0, got {raw!r}")
    return value


def fmt_seconds(s: float) -> str:
    """``4.2 s``, ``1m05s``, ``2h03m``: short wall times for progress lines."""
    if not math.isfinite(s) or s < 0:
        return "?"
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"


def clip(text: str, width: int = WIDTH) -> str:
    """``text`` cut to ``width`` columns (an ellipsis marks the cut)."""
    return text if len(text) <= width else text[:width - 1] + "…"


def log_console() -> Any:
    """A rich ``Console`` on stderr for run messages: on a terminal it wraps at the terminal's width; in files
    and pipes (where rich would break lines at 80 columns) one message stays one line."""
    from rich.console import Console

    c = Console(stderr=True)
    if not c.is_terminal:
        c.soft_wrap = True
    return c


def _terminal() -> bool:
    """Whether stderr is an interactive terminal (rich's detection, which honours FORCE_TERMINAL / TERM=dumb)."""
    from rich.console import Console

    c = Console(stderr=True)
    return bool(c.is_terminal) and not c.is_dumb_terminal


class Task:
    """One running step: ``completed`` of ``total`` units, a free-text ``info``; see :func:`task`."""

    def __init__(self, description: str, total: int | None, unit: str, display: "_Display | None",
                 done_line: bool = True) -> None:
        """Use :func:`task` instead; ``display=None`` makes every method a no-op (progress disabled)."""
        self.description = str(description)
        self.done_line = done_line
        self.total = None if total is None else max(0, int(total))
        self.unit = unit
        self.completed = 0
        self.info = ""
        self.started = time.monotonic()
        self.last_line = self.started
        self.rich_id: Any = None
        self.closed = False
        self._display = display

    @property
    def shown(self) -> bool:
        """Whether this task draws anything."""
        return self._display is not None

    def elapsed(self) -> float:
        """Seconds since the task opened."""
        return time.monotonic() - self.started

    def advance(self, n: int = 1, *, info: str | None = None) -> None:
        """``n`` more units done; ``info`` replaces the free text (running loss, current attack)."""
        self.update(completed=self.completed + int(n), info=info)

    def update(self, *, description: str | None = None, completed: int | None = None, total: int | None = None,
               info: str | None = None) -> None:
        """Change any of the shown fields."""
        if description is not None:
            self.description = str(description)
        if completed is not None:
            self.completed = int(completed)
        if total is not None:
            self.total = max(0, int(total))
        if info is not None:
            self.info = str(info)
        if self._display is not None and not self.closed:
            self._display.refresh(self)

    def line(self, *, done: bool = False) -> str:
        """The plain text of this task: ``desc 3/10 unit (30%)  info  12.3 s, eta 28.7 s`` (or ``... done in``)."""
        parts = [self.description]
        unit = f" {self.unit}" if self.unit else ""
        if self.total:
            parts.append(f"{self.completed}/{self.total}{unit} ({self.completed / self.total:.0%})")
        elif self.completed:
            parts.append(f"{self.completed}{unit}")
        if self.info:
            parts.append(self.info)
        took = self.elapsed()
        if done:
            parts.append(f"done in {fmt_seconds(took)}")
        elif self.total and 0 < self.completed < self.total:
            eta = took * (self.total - self.completed) / self.completed
            parts.append(f"{fmt_seconds(took)}, eta {fmt_seconds(eta)}")
        else:
            parts.append(fmt_seconds(took))
        return clip("  ".join(parts))

    def close(self) -> None:
        """End the task (idempotent): removes its bar, or prints its ``done`` line in plain mode."""
        if self.closed:
            return
        self.closed = True
        if self._display is not None:
            self._display.remove(self)

    def __enter__(self) -> "Task":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Display:
    """The process's one progress display: a rich ``Progress`` on a terminal, a ticker thread otherwise."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.tasks: list[Task] = []
        self.rich: Any = None
        self.ticker: threading.Thread | None = None
        self.wake = threading.Event()

    # -- tasks ----------------------------------------------------------------------------------
    def add(self, t: Task) -> None:
        """Show ``t`` (starting the live display or the ticker if it is the first task)."""
        with self.lock:
            if not self.tasks:
                self._start(_terminal())
            self.tasks.append(t)
            if self.rich is not None:
                t.rich_id = self.rich.add_task(t.description, total=t.total, info=t.info)

    def refresh(self, t: Task) -> None:
        """Redraw ``t`` after an update (plain mode draws on the ticker's schedule)."""
        with self.lock:
            if self.rich is not None and t.rich_id is not None:
                self.rich.update(t.rich_id, description=t.description, total=t.total, completed=t.completed,
                                 info=t.info)

    def remove(self, t: Task) -> None:
        """Stop showing ``t``; the last task stops the live display or the ticker."""
        with self.lock:
            if t in self.tasks:
                self.tasks.remove(t)
            if self.rich is not None and t.rich_id is not None:
                self.rich.remove_task(t.rich_id)
            elif self.rich is None and t.done_line and t.elapsed() >= MIN_SECONDS:
                self.write(t.line(done=True))
            if not self.tasks:
                self._stop()

    # -- output ---------------------------------------------------------------------------------
    def write(self, text: str) -> None:
        """One whole line on stderr (above the bars on a terminal), flushed now."""
        with self.lock:
            if self.rich is not None:
                self.rich.console.print(text, markup=False, highlight=False, soft_wrap=True)
                return
            stream = sys.stderr
            if stream is None:  # pythonw and friends
                return
            stream.write(text + "\n")
            stream.flush()

    def depth(self) -> int:
        """How many tasks are open (an echoed line nested in a task is indented by the caller)."""
        return len(self.tasks)

    # -- lifecycle ------------------------------------------------------------------------------
    def _start(self, terminal: bool) -> None:
        if terminal:
            self.rich = _rich_progress()
            self.rich.start()
            return
        self.wake = threading.Event()  # one per ticker: a stopped ticker never sees a later start
        self.ticker = threading.Thread(target=self._tick, args=(interval(), self.wake), name="fortify-progress",
                                       daemon=True)
        self.ticker.start()

    def _stop(self) -> None:
        if self.rich is not None:
            self.rich.stop()
            self.rich = None
        if self.ticker is not None:
            self.wake.set()  # the daemon ticker ends at its next poll (never joined under the lock)
            self.ticker = None

    def _tick(self, every: float, wake: threading.Event) -> None:
        """Plain mode: every ``every`` seconds, one line per task that printed nothing for that long."""
        poll = min(every, 0.5)
        while not wake.wait(poll):
            now = time.monotonic()
            with self.lock:
                if wake.is_set():
                    return
                for t in list(self.tasks):
                    if now - t.last_line >= every:
                        t.last_line = now
                        self.write(t.line())


def _rich_progress() -> Any:
    """The terminal display: description, bar, M/N, elapsed, eta, info (never wrapping)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.progress import TimeRemainingColumn
    from rich.table import Column

    return Progress(
        TextColumn("[bold]{task.description}", table_column=Column(no_wrap=True)),
        BarColumn(bar_width=20),
        MofNCompleteColumn(table_column=Column(no_wrap=True)),
        TimeElapsedColumn(table_column=Column(no_wrap=True)),
        TextColumn("eta", table_column=Column(no_wrap=True)),
        TimeRemainingColumn(table_column=Column(no_wrap=True)),
        TextColumn("{task.fields[info]}", markup=False,
                   table_column=Column(ratio=1, no_wrap=True, overflow="ellipsis")),
        console=Console(stderr=True), transient=True,
    )


_DISPLAY = _Display()


def task(description: str, total: int | None = None, *, unit: str = "", enabled: bool | None = None,
         done_line: bool = True) -> Task:
    """Open a progress task of ``total`` units (None: unknown); use it as a context manager.

    ``enabled``: True / False force it on or off; None follows the enclosing :func:`enabled` block (off by
    default, so library calls print nothing). A disabled task accepts every call and shows nothing.
    ``done_line=False``: no ``done`` line in plain mode (the caller prints its own summary).
    """
    shown = is_enabled(enabled)
    t = Task(description, total, unit, _DISPLAY if shown else None, done_line)
    if shown:
        _DISPLAY.add(t)
    return t


def echo(text: str, *, enabled: bool | None = None) -> None:
    """Write one line to stderr now, flushed (above the bars on a terminal); ``enabled`` as in :func:`task`."""
    if is_enabled(enabled):
        _DISPLAY.write(str(text))


def open_tasks() -> int:
    """Number of tasks shown right now (0 outside any step)."""
    return _DISPLAY.depth()


__all__ = ["DEFAULT_INTERVAL", "INTERVAL_ENV", "MIN_SECONDS", "Task", "WIDTH", "clip", "echo", "enabled",
           "fmt_seconds", "interval", "is_enabled", "log_console", "open_tasks", "task"]
