"""The training loop shared by every task.

``Trainer(model, task, config).fit(train=(x, y), val=(x, y))`` trains ``model``'s weights *in place* with
the task's objective and returns one record per epoch. The Trainer owns the optimiser, the
per-step LR schedule, seeding, checkpoints, callbacks and progress; a :class:`Task` only maps
``(model, x, y, generator)`` to a :class:`~fortify.train.tasks.base.TaskOutput` ``(loss, logits, metrics)``.

Determinism: the data order of epoch ``e`` is a permutation drawn from a ``torch.Generator``
seeded by ``(seed, e)`` (``(seed, pass)`` for replaying tasks, see below); tasks draw their
randomness from the ``generator`` argument of every call (``trainer.generator``) and torch's
global RNG is seeded from ``seed`` inside :meth:`Trainer.fit` (the caller's RNG state is
restored afterwards). Generator, RNG, optimiser, schedule and task state are checkpointed after
every epoch, so a run killed at any point and resumed is bit-identical to an uninterrupted one.

Replays (free adversarial training, Shafahi et al. 2019, "Adversarial training for free!"): a
task with an integer attribute ``replays = m > 1`` gets every minibatch ``m`` times in a row
(one optimiser step each). ``epochs`` then counts passes *including replays*: an epoch performs
as many steps as a plain epoch but covers ``1/m`` of a data pass, so ``m`` consecutive epochs
are one pass over the data (drawn from the generator seeded by ``(seed, pass)``) and the total
gradient cost equals that of ``epochs`` plain epochs, as in the paper's comparison.
Flags: ``fit`` trains under :func:`fortify.models.state.train_mode` (a frozen BatchNorm stays frozen),
``evaluate`` scores under ``eval_mode``; every module's own ``training`` flag is restored afterwards.
Processes: under torchrun (``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT`` set) or with an
initialised process group, ``fit`` trains as one data-parallel rank (:mod:`fortify.train.distributed.env`);
otherwise ``config.nproc > 1`` or ``dist_mode="async"`` starts worker processes that run the same path
(:mod:`fortify.train.distributed`); each rank runs this loop with ``trainer.parallel`` set.
"""
from __future__ import annotations

import copy
import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from fortify import progress as fprogress
from fortify.errors import ConfigError, InputError, ModelFileError
from fortify.models.state import eval_mode, train_mode
from fortify.train import checkpoint as ckpt
from fortify.train import device as fdevice
from fortify.train import optim
from fortify.train.config import TrainConfig
from fortify.train.progress import EpochProgress
from fortify.train.schedules import StepLR
from fortify.train.tasks import Task, TaskOutput, resolve as resolve_task
from fortify.validation import check_images, check_labels

_MASK64 = (1 << 64) - 1
_RESERVED = {"epoch", "train_loss", "train_acc", "val_acc", "val_loss", "lr", "wall_s", "samples",
             "grad_evals", "rolled_back", "loss", "logits"}


def derive_seed(*parts: int) -> int:
    """Mix integers into a 63-bit seed (SplitMix64 finaliser, Steele et al. 2014)."""
    h = 0x243F6A8885A308D3
    for p in parts:
        h = ((h ^ (int(p) & _MASK64)) + 0x9E3779B97F4A7C15) & _MASK64
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK64
        h ^= h >> 31
    return h & ((1 << 63) - 1)


def _check_pair(data: object, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate a ``(x (N, ...), y (N,))`` data pair; InputError otherwise."""
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise InputError(f"{name} must be a pair (x, y) of tensors, got {type(data).__name__}")
    x = check_images(data[0], (-math.inf, math.inf), name=f"{name} x")
    y = check_labels(data[1], x.shape[0], name=f"{name} y")
    return x, y


def _scalar(v: object) -> float | None:
    """``float`` of a Python number or one-element tensor; None for anything else (bools too)."""
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, torch.Tensor) and v.numel() == 1 and not v.is_complex() and v.dtype != torch.bool:
        return float(v.detach())
    return None


class Trainer:
    """Train ``model`` in place on a :class:`Task` objective under a :class:`TrainConfig`.

    Attributes readable by callbacks: ``model``, ``task``, ``config``, ``optimizer``,
    ``scheduler`` (:class:`fortify.train.schedules.StepLR`), ``generator`` (the task's
    ``torch.Generator``, on the model's device), ``history`` (records so far), ``epoch`` (epochs
    completed), ``global_step`` (optimiser steps done), ``grad_evals`` (cumulative), ``device``.
    """

    #: a distributed run's statistics, set by :func:`fortify.train.distributed.launch.fit_trainer` (absent otherwise)
    dist_stats: dict[str, Any]

    def __init__(
        self,
        model: nn.Module,
        task: Task | str,
        config: TrainConfig | Mapping[str, Any],
        *,
        checkpoint_dir: str | Path | None = None,
        progress: bool | None = True,
        callbacks: Sequence[object] = (),
    ) -> None:
        """Validate arguments and build the optimiser; no training happens here. ``progress=None`` shows the
        epoch bar and lines when an enclosing :func:`fortify.progress.enabled` block asks for them."""
        if not isinstance(model, nn.Module):
            raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.task: Task = resolve_task(task)
        if not isinstance(self.task, Task):
            raise ConfigError(f"task must be a Task or a registered task name, got {type(task).__name__}")
        self.config = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
        replays = getattr(self.task, "replays", 1)
        if not isinstance(replays, int) or isinstance(replays, bool) or replays < 1:
            raise ConfigError(f"task attribute replays must be an integer >= 1, got {replays!r}")
        self.replays = replays
        self.model = model
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.progress = fprogress.is_enabled(progress)
        self.callbacks = list(callbacks)
        for cb in self.callbacks:
            if not (hasattr(cb, "on_epoch_end") or hasattr(cb, "on_step_end")):
                raise ConfigError(f"callback {cb!r} has neither on_epoch_end nor on_step_end")
        self.device = next((p.device for p in model.parameters()), torch.device("cpu"))
        if self.config.device is not None:  # never move the caller's model: a mismatch is an error
            self.device = fdevice.resolve(self.config.device)
            fdevice.check_model_device(model, self.device)
        self.generator = torch.Generator(device=self.device)
        self.optimizer = self._build_optimizer()
        self.scheduler: StepLR | None = None
        self.history: list[dict[str, Any]] = []
        self.epoch = 0
        self.global_step = 0
        self.grad_evals = 0
        self.stopped = False
        self._snapshot: dict[str, Any] | None = None
        self.parallel: Any = None  # set only in sync data-parallel workers (fortify.train.distributed)

    # ------------------------------------------------------------------ setup
    def _build_optimizer(self) -> torch.optim.Optimizer:
        """The configured optimiser (:func:`fortify.train.optim.build`: SGD, Adam, LARS or LAMB)."""
        c = self.config
        return optim.build(c.optimizer, self.model, lr=c.peak_lr, momentum=c.momentum, weight_decay=c.weight_decay)

    def _batches_per_pass(self, n: int) -> int:
        """``ceil(n / batch_size)``: minibatches in one pass over ``n`` samples."""
        return -(-n // self.config.batch_size)

    def _chunk(self, epoch: int, nb: int) -> tuple[int, int, int]:
        """``(pass, first_batch, end_batch)`` of ``epoch`` (see module doc on replays)."""
        m = self.replays
        c = epoch % m
        return epoch // m, c * nb // m, (c + 1) * nb // m

    def _steps_in(self, epoch: int, nb: int) -> int:
        """Optimiser steps of ``epoch`` (replays included)."""
        _, a, b = self._chunk(epoch, nb)
        return (b - a) * self.replays

    def _rng_state(self) -> dict[str, Any]:
        """RNG states to checkpoint: the task generator and torch's global CPU (and CUDA) RNG."""
        state = {"generator": self.generator.get_state(), "cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def _set_rng_state(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`_rng_state`."""
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["cpu"])
        if self.device.type == "cuda" and "cuda" in state:
            torch.cuda.set_rng_state(state["cuda"], self.device)

    def _run_state(self, n_train: int) -> dict[str, Any]:
        """Everything but the weights, as plain containers (``torch.load(weights_only=True)``-safe)."""
        assert self.scheduler is not None
        return {
            "config": self.config.to_dict(),
            "task": type(self.task).__name__,
            "n_train": int(n_train),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "task_state": self.task.state_dict(),
            "rng": self._rng_state(),
            "history": copy.deepcopy(self.history),
            "global_step": self.global_step,
            "grad_evals": self.grad_evals,
            "stopped": self.stopped,
        }

    def _save(self, n_train: int) -> None:
        """Checkpoint after ``self.epoch`` epochs (disk if a folder was given, else memory for rollback)."""
        if self.checkpoint_dir is not None and self._writes_checkpoints:
            ckpt.save(self.checkpoint_dir, self.epoch, self.model, self._run_state(n_train))
        elif any(hasattr(cb, "on_epoch_end") for cb in self.callbacks):
            self._snapshot = copy.deepcopy({
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "task_state": self.task.state_dict(),
            })

    @property
    def _writes_checkpoints(self) -> bool:
        """False only in data-parallel workers of rank > 0 (they read checkpoints, never write)."""
        return self.parallel is None or self.parallel.rank == 0

    def _resume(self, n_train: int) -> bool:
        """Load the newest complete checkpoint; False when there is none."""
        assert self.checkpoint_dir is not None and self.scheduler is not None
        epochs = ckpt.complete_epochs(self.checkpoint_dir)
        if not epochs:
            return False
        epoch = epochs[-1]
        state = ckpt.load_state(self.checkpoint_dir, epoch)
        mine = self.config.to_dict()
        saved = state.get("config")
        if not isinstance(saved, dict):
            raise ConfigError(f"checkpoint in {self.checkpoint_dir} has no training config")
        saved = {**TrainConfig().to_dict(), **saved}  # keys added later (nproc...) take their defaults
        # the world size may change between runs (the global batch does not): nproc is not compared
        diff = sorted(k for k in set(mine) | set(saved) if mine.get(k) != saved.get(k) and k not in ("nproc", "device"))
        if diff:
            detail = ", ".join(f"{k}: checkpoint {saved.get(k)!r} vs now {mine.get(k)!r}" for k in diff)
            raise ConfigError(f"cannot resume: config differs from the checkpoint's ({detail})")
        if state.get("task") != type(self.task).__name__ or state.get("n_train") != n_train:
            raise ConfigError(
                f"cannot resume: checkpoint was made with task {state.get('task')} on "
                f"{state.get('n_train')} training samples, now {type(self.task).__name__} on {n_train}"
            )
        try:
            ckpt.load_model_into(self.checkpoint_dir, epoch, self.model)
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.task.load_state_dict(state["task_state"])
            self._set_rng_state(state["rng"])
            self.history = list(state["history"])
            self.global_step = int(state["global_step"])
            self.grad_evals = int(state["grad_evals"])
            self.stopped = bool(state["stopped"])
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise ModelFileError(f"checkpoint of epoch {epoch} in {self.checkpoint_dir} is inconsistent: {e}") from None
        self.epoch = epoch
        return True

    def _rollback(self) -> None:
        """Restore model, optimiser and task state of the last good checkpoint (the previous epoch)."""
        if self.checkpoint_dir is not None and self._writes_checkpoints:
            state = ckpt.load_state(self.checkpoint_dir, self.epoch)
            ckpt.load_model_into(self.checkpoint_dir, self.epoch, self.model)
            self.optimizer.load_state_dict(state["optimizer"])
            self.task.load_state_dict(state["task_state"])
        elif self._snapshot is not None:
            snap = copy.deepcopy(self._snapshot)
            self.model.load_state_dict(snap["model"])
            self.optimizer.load_state_dict(snap["optimizer"])
            self.task.load_state_dict(snap["task_state"])

    # ------------------------------------------------------------------ public
    def fit(
        self,
        train: tuple[torch.Tensor, torch.Tensor],
        val: tuple[torch.Tensor, torch.Tensor] | None = None,
        *,
        resume: bool = False,
    ) -> list[dict[str, Any]]:
        """Train for ``config.epochs`` epochs; return the per-epoch records (see :meth:`_run_epoch`).

        ``train``/``val``: ``(x (N, ...), y (N,) int)``; ``val`` is scored on clean inputs.
        ``resume``: continue from the newest complete checkpoint in ``checkpoint_dir`` (a fresh
        start when there is none); otherwise any earlier checkpoints of this folder are removed.
        Every module's ``training`` flag is restored afterwards (see the module doc).
        """
        x, y = _check_pair(train, "train")
        vx_vy = _check_pair(val, "val") if val is not None else None
        if self.parallel is None:
            from fortify.train.distributed import env

            if env.active():  # torchrun / an initialised process group: this process is one rank
                return env.fit_parallel(self, (x, y), vx_vy, resume)
            if self.config.nproc > 1 or self.config.dist_mode != "sync":
                from fortify.train.distributed.launch import fit_trainer

                return fit_trainer(self, (x, y), vx_vy, resume=resume)
        return self._fit(x, y, vx_vy, resume)

    def _fit(self, x: torch.Tensor, y: torch.Tensor, vx_vy: Any, resume: bool) -> list[dict[str, Any]]:
        """The loop of :meth:`fit` on checked data (one process, or one data-parallel rank)."""
        rank0 = self._writes_checkpoints
        if resume and self.checkpoint_dir is None and rank0:
            raise ConfigError("fit(resume=True) needs Trainer(checkpoint_dir=...)")
        n, nb = x.shape[0], self._batches_per_pass(x.shape[0])
        if self.replays > nb:
            raise ConfigError(
                f"task replays={self.replays} exceeds the {nb} minibatches per pass; lower batch_size"
            )
        c = self.config
        total = sum(self._steps_in(e, nb) for e in range(c.epochs))
        self.optimizer = self._build_optimizer()
        self.scheduler = StepLR(self.optimizer, c.schedule, total, c.peak_lr, c.warmup_fraction)
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), train_mode(self.model):
            resumed = resume and rank0 and self._resume(n)  # other ranks get rank 0's state below
            if not resumed:
                self.history, self.epoch, self.global_step, self.grad_evals, self.stopped = [], 0, 0, 0, False
                self.generator.manual_seed(derive_seed(c.seed, 1))
                torch.default_generator.manual_seed(derive_seed(c.seed, 2))
                if self.device.type == "cuda":
                    torch.cuda.manual_seed(derive_seed(c.seed, 3))
                if self.checkpoint_dir is not None and rank0:
                    ckpt.clear(self.checkpoint_dir)
            if self.parallel is not None:
                self.parallel.sync_state(self)
            if not (resumed and rank0):
                self._save(n)  # epoch 0 (or the resumed epoch off rank 0): the rollback target
            name = getattr(self.task, "name", "") or type(self.task).__name__
            display = EpochProgress(self.progress, c.epochs, name) if self.progress else nullcontext()
            with display as bar:
                for epoch in range(self.epoch, c.epochs):
                    if self.stopped:
                        break
                    self._close_epoch(self._run_epoch(epoch, x, y, vx_vy, nb, total, bar), epoch, n, bar)
        return copy.deepcopy(self.history)

    # ------------------------------------------------------------------ loop
    def _close_epoch(self, record: dict[str, Any], epoch: int, n_train: int, bar: EpochProgress | None) -> None:
        """After ``epoch``: callbacks/rollback, history, checkpoint, bar (also the async server's)."""
        self._end_epoch(record)
        self.history.append(record)
        self.epoch = epoch + 1
        self._save(n_train)
        if bar is not None:
            bar.end_epoch(record)

    def _end_epoch(self, record: dict[str, Any]) -> None:
        """Run the ``on_epoch_end`` callbacks, merge their metrics, then roll back / stop if asked.

        While they run, ``trainer.epoch`` and ``trainer.history`` still exclude this epoch.
        """
        rollback = False
        for cb in self.callbacks:
            fn = getattr(cb, "on_epoch_end", None)
            extra = fn(self, record) if fn is not None else None
            if extra is None:
                continue
            if not isinstance(extra, Mapping):
                raise ConfigError(f"callback {cb!r}.on_epoch_end must return a dict or None")
            for k, v in extra.items():
                if k == "rollback":
                    rollback = rollback or bool(v)
                elif k == "stop":
                    self.stopped = self.stopped or bool(v)
                elif isinstance(v, (str, bool)) or v is None:
                    record[k] = v
                elif _scalar(v) is not None:
                    record[k] = _scalar(v)
                else:
                    raise ConfigError(f"callback {cb!r} returned non-scalar metric {k!r}")
        if rollback:
            self._rollback()
        record["rolled_back"] = rollback

    def _step(self, xb: torch.Tensor, yb: torch.Tensor, epoch: int,
              total: int) -> tuple[TaskOutput, float, int, int, int]:
        """One optimiser step on ``xb (B, ...)``, ``yb (B,)``; returns (out, loss, correct, rows, B).
        (Data-parallel: ``xb`` is this rank's shard; the returned figures are the global batch's.)"""
        assert self.scheduler is not None
        self.scheduler.apply()
        self.task.set_progress(self.global_step / total, epoch)
        self.optimizer.zero_grad(set_to_none=True)
        with fdevice.autocast(self.device, self.config.amp):  # bfloat16 on CUDA when config.amp, else a no-op
            out = self.task(self.model, xb, yb, generator=self.generator)
        loss = out.loss
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1 or not loss.requires_grad:
            raise InputError("task loss must be a scalar tensor with a graph to the parameters")
        lv = float(loss.detach())
        if not math.isfinite(lv):
            raise ConfigError(
                f"training diverged: loss is {lv} at epoch {epoch + 1}, step {self.global_step + 1}; "
                "lower lr or set grad_clip"
            )
        loss.backward()
        logits = out.logits
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[1] < 2:
            raise InputError(f"task logits must be a (rows, C>=2) tensor, got {getattr(logits, 'shape', logits)}")
        rows, b = logits.shape[0], yb.shape[0]
        correct = 0
        if rows % b == 0 and rows > 0:
            target = yb.repeat(rows // b).to(logits.device)
            correct = int((logits.detach().argmax(1) == target).sum())
        else:
            rows = 0
        evals = b + out.grad_evals
        if self.parallel is not None:
            lv, b, correct, rows, evals = self.parallel.all_reduce(self, lv, b, correct, rows, evals)
        if self.config.grad_clip is not None:
            nn.utils.clip_grad_norm_(optim.all_params(self.optimizer), self.config.grad_clip)
        self.optimizer.step()
        self.scheduler.advance()
        self.global_step += 1
        self.grad_evals += evals
        return out, lv, correct, rows, b

    def _run_epoch(self, epoch: int, x: torch.Tensor, y: torch.Tensor, val: Any, nb: int, total: int,
                   bar: EpochProgress | None) -> dict[str, Any]:
        """Run epoch ``epoch`` (0-based) and return its record.

        Record keys: ``epoch`` (1-based), ``train_loss``/``train_acc`` (sample-weighted means over
        the epoch's steps, accuracy of the task's logits, e.g. adversarial ones), ``val_acc`` and
        ``val_loss`` (clean, ``None`` without val data), ``lr`` (of the epoch's last step),
        ``wall_s``, ``samples`` (rows stepped on, replays included), ``grad_evals`` (cumulative:
        one per sample per step plus the task's reported ``grad_evals``), every scalar extra the
        task returned (sample-weighted mean; names clashing with these get a ``task_`` prefix),
        ``rolled_back`` and whatever callbacks add.
        """
        t0 = time.perf_counter()
        pass_idx, first, end = self._chunk(epoch, nb)
        if self.parallel is not None:
            self.parallel.start_epoch(self, epoch)
        gen = torch.Generator().manual_seed(derive_seed(self.config.seed, pass_idx))
        perm = torch.randperm(x.shape[0], generator=gen).to(x.device)
        if bar is not None:
            bar.start_epoch(epoch, (end - first) * self.replays)
        sums: dict[str, float] = {}
        weights: dict[str, int] = {}
        loss_sum, samples, correct, rows, lr = 0.0, 0, 0, 0, self.scheduler.current_lr() if self.scheduler else 0.0
        bs = self.config.batch_size
        for bi in range(first, end):
            idx = perm[bi * bs:(bi + 1) * bs]
            if self.parallel is not None:
                idx = self.parallel.shard(idx)
            xb, yb = x[idx].to(self.device), y[idx].to(self.device)
            for _ in range(self.replays):
                lr = self.scheduler.current_lr() if self.scheduler else lr
                out, lv, c, r, b = self._step(xb, yb, epoch, total)
                loss_sum += lv * b
                samples += b
                correct += c
                rows += r
                for k, v in out.metrics.items():
                    s = _scalar(v)
                    if k == "grad_evals" or s is None:
                        continue
                    key = f"task_{k}" if k in _RESERVED else k
                    sums[key] = sums.get(key, 0.0) + s * b
                    weights[key] = weights.get(key, 0) + b
                for cb in self.callbacks:
                    fn = getattr(cb, "on_step_end", None)
                    if fn is not None:
                        fn(self, self.global_step, out)
                if bar is not None:
                    bar.step(loss_sum / samples, correct / rows if rows else None)
        record: dict[str, Any] = {"epoch": epoch + 1, "train_loss": loss_sum / max(samples, 1),
                                  "train_acc": correct / rows if rows else None, "val_acc": None, "val_loss": None,
                                  "lr": lr}
        if val is not None:
            record["val_acc"], record["val_loss"] = self.evaluate(*val)
        record.update({k: sums[k] / weights[k] for k in sums})
        record.update({"wall_s": time.perf_counter() - t0, "samples": samples, "grad_evals": self.grad_evals})
        return record

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        """Clean ``(accuracy, mean cross-entropy)`` of the model on ``x (N, ...)``, ``y (N,)``.

        Runs in eval mode and restores every module's own flag.
        """
        correct, loss = 0, 0.0
        with eval_mode(self.model):
            for i in range(0, x.shape[0], self.config.batch_size):
                xb = x[i:i + self.config.batch_size].to(self.device)
                yb = y[i:i + self.config.batch_size].to(self.device)
                logits = self.model(xb)
                correct += int((logits.argmax(1) == yb).sum())
                loss += float(nn.functional.cross_entropy(logits, yb, reduction="sum"))
        return correct / x.shape[0], loss / x.shape[0]


__all__ = ["Trainer", "derive_seed"]
