"""The training-task registry. Each task module registers its class with ``@TASKS.register(name)``."""
from __future__ import annotations

from fortify.registry import Registry

TASKS: Registry = Registry("task")
