"""Data-parallel and asynchronous training on torch.distributed.

Two ways in, one code path: ``torchrun --nproc_per_node=N -m fortify train ...`` (or any script that
runs under torchrun / initialises a process group: :meth:`fortify.train.Trainer.fit` joins it, see
:mod:`.env`), and fortify's own launcher below (``nproc`` processes on 127.0.0.1, gloo), whose sync
workers get torchrun's variables and run the same path.

>>> from fortify.train import distributed
>>> res = distributed.fit(net, (x, y), task="pgd_at", world_size=2, mode="sync",
...                       epochs=3, batch_size=128)  # doctest: +SKIP
>>> res.model, res.history, res.stats  # a trained copy; ``net`` is untouched   # doctest: +SKIP
>>> res = distributed.fit("default", world_size=2, mode="async")  # a recipe's model, data, task  # doctest: +SKIP

Three modes (``TrainConfig.dist_mode``), each with ``world_size = TrainConfig.nproc`` workers:

* ``"sync"`` (:mod:`.sync`): every global batch is split over the workers, gradients are
  all-reduced, parameters stay identical on every rank; one step equals the single-process step on
  the same batch (up to float rounding); BatchNorm statistics are synchronised over the ranks.
* ``"async"`` (:mod:`.async_sgd`): Downpour SGD with a parameter server (one extra process, rank
  0) applying each worker's gradient as it arrives, dropping those more than ``max_staleness``
  updates old and scaling the others' learning rate by ``1/staleness`` (Zhang et al. 2016).
* ``"producers"`` (:mod:`.producers`): adversarial-example producers pushing ``(x_adv, y, version)``
  to one trainer, which drops examples staler than ``max_staleness`` (staleness histogram in stats).

The same machinery runs when a :class:`fortify.train.Trainer` gets ``nproc > 1`` or
``dist_mode="async"`` in its config (recipes: ``train.nproc``, ``train.dist_mode``,
``train.max_staleness``; CLI: ``fortify train --nproc N --mode sync|async|producers``). Worker failures
surface in the calling process as their own fortify error or :class:`WorkerError`.

Workers start with ``forkserver`` (``spawn`` where unavailable), which re-imports the calling
script in every worker: like any such multiprocessing code, a script must call :func:`fit` under
``if __name__ == "__main__":``. Tensors handed to the workers (training data) are moved to shared
memory (same values, new storage), as a multi-process DataLoader does; models are copied.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from fortify.errors import ConfigError
from fortify.train.config import DIST_MODES, TrainConfig
from fortify.train.distributed.common import WorkerError
from fortify.train.distributed.launch import DEFAULT_TIMEOUT_S, check_available, fit_trainer
from fortify.train.tasks import Task, create as create_task, resolve as resolve_task
from fortify.train.trainer import Trainer, _check_pair


@dataclass
class FitResult:
    """What :func:`fit` returns: the trained ``model`` (a new object), the per-epoch ``history``
    records and the run's ``stats`` (mode, workers, steps, ``cpu_s`` per process in rank order;
    async: pushes, applied, dropped and the count of applied gradients per staleness)."""

    model: nn.Module
    history: list[dict[str, Any]]
    stats: dict[str, Any]


def _check_world(world_size: object, mode: object) -> tuple[int, str]:
    """ConfigError unless ``world_size`` is an int >= 1 and ``mode`` a known mode."""
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ConfigError(f"world_size must be an integer >= 1, got {world_size!r}")
    if mode not in DIST_MODES:
        raise ConfigError(f"mode must be one of {', '.join(DIST_MODES)}; got {mode!r}")
    return world_size, str(mode)


def _from_recipe(recipe: Any, overrides: Iterable[str]) -> tuple[nn.Module, Any, Any, Task, TrainConfig]:
    """Model (seeded as by the pipeline), train/test data, task and TrainConfig of a recipe."""
    from fortify import data as fdata
    from fortify import models
    from fortify.config import Config, load_config

    cfg = recipe if isinstance(recipe, Config) else load_config(recipe, list(overrides))
    net = models.from_config(cfg)
    d = cfg.data
    train = fdata.load(d.name, "train", data_dir=d.data_dir, limit=d.train_limit)
    test = fdata.load(d.name, "test", data_dir=d.data_dir, limit=d.test_limit)
    try:
        task = create_task(cfg.task.name, **cfg.task.args)
    except TypeError as e:
        raise ConfigError(f"task.args: {e}") from None
    return net, train, test, task, cfg.train


@dataclass(frozen=True)
class RunOptions:
    """How :func:`fit` runs (every field optional; each is also accepted as a keyword of :func:`fit`).

    Attributes:
        world_size: gradient workers (``TrainConfig.nproc``); ``mode``: ``"sync"`` or ``"async"``.
        max_staleness: async only (``None`` keeps the config's).
        checkpoint_dir, progress, callbacks, resume: as for :class:`fortify.train.Trainer`.
        timeout_s: limit of one collective / message inside the workers; ``deadline_s``: optional
            limit of the whole run. ``start_method``: ``forkserver`` (default on POSIX) or ``spawn``.
    """

    world_size: int = 2
    mode: str = "sync"
    max_staleness: int | None = None
    checkpoint_dir: str | Path | None = None
    progress: bool = False
    callbacks: tuple[object, ...] = ()
    resume: bool = False
    timeout_s: float = DEFAULT_TIMEOUT_S
    deadline_s: float | None = None
    start_method: str | None = None


RUN_FIELDS = tuple(f.name for f in fields(RunOptions))


def _split(run: RunOptions | None, changes: Mapping[str, Any]) -> tuple[RunOptions, dict[str, Any]]:
    """``run`` updated by the :class:`RunOptions` keys of ``changes``, and the rest (TrainConfig fields)."""
    mine = {k: v for k, v in changes.items() if k in RUN_FIELDS}
    if "callbacks" in mine:
        mine["callbacks"] = tuple(mine["callbacks"])
    return replace(run or RunOptions(), **mine), {k: v for k, v in changes.items() if k not in RUN_FIELDS}


def fit(
    model_or_recipe: nn.Module | str | Path | Any,
    train: tuple[torch.Tensor, torch.Tensor] | None = None,
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
    *,
    task: Task | str = "standard",
    task_options: Mapping[str, Any] | None = None,
    config: TrainConfig | Mapping[str, Any] | None = None,
    overrides: Iterable[str] = (),
    run: RunOptions | None = None,
    **changes: Any,
) -> FitResult:
    """Train a copy of a model with ``world_size`` worker processes; the input is never mutated.

    ``model_or_recipe``: an ``nn.Module`` (then ``train = (x (N, ...), y (N,))`` is required,
    ``val`` optional, the objective is ``task`` with ``task_options`` and the hyper-parameters are
    ``config`` updated by the TrainConfig fields among ``changes``), or a recipe name / YAML path /
    resolved :class:`fortify.config.Config` (with ``overrides`` like ``"train.epochs=2"``): its model
    is built and seeded as the pipeline does, trained on the train split and scored on the test split.
    ``run``: a :class:`RunOptions` (processes, mode, checkpoints, limits); its field names are also
    accepted among ``changes`` (``world_size=2, mode="async", epochs=3`` mixes both kinds).
    Raises ConfigError for bad arguments, the worker's own FortifyError or :class:`WorkerError`.
    ``world_size=1`` with ``mode="sync"`` trains in this process (no workers).
    """
    opts, config_fields = _split(run, changes)
    world_size, mode = _check_world(opts.world_size, opts.mode)
    if isinstance(model_or_recipe, nn.Module):
        if train is None:
            raise ConfigError("fit(model, train=(x, y), ...) needs training data")
        net = model_or_recipe
        task = resolve_task(task, task_options)
        base = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(dict(config or {}))
    else:
        if train is not None or val is not None or config is not None or task_options:
            raise ConfigError("with a recipe, data, task and config come from the recipe; pass overrides instead")
        net, train, val, task, base = _from_recipe(model_or_recipe, overrides)
    updates: dict[str, Any] = dict(config_fields, nproc=world_size, dist_mode=mode)
    if opts.max_staleness is not None:
        updates["max_staleness"] = opts.max_staleness
    cfg = base.replace(**updates)
    if mode != "sync" or world_size > 1:
        check_available()
    trainer = Trainer(copy.deepcopy(net), task, cfg, checkpoint_dir=opts.checkpoint_dir, progress=opts.progress,
                      callbacks=opts.callbacks)
    if mode == "sync" and world_size == 1:
        history = trainer.fit(train, val, resume=opts.resume)
        stats: dict[str, Any] = {"mode": "sync", "world_size": 1, "steps": trainer.global_step}
    else:
        x, y = _check_pair(train, "train")
        v = _check_pair(val, "val") if val is not None else None
        history = fit_trainer(trainer, (x, y), v, resume=opts.resume, start_method=opts.start_method,
                              timeout_s=opts.timeout_s, deadline_s=opts.deadline_s)
        stats = dict(trainer.dist_stats)
    return FitResult(trainer.model, history, stats)


__all__ = ["fit", "FitResult", "RunOptions", "WorkerError", "fit_trainer"]
