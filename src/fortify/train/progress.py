"""Rich progress display for :class:`fortify.train.Trainer`: one bar per epoch with ETA, the running
loss/accuracy of the epoch and the metrics of the last finished epoch. Writes to stderr; a
disabled display prints nothing."""
from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Column
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
        TimeRemainingColumn,
)

_SHOWN = ("train_loss", "train_acc", "val_acc")
_SHORT = {"train_loss": "loss", "train_acc": "acc", "val_acc": "val", "val_loss": "val_loss", "grad_evals": "grads",
          "wall_s": "s"}
_SKIP = {"epoch", "lr", "samples", "rolled_back"}


def _fmt(v: Any) -> str:
    """Three significant digits for floats."""
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def summarize(record: dict[str, Any]) -> str:
    """One-line summary of an epoch record: headline metrics first, then task/callback extras."""
    keys = [k for k in _SHOWN if record.get(k) is not None]
    keys += [k for k in record if k not in _SHOWN and k not in _SKIP and isinstance(record[k], (int, float))]
    text = " ".join(f"{_SHORT.get(k, k)} {_fmt(record[k])}" for k in keys)
    return text + (" [rolled back]" if record.get("rolled_back") else "")


class EpochProgress:
    """Context manager; ``start_epoch`` adds a bar, ``step`` advances it, ``end_epoch`` finishes it."""

    def __init__(self, enabled: bool, epochs: int, name: str) -> None:
        """``enabled=False`` makes every method a no-op."""
        self.enabled = bool(enabled)
        self.epochs = epochs
        self.name = name
        self.last = ""
        self._bar: TaskID | None = None
        self._progress: Progress | None = None
        if self.enabled:
            self._progress = Progress(
                TextColumn("[bold]{task.description}", table_column=Column(no_wrap=True)),
                BarColumn(bar_width=20),
                MofNCompleteColumn(table_column=Column(no_wrap=True)),
                TextColumn("eta", table_column=Column(no_wrap=True)),
                TimeRemainingColumn(table_column=Column(no_wrap=True)),
                TextColumn("{task.fields[info]}", table_column=Column(ratio=1, overflow="fold")),
                console=Console(stderr=True),
            )

    def __enter__(self) -> "EpochProgress":
        """Start drawing."""
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop drawing (leaves the finished bars on screen)."""
        if self._progress is not None:
            self._progress.stop()

    def start_epoch(self, epoch: int, steps: int) -> None:
        """Add the bar of ``epoch`` (0-based) with ``steps`` steps."""
        if self._progress is None:
            return
        desc = f"{self.name} {epoch + 1}/{self.epochs}"
        self._bar = self._progress.add_task(desc, total=steps, info=self.last)

    def step(self, loss: float, acc: float | None) -> None:
        """Advance one step showing the epoch's running loss / accuracy."""
        if self._progress is None or self._bar is None:
            return
        now = f"loss {loss:.4f}" + (f" acc {acc:.3f}" if acc is not None else "")
        info = now + (f" | last: {self.last}" if self.last else "")
        self._progress.update(self._bar, advance=1, info=info)

    def end_epoch(self, record: dict[str, Any]) -> None:
        """Show the finished epoch's metrics on its bar and remember them for the next bars."""
        self.last = summarize(record)
        if self._progress is None or self._bar is None:
            return
        self._progress.update(self._bar, info=self.last)


__all__ = ["EpochProgress", "summarize"]
