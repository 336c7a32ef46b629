"""Asynchronous training with a parameter server on rank 0 (point-to-point send/recv over gloo).

Algorithm: Downpour SGD (Dean et al. 2012, "Large scale distributed deep networks", Sec. 4.1)
with one parameter shard and bounded, staleness-aware updates (Zhang, Gupta, Lian & Liu 2016,
"Staleness-aware async-SGD for distributed deep learning", IJCAI):

* Rank 0 (the server) holds the model, the optimiser and the LR schedule of the
  :class:`~fortify.train.TrainConfig` and a version counter ``t`` (updates applied so far). Ranks
  ``1..N`` are gradient workers.
* Worker ``w`` pulls ``(theta_t, t)``, takes its next minibatch of ``batch_size`` rows (of epoch
  ``e``: the minibatches ``w-1, w-1+N, ...`` of the same seeded permutation a single process would
  use, so one epoch still covers the data once), runs the Task (e.g. PGD) and pushes
  ``(grad, t, statistics)``; then it waits for the reply, which carries fresh parameters.
* The server receives pushes from any worker in arrival order. A push computed on version ``t``
  arriving at version ``t'`` has staleness ``tau = t' - t``. If ``tau > max_staleness`` it is
  dropped (counted); otherwise the optimiser steps on it with learning rate
  ``lr_schedule / max(1, tau)`` (Zhang et al.'s staleness-dependent rate) and ``t`` increases.
  The schedule advances once per push, dropped or not, so it follows the data seen.
* When every push of epoch ``e`` has arrived, the server scores the validation data, runs the
  epoch callbacks (rollback / stop work as in the Trainer) and writes the checkpoint.

Without a barrier the workers never wait for each other; the price is stale gradients, whose
number and distribution are reported (``stats["staleness"]``: count per applied ``tau``). The
last worker messages use float32 fields, so counters must stay below 2**24. Floating-point
buffers (BatchNorm running statistics) of the pushing worker replace the server's on every
applied push. Resume and replaying tasks (free AT) are not supported in this mode.
"""
from __future__ import annotations

import math
import time
from contextlib import nullcontext
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from fortify.errors import ConfigError, InputError
from fortify.models.state import train_mode
from fortify.train import checkpoint as ckpt
from fortify.train.distributed.common import (Job, exact, flatten, float_buffers, plain_state, trainable,
                                              unflatten_into)
from fortify.train.progress import EpochProgress
from fortify.train.schedules import StepLR
from fortify.train.trainer import Trainer, derive_seed

#: push header: epoch, version used, loss * rows, rows, correct, scored rows, grad evals, worker CPU s
HEAD = 8
#: reply header: version, stop flag
REPLY = 2


def batches_of(worker: int, n_workers: int, nb: int) -> range:
    """Minibatch indices of one epoch handled by gradient worker ``worker`` (0-based) of ``n_workers``."""
    return range(worker, nb, n_workers)


def _sizes(model: nn.Module) -> tuple[int, int]:
    """``(trainable parameter elements, float buffer elements)``."""
    return sum(p.numel() for p in trainable(model)), sum(b.numel() for b in float_buffers(model))


def run_server(job: Job) -> dict[str, Any]:
    """Rank 0: apply pushes as they arrive (see the module doc); return the result for the parent."""
    t0 = time.process_time()
    c, model = job.config, job.model
    n_workers = job.world_size - 1
    trainer = Trainer(model, job.task, c, checkpoint_dir=job.checkpoint_dir, progress=False, callbacks=job.callbacks)
    n = job.train[0].shape[0]
    nb = -(-n // c.batch_size)
    total = c.epochs * nb
    expected = {w + 1: c.epochs * len(batches_of(w, n_workers, nb)) for w in range(n_workers)}
    trainer.scheduler = StepLR(trainer.optimizer, c.schedule, total, c.peak_lr, c.warmup_fraction)
    trainer.generator.manual_seed(derive_seed(c.seed, 1))
    torch.default_generator.manual_seed(derive_seed(c.seed, 2))
    if job.checkpoint_dir is not None:
        ckpt.clear(trainer.checkpoint_dir)  # type: ignore[arg-type]
    trainer._save(n)
    params, buffers = trainable(model), float_buffers(model)
    n_par, n_buf = _sizes(model)
    push = torch.zeros(HEAD + n_par + n_buf)
    replies = {w: torch.zeros(REPLY + n_par + n_buf) for w in expected}
    pending: dict[int, Any] = {}
    version, processed, applied, dropped = 0, 0, 0, 0
    staleness: dict[int, int] = {}
    cpu = {w: 0.0 for w in expected}
    done = {w: 0 for w in expected}
    sums: dict[int, list[float]] = {}
    next_epoch, t_epoch = 0, time.perf_counter()

    def reply(w: int, stop: bool) -> None:
        """Send ``(version, stop, theta, buffers)`` to worker ``w`` (after its previous reply left)."""
        if w in pending:
            pending.pop(w).wait()
        buf = replies[w]
        buf[0], buf[1] = exact(version, "version"), float(stop)
        buf[REPLY:REPLY + n_par] = flatten(params)
        buf[REPLY + n_par:] = flatten(buffers)
        pending[w] = dist.isend(buf, w)

    with train_mode(model):  # the server scores val / runs callbacks; a frozen BatchNorm stays frozen
        for w in expected:
            reply(w, False)
        active = set(expected)
        name = getattr(trainer.task, "name", "") or type(trainer.task).__name__
        display = EpochProgress(True, c.epochs, f"{name} async") if job.progress else nullcontext()
        with display as bar:
            if bar is not None:
                bar.start_epoch(0, nb)
            while active:
                src = dist.recv(push)
                head = push[:HEAD].tolist()
                epoch, used = int(head[0]), int(head[1])
                tau = version - used
                cpu[src] = head[7]
                done[src] += 1
                processed += 1
                trainer.task.set_progress(min(processed / total, 1.0), epoch)
                acc = sums.setdefault(epoch, [0.0] * 7)  # loss*b, b, correct, rows, evals, applied, dropped
                for i in range(5):
                    acc[i] += head[2 + i]
                if not trainer.stopped:
                    if tau > c.max_staleness:
                        dropped += 1
                        acc[6] += 1
                    else:
                        lr = trainer.scheduler.apply() / max(1, tau)
                        for group in trainer.optimizer.param_groups:
                            group["lr"] = lr
                        i = HEAD
                        for p in params:
                            p.grad = push[i:i + p.numel()].view_as(p).clone()
                            i += p.numel()
                        unflatten_into(push[HEAD + n_par:], buffers)
                        if c.grad_clip is not None:
                            nn.utils.clip_grad_norm_(params, c.grad_clip)
                        trainer.optimizer.step()
                        version += 1
                        applied += 1
                        acc[5] += 1
                        staleness[tau] = staleness.get(tau, 0) + 1
                    trainer.scheduler.advance()
                    trainer.global_step = applied
                    trainer.grad_evals += int(head[6])
                if bar is not None:
                    bar.step(acc[0] / max(acc[1], 1.0), acc[2] / acc[3] if acc[3] else None)
                while not trainer.stopped and next_epoch in sums and sums[next_epoch][1] >= n:
                    record = _epoch_record(trainer, next_epoch, sums.pop(next_epoch), job, t_epoch)
                    trainer._close_epoch(record, next_epoch, n, bar)
                    if bar is not None and next_epoch + 1 < c.epochs and not trainer.stopped:
                        bar.start_epoch(next_epoch + 1, nb)
                    next_epoch += 1
                    t_epoch = time.perf_counter()
                final = trainer.stopped or done[src] == expected[src]
                reply(src, final)
                if final:
                    active.discard(src)
    for work in pending.values():
        work.wait()
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "history": trainer.history,
        "epoch": trainer.epoch,
        "global_step": applied,
        "grad_evals": trainer.grad_evals,
        "stopped": trainer.stopped,
        "task_state": trainer.task.state_dict(),
        "callbacks": [plain_state(cb) for cb in trainer.callbacks],
        "stats": {"mode": "async", "world_size": job.world_size, "workers": n_workers, "pushes": processed,
                  "applied": applied, "dropped": dropped, "max_staleness": c.max_staleness,
                  "staleness": {str(k): v for k, v in sorted(staleness.items())},
                  "cpu_s": [time.process_time() - t0] + [cpu[w] for w in sorted(cpu)]},
    }


def _epoch_record(trainer: Trainer, epoch: int, acc: list[float], job: Job, t0: float) -> dict[str, Any]:
    """The Trainer-style record of a finished async epoch (plus ``applied``/``dropped`` counts)."""
    record: dict[str, Any] = {
        "epoch": epoch + 1,
        "train_loss": acc[0] / max(acc[1], 1.0),
        "train_acc": acc[2] / acc[3] if acc[3] else None,
        "val_acc": None,
        "val_loss": None,
        "lr": trainer.scheduler.current_lr() if trainer.scheduler is not None else None,
    }
    if job.val is not None:
        record["val_acc"], record["val_loss"] = trainer.evaluate(*job.val)
    record.update({"applied": int(acc[5]), "dropped": int(acc[6]), "wall_s": time.perf_counter() - t0,
                   "samples": int(acc[1]), "grad_evals": trainer.grad_evals})
    return record


def run_worker(rank: int, job: Job) -> None:
    """Rank ``rank >= 1``: pull, compute one gradient, push, repeat (see the module doc)."""
    t0 = time.process_time()
    c, model, task = job.config, job.model, job.task
    n_workers = job.world_size - 1
    x, y = job.train
    n = x.shape[0]
    nb = -(-n // c.batch_size)
    total = c.epochs * nb
    params, buffers = trainable(model), float_buffers(model)
    n_par, n_buf = _sizes(model)
    push = torch.zeros(HEAD + n_par + n_buf)
    reply = torch.zeros(REPLY + n_par + n_buf)
    gen = torch.Generator()
    dist.recv(reply, 0)
    with train_mode(model):  # a module the caller froze (eval mode) stays frozen
        for epoch in range(c.epochs):
            gen.manual_seed(derive_seed(c.seed, 21, epoch, rank))
            torch.default_generator.manual_seed(derive_seed(c.seed, 22, epoch, rank))
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed(c.seed, epoch)))
            for bi in batches_of(rank - 1, n_workers, nb):
                version = reply[0].item()
                unflatten_into(reply[REPLY:REPLY + n_par], params)
                unflatten_into(reply[REPLY + n_par:], buffers)
                idx = perm[bi * c.batch_size:(bi + 1) * c.batch_size]
                xb, yb = x[idx], y[idx]
                task.set_progress((epoch * nb + bi) / total, epoch)
                for p in params:
                    p.grad = None
                out = task(model, xb, yb, generator=gen)
                loss = out.loss
                if not isinstance(loss, torch.Tensor) or loss.numel() != 1 or not loss.requires_grad:
                    raise InputError(f"task {type(task).__name__} must return a scalar loss with a graph")
                lv = float(loss.detach())
                if not math.isfinite(lv):
                    raise ConfigError(f"training diverged: loss is {lv} at epoch {epoch + 1}, minibatch {bi + 1}; "
                                      "lower lr or set grad_clip")
                loss.backward()
                logits, b = out.logits, yb.shape[0]
                correct, rows = 0, 0
                if isinstance(logits, torch.Tensor) and logits.dim() == 2 and logits.shape[0] % b == 0:
                    rows = logits.shape[0]
                    correct = int((logits.detach().argmax(1) == yb.repeat(rows // b)).sum())
                evals = b + out.grad_evals
                push[:HEAD] = torch.tensor([epoch, version, lv * b, b, correct, rows, exact(evals, "grad_evals"),
                                            time.process_time() - t0])
                push[HEAD:HEAD + n_par] = flatten([p.grad if p.grad is not None else torch.zeros_like(p)
                                                   for p in params])
                push[HEAD + n_par:] = flatten(buffers)
                dist.send(push, 0)
                dist.recv(reply, 0)
                if reply[1].item() > 0:
                    return


__all__ = ["run_server", "run_worker", "batches_of", "HEAD", "REPLY"]
