"""Training: the :class:`Trainer` loop, its :class:`TrainConfig` and the task registry.

>>> from fortify.train import train
>>> history = train(model, (x, y), val=(xv, yv), task="standard", epochs=5, lr=0.05)  # doctest: +SKIP
"""
from __future__ import annotations

from fortify.train.config import TrainConfig
from fortify.train.tasks import TASKS, Task, TaskOutput
from fortify.train.tasks import create as create_task
from fortify.train.callbacks import Callback, RollbackOnDrop
from fortify.train.trainer import Trainer
from fortify.train.api import train

__all__ = ["Trainer", "TrainConfig", "train", "TASKS", "Task", "TaskOutput", "create_task", "Callback", "RollbackOnDrop"]
