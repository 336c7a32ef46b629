"""The training-task registry. Each task module registers its class with ``@TASKS.register(name)``;
:mod:`fortify.train.tasks` discovers every module of the package."""
from __future__ import annotations

from fortify.registry import Registry
from fortify.train.tasks.base import Task

TASKS: Registry[type[Task]] = Registry("task")
