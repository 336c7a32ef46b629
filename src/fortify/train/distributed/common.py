"""Pieces shared by the parent and the worker processes: the job description, process-group
setup on 127.0.0.1, flat parameter/gradient buffers, and the result / error files a worker leaves
for the parent (read back with ``torch.load(weights_only=True)`` and JSON, never unpickled)."""
from __future__ import annotations

import json
import math
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.distributed as dist
from torch import nn

from fortify.errors import FortifyError, WorkerError
from fortify.train.config import TrainConfig
from fortify.train.tasks.base import Task

#: the host every process group binds to; nothing leaves the machine
HOST = "127.0.0.1"
#: float32 message fields hold integer counters exactly only below 2**24
EXACT_INT = 1 << 24


@dataclass
class Job:
    """Everything a worker needs; pickled once to each process at start-up.

    ``world_size`` counts processes (async: the gradient workers plus the parameter server).
    ``model`` is a private copy (never the user's object); ``train``/``val`` are ``(x (N, ...), y (N,))``.
    """

    mode: str
    world_size: int
    port: int
    timeout_s: float
    threads: int
    workdir: str
    model: nn.Module
    task: Task
    config: TrainConfig
    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor] | None
    checkpoint_dir: str | None = None
    progress: bool = False
    callbacks: list[Any] = field(default_factory=list)
    resume: bool = False


def init_group(rank: int, job: Job) -> None:
    """Join the gloo process group through the parent's TCPStore on ``127.0.0.1:job.port``.

    Gloo's transport is pinned to the loopback interface (``GLOO_SOCKET_IFNAME=lo`` unless the
    caller set it), so no socket is opened on any other interface.
    """
    if sys.platform.startswith("linux"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    timeout = timedelta(seconds=job.timeout_s)
    store = dist.TCPStore(HOST, job.port, is_master=False, timeout=timeout)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=job.world_size, timeout=timeout)


def trainable(model: nn.Module) -> list[nn.Parameter]:
    """The parameters the Trainer's optimiser steps (``requires_grad``), in module order."""
    return [p for p in model.parameters() if p.requires_grad]


def float_buffers(model: nn.Module) -> list[torch.Tensor]:
    """Floating-point buffers (e.g. BatchNorm running statistics), in module order."""
    return [b for b in model.buffers() if b.is_floating_point()]


def flatten(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate ``tensors`` into one float32 vector ``(sum numel,)`` (detached)."""
    if not tensors:
        return torch.zeros(0)
    return torch.cat([t.detach().reshape(-1).float() for t in tensors])


def unflatten_into(vec: torch.Tensor, tensors: Sequence[torch.Tensor]) -> int:
    """Copy consecutive slices of ``vec`` into ``tensors`` in place; return the elements used."""
    i = 0
    with torch.no_grad():
        for t in tensors:
            n = t.numel()
            t.copy_(vec[i:i + n].view_as(t).to(t.dtype))
            i += n
    return i


def exact(v: float, what: str) -> float:
    """``v`` when a float32 message field carries it exactly; WorkerError otherwise."""
    if not math.isfinite(v) or abs(v) >= EXACT_INT:
        raise WorkerError(f"{what}={v} does not fit the float32 message field (limit {EXACT_INT})")
    return float(v)


def plain(v: Any) -> bool:
    """True for JSON-like values (numbers, strings, None, lists/dicts of them)."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return True
    if isinstance(v, (list, tuple)):
        return all(plain(x) for x in v)
    if isinstance(v, dict):
        return all(isinstance(k, str) and plain(x) for k, x in v.items())
    return False


def plain_state(obj: object) -> dict[str, Any]:
    """The JSON-like attributes of ``obj`` (a callback's counters, events, last metrics)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(obj).items() if plain(v)}


def write_result(workdir: str, result: dict[str, Any]) -> None:
    """Rank 0's result (plain containers and tensors), written atomically as ``result.pt``."""
    tmp = Path(workdir) / "result.pt.tmp"
    torch.save(result, tmp)
    os.replace(tmp, Path(workdir) / "result.pt")


def read_result(workdir: str) -> dict[str, Any]:
    """Inverse of :func:`write_result` (``weights_only=True``); WorkerError when missing."""
    path = Path(workdir) / "result.pt"
    if not path.is_file():
        raise WorkerError("the workers exited without writing a result (rank 0 ended early)")
    return torch.load(path, map_location="cpu", weights_only=True)


def write_error(workdir: str, rank: int, exc: BaseException) -> None:
    """Record a worker's exception as ``error-<rank>.json`` (type, message, traceback, time)."""
    info = {"rank": rank, "type": type(exc).__name__, "module": type(exc).__module__,
            "message": " ".join(str(exc).split()), "time": time.time(),
            "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-4000:]}
    try:
        (Path(workdir) / f"error-{rank}.json").write_text(json.dumps(info), encoding="utf-8")
    except OSError:  # pragma: no cover - nothing better to do; the exit code still reports failure
        pass


def read_errors(workdir: str) -> list[dict[str, Any]]:
    """The recorded worker errors, earliest first."""
    out = []
    for p in Path(workdir).glob("error-*.json"):
        try:
            out.append(json.loads(p.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue
    return sorted(out, key=lambda e: e.get("time", 0.0))


def as_parent_error(info: dict[str, Any]) -> FortifyError:
    """Rebuild a worker's error: its own type when it is a :mod:`fortify.errors` class (or a
    subclass defined in fortify), :class:`WorkerError` otherwise; the message names the rank."""
    import fortify.errors as errors

    cls = getattr(errors, str(info.get("type")), None)
    msg = f"worker rank {info.get('rank')}: {info.get('message') or info.get('type')}"
    if isinstance(cls, type) and issubclass(cls, FortifyError):
        return cls(msg)
    return WorkerError(f"{msg} ({info.get('type')})")


__all__ = ["Job", "WorkerError", "init_group", "trainable", "float_buffers", "flatten", "unflatten_into",
           "write_result", "read_result", "write_error", "read_errors", "as_parent_error", "plain_state", "HOST"]
