"""Parent side: validate, start the worker processes, watch them, collect the result.

The parent hosts the rendezvous ``TCPStore`` on ``127.0.0.1`` with an OS-chosen free port (no
race between picking and binding a port), starts the workers with ``torch.multiprocessing``
(``forkserver`` where available, otherwise ``spawn``; never plain ``fork`` of a process that may
run torch threads), and waits on the process sentinels: the first worker that exits with an
error ends the others and its own error is raised here (the fortify error type it raised, or
:class:`WorkerError`), so a crash never turns into a hang. Collective operations time out after
``timeout_s`` inside the workers, and the whole run may be bounded by ``deadline_s``.
"""
from __future__ import annotations

import copy
import multiprocessing.connection
import os
import shutil
import sys
import tempfile
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
import torch.multiprocessing as tmp

from fortify.errors import ConfigError
from fortify.train.distributed.common import (HOST, Job, WorkerError, as_parent_error, init_group, read_errors,
                                              read_result, write_error, write_result)

if TYPE_CHECKING:
    from multiprocessing.context import ForkServerContext, SpawnContext

#: default seconds a collective / point-to-point operation may wait inside a worker
DEFAULT_TIMEOUT_S = 600.0
START_METHODS = ("forkserver", "spawn")
#: modules the forkserver imports once before forking workers (see ``_preload``'s docstring)
PRELOAD = ["fortify.train.distributed._preload"]


def default_start_method() -> str:
    """``forkserver`` on POSIX (torch is imported once in the server, each worker starts in about
    a tenth of a second instead of re-importing torch), ``spawn`` elsewhere."""
    return "forkserver" if sys.platform != "win32" else "spawn"


def check_available() -> None:
    """ConfigError when this torch build has no torch.distributed or no gloo backend."""
    if not dist.is_available() or not dist.is_gloo_available():
        raise ConfigError("distributed training needs torch.distributed with the gloo backend, "
                          "which this torch build lacks; use nproc=1")


def validate(trainer: Any, n_train: int, resume: bool) -> None:
    """ConfigError for a distributed setting that cannot work with this trainer and data."""
    c = trainer.config
    check_available()
    if trainer.device.type != "cpu":
        raise ConfigError(f"distributed training runs on CPU (gloo); the model is on {trainer.device}")
    nb = -(-n_train // c.batch_size)
    if c.dist_mode == "sync":
        last = n_train - (nb - 1) * c.batch_size
        if min(c.batch_size, last) < c.nproc:
            raise ConfigError(
                f"nproc={c.nproc} sync workers need at least {c.nproc} rows in every global batch, but "
                f"batch_size={c.batch_size} on {n_train} examples leaves a batch of {min(c.batch_size, last)}; "
                "lower nproc or change batch_size")
        return
    if c.dist_mode == "producers":
        from fortify.train.distributed.producers import check

        check(trainer)
    if trainer.replays != 1:
        raise ConfigError(f"dist_mode={c.dist_mode} cannot replay minibatches (task replays={trainer.replays}); "
                          "use dist_mode=sync for this task")
    if resume:
        raise ConfigError(f"resuming is not supported with dist_mode={c.dist_mode}; use dist_mode=sync or start afresh")
    if nb < c.nproc:
        raise ConfigError(f"nproc={c.nproc} async workers need at least as many minibatches per epoch, "
                          f"got {nb} (batch_size={c.batch_size}, {n_train} examples)")


def _entry(rank: int, job: Job) -> None:
    """Process body: join the group, run the rank's role, leave an error file on failure."""
    os.environ["RANK"], os.environ["WORLD_SIZE"] = str(rank), str(job.world_size)
    if job.mode == "sync":  # torchrun's variables: the Trainer joins through env:// (the parent hosts the store)
        os.environ.update(LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(job.world_size), MASTER_ADDR=HOST,
                          MASTER_PORT=str(job.port), TORCHELASTIC_USE_AGENT_STORE="True",
                          FORTIFY_DIST_TIMEOUT=str(job.timeout_s))
    try:
        torch.set_num_threads(job.threads)
        # tensors pickled to several processes arrive in *shared* memory: give this rank private
        # copies of everything it writes to (the training data stays shared, read-only)
        job.model, job.task, job.callbacks = copy.deepcopy((job.model, job.task, job.callbacks))
        if job.mode != "sync":
            init_group(rank, job)
        try:
            result: dict[str, Any] | None = None
            if job.mode == "sync":
                from fortify.train.distributed import sync

                result = sync.run(rank, job)
            else:
                from fortify.train.distributed import async_sgd, producers

                if job.mode == "producers":
                    if rank == 0:
                        result = producers.run_trainer(job)
                    else:
                        producers.run_producer(rank, job)
                elif rank == 0:
                    result = async_sgd.run_server(job)
                else:
                    async_sgd.run_worker(rank, job)
            if rank == 0 and result is not None:
                write_result(job.workdir, result)
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()
    except BaseException as e:  # noqa: BLE001 - reported to the parent, then exit non-zero
        write_error(job.workdir, rank, e)
        sys.exit(1)


def launch(job_fields: dict[str, Any], n_procs: int, *, start_method: str | None = None,
           deadline_s: float | None = None) -> dict[str, Any]:
    """Run ``n_procs`` worker processes on ``Job(**job_fields)`` and return rank 0's result.

    Raises the first failing worker's error (see the module doc) or :class:`WorkerError` when
    ``deadline_s`` passes; in every case all started processes are ended before returning.
    """
    method = start_method or default_start_method()
    if method not in START_METHODS:
        raise ConfigError(f"start_method must be one of {', '.join(START_METHODS)}; got {method!r}")
    # method is one of START_METHODS: the literal calls give the context's precise type (with its Process)
    ctx: ForkServerContext | SpawnContext = (tmp.get_context("forkserver") if method == "forkserver"
                                             else tmp.get_context("spawn"))
    if method == "forkserver":
        ctx.set_forkserver_preload(PRELOAD)
    timeout_s = float(job_fields.get("timeout_s", DEFAULT_TIMEOUT_S))
    store = dist.TCPStore(HOST, 0, None, True, timedelta(seconds=timeout_s), wait_for_workers=False)
    workdir = tempfile.mkdtemp(prefix="fortify-dist-")
    job = Job(port=store.port, world_size=n_procs, workdir=workdir, **job_fields)
    procs = []
    try:
        for rank in range(n_procs):
            p = ctx.Process(target=_entry, args=(rank, job), daemon=True, name=f"fortify-rank{rank}")
            p.start()
            procs.append(p)
        _watch(procs, workdir, deadline_s)
        return read_result(workdir)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(5)
            if p.is_alive():  # pragma: no cover - ignored SIGTERM
                p.kill()
                p.join()
        shutil.rmtree(workdir, ignore_errors=True)
        del store


_SECONDARY = ("another rank stopped first", "connection closed by peer", "connection reset by peer", "broken pipe", "timed out")


def _first_failure(workdir: str, dead: list[Any]) -> Exception:
    """The root cause among failed workers: an error a worker raised itself, else a worker that
    died without a word (killed, ``os._exit``), else a peer's lost-connection / timeout error."""
    errors = read_errors(workdir)
    own = [e for e in errors if not any(k in str(e.get("message", "")).lower() for k in _SECONDARY)]
    if own:
        return as_parent_error(own[0])
    reported = {int(e.get("rank", -1)) for e in errors}
    silent = [p for p in dead if int(p.name.rsplit("rank", 1)[-1]) not in reported]
    if silent:
        p = silent[0]
        return WorkerError(f"worker rank {p.name.rsplit('rank', 1)[-1]} died with exit code {p.exitcode} "
                           "(killed or crashed without a Python error)")
    if errors:
        return as_parent_error(errors[0])
    return WorkerError(f"worker {dead[0].name} died with exit code {dead[0].exitcode}")


def _watch(procs: list[Any], workdir: str, deadline_s: float | None) -> None:
    """Wait until every process exited 0; raise the first failure's error or on the deadline."""
    end = None if deadline_s is None else time.monotonic() + deadline_s
    alive = {p.sentinel: p for p in procs}
    while alive:
        wait = 1.0 if end is None else max(0.0, min(1.0, end - time.monotonic()))
        for s in multiprocessing.connection.wait(list(alive), timeout=wait):
            p = alive.pop(s)
            p.join()
            if p.exitcode != 0:
                time.sleep(0.3)  # let peers that lost their connection report, then pick the root cause
                raise _first_failure(workdir, [q for q in procs if q.exitcode not in (None, 0)])
        if end is not None and time.monotonic() >= end and alive:
            raise WorkerError(f"distributed training exceeded its deadline of {deadline_s:g} s; workers stopped")


def fit_trainer(trainer: Any, train: tuple[torch.Tensor, torch.Tensor],
                val: tuple[torch.Tensor, torch.Tensor] | None, *, resume: bool = False,
                start_method: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S,
                deadline_s: float | None = None) -> list[dict[str, Any]]:
    """:meth:`Trainer.fit` for ``config.nproc > 1`` or ``dist_mode="async"``: train in worker
    processes, then load the weights, history, counters, task and callback state into ``trainer``
    (its model's weights are updated in place and its flags left as they were, as by the
    single-process Trainer) and return the history.
    The run's statistics are left in ``trainer.dist_stats``.
    """
    c = trainer.config
    validate(trainer, train[0].shape[0], resume)
    fields = dict(
        mode=c.dist_mode, timeout_s=float(timeout_s), threads=torch.get_num_threads(),
        model=copy.deepcopy(trainer.model), task=trainer.task, config=c, train=train, val=val,
        checkpoint_dir=None if trainer.checkpoint_dir is None else str(trainer.checkpoint_dir),
        progress=trainer.progress, callbacks=list(trainer.callbacks), resume=bool(resume))
    n_procs = c.nproc + (1 if c.dist_mode in ("async", "producers") else 0)
    result = launch(fields, n_procs, start_method=start_method, deadline_s=deadline_s)
    trainer.model.load_state_dict(result["state"])
    trainer.history = list(result["history"])
    trainer.epoch = int(result["epoch"])
    trainer.global_step = int(result["global_step"])
    trainer.grad_evals = int(result["grad_evals"])
    trainer.stopped = bool(result["stopped"])
    trainer.task.load_state_dict(result["task_state"])
    for cb, state in zip(trainer.callbacks, result["callbacks"]):
        vars(cb).update(state)
    trainer.dist_stats = dict(result["stats"])
    return copy.deepcopy(trainer.history)


__all__ = ["fit_trainer", "launch", "validate", "check_available", "default_start_method", "DEFAULT_TIMEOUT_S",
           "START_METHODS"]
