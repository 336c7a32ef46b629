"""Training tasks (objectives). Every module here is imported so its registration is visible."""
from __future__ import annotations

import importlib
import pkgutil

from fortify.train.tasks.base import Task
from fortify.train.tasks.registry import TASKS

for _m in pkgutil.iter_modules(__path__):
    if _m.name not in {"base", "registry"} and not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")


def create(name: str, **kwargs: object) -> Task:
    """Instantiate the task registered as ``name``."""
    return TASKS.get(name)(**kwargs)


__all__ = ["TASKS", "Task", "create"]
