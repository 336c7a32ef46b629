"""Asynchronous adversarial-example producers with bounded staleness.

Adversarial training spends ~K/(K+1) of its time generating examples (K attack steps per training
step). Producers move that work to other processes: each pulls the latest weights, generates
``x_adv`` for its minibatches with the task's attack (:meth:`AdversarialTask.attack`) and pushes
``(x_adv, y, weight_version)``; the trainer (rank 0) takes pushes in arrival order, trains one
cross-entropy step on each (the Madry et al. 2018 outer minimisation), and answers with fresh weights.
An example generated with version ``t`` and used at version ``t'`` has staleness ``tau = t' - t``;
examples with ``tau > max_staleness`` are dropped (counted), the others recorded in a histogram
(``stats["staleness"]``). Bhat & Tsipras report near-linear speed-up with staleness up to ~32 and
pathological training at 64 (seed material of issue 19); :func:`Delayed` reproduces a fixed staleness in
one process for such sweeps (``benchmarks/staleness.py``).

Processes: ``TrainConfig(dist_mode="producers", nproc=P)`` runs 1 trainer + P producers through the
``--nproc`` launcher (gloo, point-to-point, as :mod:`.async_sgd`, whose batch split it reuses: producer
``p`` handles minibatches ``p-1, p-1+P, ...`` of each epoch's seeded permutation). ``pull_every``
(task attribute, default 1) lets a producer reuse its weights for that many batches (more staleness,
fewer weight loads). Resume and replaying tasks are not supported here.
"""
from __future__ import annotations

import copy
import math
import time
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from fortify.errors import ConfigError
from fortify.models.state import train_mode
from fortify.train.adversarial.base import AdversarialTask
from fortify.train.adversarial.inner import ce_per_sample
from fortify.train.distributed.async_sgd import batches_of
from fortify.train.distributed.common import Job, exact, flatten, float_buffers, plain_state, trainable, unflatten_into
from fortify.train.schedules import StepLR
from fortify.train.tasks.base import Task, TaskOutput
from fortify.train.trainer import Trainer, derive_seed

HEAD = 4  # push header: epoch, weight version, rows, attack grad evals


class Delayed(Task):
    """An adversarial task whose examples are generated with weights ``delay`` optimiser steps old.

    One process, exact staleness (for sweeps): every call stores the current weights in a ring of the
    last ``delay + 1`` snapshots and attacks a private copy loaded with the oldest one (``tau =
    min(delay, calls so far)``); when ``tau > max_staleness`` the example is dropped and regenerated
    with the current weights (as a trainer waiting for a fresh push would). Training loss: CE on
    ``model(x_adv)``. Metrics: ``staleness`` (tau), ``dropped`` (0/1); ``histogram`` attribute.
    Cost: the inner task's attack plus one ``state_dict`` copy per step.
    """

    name = "delayed"

    def __init__(self, inner: AdversarialTask, delay: int, max_staleness: int | None = None) -> None:
        """``inner``: the adversarial task whose attack generates the examples; ``delay`` >= 0."""
        super().__init__()
        if not isinstance(inner, AdversarialTask):
            raise ConfigError(f"Delayed needs an adversarial task, got {type(inner).__name__}")
        if not isinstance(delay, int) or delay < 0:
            raise ConfigError(f"delay must be an integer >= 0, got {delay!r}")
        self.inner, self.delay = inner, delay
        self.max_staleness = delay if max_staleness is None else int(max_staleness)
        self.histogram: dict[int, int] = {}
        self.dropped = 0
        self._ring: list[dict[str, torch.Tensor]] = []
        self._shadow: nn.Module | None = None

    def set_progress(self, progress: float, epoch: int) -> None:
        """Forward the training progress to the inner task (eps / steps ramps)."""
        self.inner.set_progress(progress, epoch)

    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             generator: torch.Generator | None) -> TaskOutput:
        """``x (B, ...)``, ``y (B,)`` -> CE on examples made with stale weights; logits ``(B, C)``."""
        self._ring.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        if len(self._ring) > self.delay + 1:
            self._ring.pop(0)
        tau = len(self._ring) - 1
        dropped = tau > self.max_staleness
        if dropped:
            self.dropped += 1
            tau = 0
        if tau == 0:
            source = model
        else:
            if self._shadow is None:
                self._shadow = copy.deepcopy(model)
            self._shadow.load_state_dict(self._ring[0])
            self._shadow.train(model.training)
            source = self._shadow
        self.histogram[tau] = self.histogram.get(tau, 0) + 1
        x_adv, evals = self.inner.attack(source, x, ce_per_sample(y), generator=generator)
        logits = model(x_adv)
        return self.inner.output(F.cross_entropy(logits, y), logits, y, evals, staleness=float(tau),
                                 dropped=float(dropped))


def check(trainer: Trainer) -> AdversarialTask:
    """The trainer's task as an AdversarialTask; ConfigError for a setting producers cannot run."""
    if not isinstance(trainer.task, AdversarialTask):
        raise ConfigError(f"dist_mode=producers needs an adversarial task (pgd_at, fast_at, ...), got "
                          f"{type(trainer.task).__name__}")
    return trainer.task


def _sizes(job: Job) -> tuple[int, int, int]:
    """``(parameter elements, buffer elements, elements of one input row)``."""
    row = int(math.prod(job.train[0].shape[1:]))
    return (sum(p.numel() for p in trainable(job.model)), sum(b.numel() for b in float_buffers(job.model)), row)


def run_trainer(job: Job) -> dict[str, Any]:
    """Rank 0: train on pushed examples in arrival order, drop stale ones, answer with fresh weights."""
    from fortify.train.distributed.async_sgd import _epoch_record

    t0 = time.process_time()
    c, model, n_prod = job.config, job.model, job.world_size - 1
    trainer = Trainer(model, job.task, c, progress=False, callbacks=job.callbacks)
    n, bs = job.train[0].shape[0], c.batch_size
    nb = -(-n // bs)
    expected = {p + 1: c.epochs * len(batches_of(p, n_prod, nb)) for p in range(n_prod)}
    trainer.scheduler = StepLR(trainer.optimizer, c.schedule, c.epochs * nb, c.peak_lr, c.warmup_fraction)
    torch.default_generator.manual_seed(derive_seed(c.seed, 2))
    params, buffers = trainable(model), float_buffers(model)
    n_par, n_buf, row = _sizes(job)
    push = torch.zeros(HEAD + bs * row + bs)
    reply = torch.zeros(2 + n_par + n_buf)
    version, used, dropped = 0, 0, 0
    hist: dict[int, int] = {}
    sums: dict[int, list[float]] = {}
    done = {p: 0 for p in expected}
    next_epoch, t_epoch = 0, time.perf_counter()

    def answer(p: int, stop: bool) -> None:
        """Send ``(version, stop, theta, buffers)`` to producer ``p``."""
        reply[0], reply[1] = exact(version, "version"), float(stop)
        reply[2:2 + n_par], reply[2 + n_par:] = flatten(params), flatten(buffers)
        dist.send(reply, p)

    with train_mode(model):
        for p in expected:
            answer(p, False)
        active = set(expected)
        while active:
            src = dist.recv(push)
            epoch, made, b, evals = (int(v) for v in push[:HEAD].tolist())
            tau = version - made
            done[src] += 1
            acc = sums.setdefault(epoch, [0.0] * 7)  # loss*b, b, correct, rows, evals, used, dropped
            acc[1] += b
            acc[4] += evals + b
            if tau > c.max_staleness:
                dropped += 1
                acc[6] += 1
            else:
                x = push[HEAD:HEAD + b * row].view(b, *job.train[0].shape[1:])
                y = push[HEAD + bs * row:HEAD + bs * row + b].long()
                trainer.scheduler.apply()
                trainer.optimizer.zero_grad(set_to_none=True)
                logits = model(x)
                loss = F.cross_entropy(logits, y)
                loss.backward()
                if c.grad_clip is not None:
                    nn.utils.clip_grad_norm_(params, c.grad_clip)
                trainer.optimizer.step()
                version, used = version + 1, used + 1
                hist[tau] = hist.get(tau, 0) + 1
                acc[0] += float(loss.detach()) * b
                acc[2] += int((logits.detach().argmax(1) == y).sum())
                acc[3] += b
                acc[5] += 1
            trainer.scheduler.advance()
            trainer.global_step, trainer.grad_evals = used, trainer.grad_evals + evals + b
            while next_epoch in sums and sums[next_epoch][1] >= n:
                record = _epoch_record(trainer, next_epoch, sums.pop(next_epoch), job, t_epoch)
                trainer._close_epoch(record, next_epoch, n, None)
                next_epoch, t_epoch = next_epoch + 1, time.perf_counter()
            final = done[src] == expected[src]
            answer(src, final)
            if final:
                active.discard(src)
    return {"state": {k: v.detach().clone() for k, v in model.state_dict().items()}, "history": trainer.history,
            "epoch": trainer.epoch, "global_step": used, "grad_evals": trainer.grad_evals, "stopped": False,
            "task_state": trainer.task.state_dict(), "callbacks": [plain_state(cb) for cb in trainer.callbacks],
            "stats": {"mode": "producers", "world_size": job.world_size, "producers": n_prod, "used": used,
                      "dropped": dropped, "max_staleness": c.max_staleness,
                      "staleness": {str(k): v for k, v in sorted(hist.items())},
                      "cpu_s": [time.process_time() - t0]}}


def run_producer(rank: int, job: Job) -> None:
    """Rank ``rank >= 1``: pull weights, attack this producer's minibatches, push ``(x_adv, y, version)``."""
    c, model = job.config, job.model
    task = job.task
    assert isinstance(task, AdversarialTask)
    pull_every = int(getattr(task, "pull_every", 1))
    n_prod = job.world_size - 1
    x, y = job.train
    n, bs = x.shape[0], c.batch_size
    nb = -(-n // bs)
    params, buffers = trainable(model), float_buffers(model)
    n_par, n_buf, row = _sizes(job)
    push = torch.zeros(HEAD + bs * row + bs)
    reply = torch.zeros(2 + n_par + n_buf)
    gen = torch.Generator()
    dist.recv(reply, 0)
    version, k = reply[0].item(), 0
    with train_mode(model):
        for epoch in range(c.epochs):
            gen.manual_seed(derive_seed(c.seed, 31, epoch, rank))
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed(c.seed, epoch)))
            for bi in batches_of(rank - 1, n_prod, nb):
                if k % pull_every == 0:
                    version = reply[0].item()
                    unflatten_into(reply[2:2 + n_par], params)
                    unflatten_into(reply[2 + n_par:], buffers)
                k += 1
                idx = perm[bi * bs:(bi + 1) * bs]
                task.set_progress((epoch * nb + bi) / (c.epochs * nb), epoch)
                x_adv, evals = task.attack(model, x[idx], ce_per_sample(y[idx]), generator=gen)
                b = idx.numel()
                push.zero_()
                push[:HEAD] = torch.tensor([epoch, version, b, exact(evals, "grad_evals")])
                push[HEAD:HEAD + b * row] = x_adv.detach().reshape(-1)
                push[HEAD + bs * row:HEAD + bs * row + b] = y[idx].float()
                dist.send(push, 0)
                dist.recv(reply, 0)
                if reply[1].item() > 0:
                    return


__all__ = ["Delayed", "run_trainer", "run_producer", "check", "HEAD"]
