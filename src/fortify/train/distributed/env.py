"""torchrun-native data parallelism: join an initialised or ``env://`` process group from inside the Trainer.

``torchrun --nproc_per_node=N -m fortify train --recipe R`` (and ``--nnodes``/``--rdzv-*``, which torchrun
handles) starts N copies of the command with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT`` set. :func:`join` (called by :meth:`fortify.train.Trainer.fit`) sees them and

* uses the default process group when the caller already initialised one (any backend; it is used by
  every ``fit`` and never destroyed here), or
* initialises one with ``init_method="env://"`` (``gloo`` on CPU, ``nccl`` on CUDA) for this fit only:
  it is destroyed when the fit ends and later fits in the same process (e.g. rank 0's fine-tuning in
  the compress stage) train locally. Only the first fit of a process joins an env:// group.

The fit then runs the sync data-parallel step of :mod:`fortify.train.distributed.sync`: the
*global* batch is ``train.batch_size`` (the same seeded permutation on every rank, rank ``r`` of
``N`` takes the strided shard ``idx[r::N]``, a DistributedSampler without padding), gradients are
all-reduced weighted by shard size, rank 0 alone writes checkpoints and draws progress, and
:func:`sync_state` copies rank 0's complete run state (weights, optimiser, schedule, task state,
counters, history) to every rank after the fresh start or resume, so a checkpoint written with any
world size resumes with any other. Models with BatchNorm get synchronised batch statistics
(:mod:`fortify.train.distributed.syncbn`).

The project's own ``--nproc N`` launcher (:mod:`.launch`) starts its workers with the same variables
(its parent process hosts the store, as torchrun's agent does: ``TORCHELASTIC_USE_AGENT_STORE``), so
both entry points run this path.
"""
from __future__ import annotations

import io
import os
import sys
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from fortify.errors import ConfigError, WorkerError

#: the env:// variables torchrun sets (and the ``--nproc`` launcher sets for its workers)
ENV_KEYS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
#: seconds a collective may wait (``FORTIFY_DIST_TIMEOUT`` overrides)
DEFAULT_TIMEOUT_S = 600.0
_consumed = False  # an env:// group was already used (and destroyed) by a fit in this process


def env_world() -> tuple[int, int] | None:
    """``(rank, world_size)`` from torchrun's variables when ``WORLD_SIZE > 1``, else None.

    ConfigError for malformed values (names the variable)."""
    if not all(k in os.environ for k in ENV_KEYS):
        return None
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    except ValueError:
        raise ConfigError(f"RANK/WORLD_SIZE must be integers, got {os.environ['RANK']!r}/"
                          f"{os.environ['WORLD_SIZE']!r}") from None
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"RANK={rank} WORLD_SIZE={world}: need 0 <= RANK < WORLD_SIZE")
    return (rank, world) if world > 1 else None


def current_rank() -> int:
    """This process's rank: the initialised group's, else ``$RANK``, else 0."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def active() -> bool:
    """True when a fit in this process would train data-parallel (see the module doc)."""
    if not dist.is_available():
        return False
    if dist.is_initialized():
        return dist.get_world_size() > 1
    return not _consumed and env_world() is not None


def _timeout() -> timedelta:
    """``FORTIFY_DIST_TIMEOUT`` seconds (default 600)."""
    try:
        return timedelta(seconds=float(os.environ.get("FORTIFY_DIST_TIMEOUT", DEFAULT_TIMEOUT_S)))
    except ValueError:
        raise ConfigError("FORTIFY_DIST_TIMEOUT must be a number of seconds") from None


def join(device: torch.device) -> tuple[int, int, bool] | None:
    """Join the process group for one fit: ``(rank, world_size, owned)`` or None (train locally).

    ``owned`` is True when this call initialised the group (then :func:`leave` destroys it).
    """
    global _consumed
    if not active():
        return None
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), False
    rank, world = env_world() or (0, 1)
    if os.environ["MASTER_ADDR"] in ("127.0.0.1", "localhost") and sys.platform.startswith("linux"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # single-host run: no socket on other interfaces
    backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "gloo" and not dist.is_gloo_available():
        raise ConfigError("torchrun on CPU needs torch.distributed with the gloo backend, which this build lacks")
    kwargs: dict[str, Any] = {"device_id": device} if device.type == "cuda" else {}
    dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world, timeout=_timeout(), **kwargs)
    _consumed = True
    return rank, world, True


def leave(owned: bool) -> None:
    """Destroy the group when :func:`join` created it."""
    if owned and dist.is_initialized():
        dist.destroy_process_group()


def _to_bytes(obj: Any) -> torch.Tensor:
    """``torch.save`` of a plain container as a uint8 tensor ``(n,)``."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)


def broadcast_plain(obj: Any, rank: int, device: torch.device) -> Any:
    """Rank 0's ``obj`` (plain containers and tensors) on every rank; read back with
    ``torch.load(weights_only=True)``, never unpickled."""
    dev = device if dist.get_backend() == "nccl" else torch.device("cpu")
    data = _to_bytes(obj) if rank == 0 else torch.zeros(0, dtype=torch.uint8)
    size = torch.tensor([data.numel()], dtype=torch.int64, device=dev)
    dist.broadcast(size, 0)
    payload = data.to(dev) if rank == 0 else torch.empty(int(size), dtype=torch.uint8, device=dev)
    dist.broadcast(payload, 0)
    if rank == 0:
        return obj
    return torch.load(io.BytesIO(payload.cpu().numpy().tobytes()), map_location="cpu", weights_only=True)


def sync_state(trainer: Any) -> None:
    """Copy rank 0's run state to every rank (after its fresh start or checkpoint resume)."""
    par = trainer.parallel
    state = None
    if par.rank == 0:
        state = {"model": {k: v.detach().cpu() for k, v in trainer.model.state_dict().items()},
                 "optimizer": trainer.optimizer.state_dict(), "scheduler": trainer.scheduler.state_dict(),
                 "task_state": trainer.task.state_dict(), "history": trainer.history, "epoch": trainer.epoch,
                 "global_step": trainer.global_step, "grad_evals": trainer.grad_evals, "stopped": trainer.stopped}
    state = broadcast_plain(state, par.rank, trainer.device)
    if par.rank == 0:
        return
    trainer.model.load_state_dict(state["model"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.scheduler.load_state_dict(state["scheduler"])
    trainer.task.load_state_dict(state["task_state"])
    trainer.history = list(state["history"])
    trainer.epoch, trainer.global_step = int(state["epoch"]), int(state["global_step"])
    trainer.grad_evals, trainer.stopped = int(state["grad_evals"]), bool(state["stopped"])


def fit_parallel(trainer: Any, train: tuple[torch.Tensor, torch.Tensor], val: Any, resume: bool) -> list[Any]:
    """:meth:`Trainer.fit` as one data-parallel rank (see the module doc); ``trainer.dist_stats`` gets
    the run's statistics (world size, steps, rank-0 parameter spread, CPU seconds per rank)."""
    import time

    from fortify.train.distributed.sync import DataParallel, check_identical, gather_cpu
    from fortify.train.distributed.syncbn import synced_batchnorm

    if trainer.config.dist_mode != "sync":
        raise ConfigError(f"dist_mode={trainer.config.dist_mode} runs through fortify's own launcher (train.nproc / --nproc), not "
                          "under torchrun or an initialised process group; use dist_mode=sync")
    joined = join(trainer.device)
    assert joined is not None
    rank, world, owned = joined
    t0 = time.process_time()
    progress = trainer.progress
    trainer.parallel, trainer.progress = DataParallel(rank, world), progress and rank == 0
    try:
        if train[0].shape[0] < world or min(trainer.config.batch_size, train[0].shape[0]) < world:
            raise ConfigError(f"{world} ranks need at least {world} rows in every global batch "
                              f"(batch_size={trainer.config.batch_size}, {train[0].shape[0]} examples)")
        with synced_batchnorm(trainer.model) as n_bn:
            history = trainer._fit(train[0], train[1], val, resume)
        try:
            diff, cpu = check_identical(trainer.model), gather_cpu(t0)
        except RuntimeError as e:
            raise lost_peer(rank, "the end-of-training check", e) from None
        if diff != 0.0:
            raise WorkerError(f"rank {rank}: data-parallel ranks diverged: max |param difference| {diff:.3g}")
        trainer.dist_stats = {"mode": "sync", "world_size": world, "rank": rank, "steps": trainer.global_step,
                              "rank_param_max_diff": diff, "cpu_s": cpu, "synced_batchnorms": n_bn,
                              "backend": dist.get_backend()}
        return history
    finally:
        trainer.parallel, trainer.progress = None, progress
        leave(owned)


def lost_peer(rank: int, what: str, exc: BaseException) -> WorkerError:
    """The one-line error of a rank whose collective failed because another rank died."""
    msg = " ".join(str(exc).split())[:200]
    return WorkerError(f"rank {rank}: {what} failed ({type(exc).__name__}: {msg}); another rank stopped "
                       "first - see its error")


__all__ = ["fit_parallel", "join", "leave", "active", "env_world", "current_rank", "sync_state", "broadcast_plain", "lost_peer",
           "ENV_KEYS"]
