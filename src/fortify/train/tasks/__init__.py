"""Training tasks (objectives), one per file, each registered in :data:`TASKS` by its own module.

:func:`fortify.registry.discover` imports every module of this package, so a new task file is
registered as soon as it exists. The distillation tasks (``kd``, ``ard``, ``jacobian_kd``) and
``targeted_dropout`` live here like every other task; the compression transforms that train with
them (``distill``, ``targeted_dropout_prune``) look them up in :data:`TASKS`.
"""
from __future__ import annotations

from typing import Any, Mapping

from fortify.errors import ConfigError
from fortify.registry import discover
from fortify.train.tasks.base import Task, TaskOutput
from fortify.train.tasks.registry import TASKS

discover(__name__)


def create(name: str, **kwargs: object) -> Task:
    """Instantiate the task registered as ``name`` (ConfigError naming the allowed keywords for an unknown one)."""
    return TASKS.create(name, **kwargs)


def resolve(task: Task | str, options: Mapping[str, Any] | None = None) -> Task:
    """A registered task name instantiated with ``options``, or a Task instance as given
    (ConfigError if ``options`` come with an instance)."""
    if isinstance(task, str):
        return create(task, **dict(options or {}))
    if options:
        raise ConfigError("task_options are only used with a task name, not a Task instance")
    return task


__all__ = ["TASKS", "Task", "TaskOutput", "create", "resolve"]
