"""Progress of :class:`fortify.train.Trainer`: a live bar per epoch and one compact line per finished epoch.

The bar (:mod:`fortify.progress`: rich on a terminal, periodic plain lines in files and pipes) shows the
epoch's steps, ETA and running loss / accuracy. Each finished epoch prints one line of at most 100 columns::

    epoch 3/8  loss 0.412  train 91.2%  val 97.5%  robust 63.0%  eps 0.3  lr 0.05  12.3 s

(headline figures only; every metric of the record stays in the run store and the report). A disabled
display prints nothing.
"""
from __future__ import annotations

import math
from typing import Any

from fortify import progress as fprogress

#: widest epoch line
WIDTH = 100


def _num(record: dict[str, Any], key: str) -> float | None:
    """``record[key]`` as a finite float, else None."""
    v = record.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
        return None
    return float(v)


def _pct(v: float) -> str:
    return f"{v:.1%}"


def _fields(record: dict[str, Any]) -> list[tuple[int, str]]:
    """``(priority, text)`` of the headline fields in display order; a lower priority is dropped first."""
    out: list[tuple[int, str]] = []
    spec = (("train_loss", "loss", lambda v: f"{v:.3g}", 9), ("train_acc", "train", _pct, 8),
            ("val_acc", "val", _pct, 7), ("robust_acc", "robust", _pct, 6), ("verified", "verified", _pct, 5),
            ("eps", "eps", lambda v: f"{v:.3g}", 2), ("lr", "lr", lambda v: f"{v:.3g}", 3))
    for key, label, fmt, prio in spec:
        v = _num(record, key)
        if v is not None:
            out.append((prio, f"{label} {fmt(v)}"))
    wall = _num(record, "wall_s")
    if wall is not None:
        out.append((4, fprogress.fmt_seconds(wall + (_num(record, "monitor_s") or 0.0))))
    if record.get("rolled_back"):
        out.append((10, "[rolled back]"))
    return out


def epoch_line(record: dict[str, Any], epochs: int | None = None, *, width: int = WIDTH) -> str:
    """One line (at most ``width`` columns) with the headline figures of an epoch record.

    ``epoch i/N`` first (``N = epochs``), then loss, train / val / robust (PGD monitor) / verified accuracy,
    eps, lr, the epoch's wall time (training plus monitor) and ``[rolled back]``; fields are dropped,
    least important first, until the line fits.
    """
    e = record.get("epoch")
    head = f"epoch {e}/{epochs}" if epochs else f"epoch {e}"
    fields = _fields(record)
    while True:
        text = "  ".join([head, *(t for _, t in fields)])
        if len(text) <= width or not fields:
            return fprogress.clip(text, width)
        fields.remove(min(fields, key=lambda f: f[0]))


def summarize(record: dict[str, Any]) -> str:
    """The epoch line without its ``epoch i/N`` head (kept for callers of the old API)."""
    return epoch_line(record).split("  ", 1)[-1] if len(_fields(record)) else ""


class EpochProgress:
    """Context manager; ``start_epoch`` opens a bar, ``step`` advances it, ``end_epoch`` prints the epoch line."""

    def __init__(self, enabled: bool, epochs: int, name: str) -> None:
        """``enabled=False`` makes every method a no-op; ``name`` (the task) labels the bar."""
        self.enabled = bool(enabled)
        self.epochs = epochs
        self.name = name
        self.last = ""
        self.indent = ""
        self._bar: fprogress.Task | None = None
        self._epoch = -1

    def __enter__(self) -> "EpochProgress":
        """Start; lines of a training nested in another step (fine-tuning) are indented."""
        self.indent = "  " * fprogress.open_tasks() if self.enabled else ""
        return self

    def __exit__(self, *exc: object) -> None:
        """Close the bar of an unfinished epoch."""
        self._close_bar()

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def start_epoch(self, epoch: int, steps: int) -> None:
        """Open the bar of ``epoch`` (0-based) with ``steps`` steps (closing the previous one)."""
        if not self.enabled:
            return
        self._close_bar()
        self._epoch = epoch
        self._bar = fprogress.task(f"{self.indent}{self.name} {epoch + 1}/{self.epochs}", total=steps,
                                   unit="steps", enabled=True, done_line=False)

    def step(self, loss: float, acc: float | None) -> None:
        """Advance one step showing the epoch's running loss / accuracy."""
        if self._bar is None:
            return
        info = f"loss {loss:.4f}" + (f" acc {acc:.3f}" if acc is not None else "")
        self._bar.advance(info=info)

    def end_epoch(self, record: dict[str, Any]) -> None:
        """Print the finished epoch's line (flushed) and close its bar."""
        self.last = summarize(record)
        if not self.enabled:
            return
        if self._bar is not None and record.get("epoch") == self._epoch + 1:
            self._close_bar()
        fprogress.echo(self.indent + epoch_line(record, self.epochs, width=WIDTH - len(self.indent)), enabled=True)


__all__ = ["EpochProgress", "WIDTH", "epoch_line", "summarize"]
