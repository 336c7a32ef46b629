"""``train(model, data, ...)``: the one-call form of :class:`fortify.train.Trainer`."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from fortify.train.config import TrainConfig
from fortify.train.tasks import Task, resolve as resolve_task
from fortify.train.trainer import Trainer

def train(
    model: nn.Module,
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
    task: Task | str = "standard",
    *,
    task_options: Mapping[str, Any] | None = None,
    checkpoint_dir: str | Path | None = None,
    progress: bool = True,
    callbacks: Iterable[object] = (),
    resume: bool = False,
    **config_fields: Any,
) -> list[dict[str, Any]]:
    """Train ``model`` in place and return the per-epoch records.

    ``task``: a :class:`Task` or a registered name (instantiated with ``task_options``);
    ``config_fields``: :class:`TrainConfig` fields (unknown ones raise ConfigError naming the
    allowed ones). Example: ``train(net, (x, y), task="standard", epochs=5, lr=0.05)``.
    """
    trainer = Trainer(model, resolve_task(task, task_options), TrainConfig.from_dict(config_fields),
                      checkpoint_dir=checkpoint_dir, progress=progress, callbacks=tuple(callbacks))
    return trainer.fit(train, val, resume=resume)


__all__ = ["train"]
