"""Training tasks (objectives). Every module here is imported so its registration is visible."""
from __future__ import annotations

import importlib
import pkgutil
from typing import Any, Mapping

from fortify.errors import ConfigError

from fortify.train.tasks.base import Task
from fortify.train.tasks.registry import TASKS

for _m in pkgutil.iter_modules(__path__):
    if _m.name not in {"base", "registry"} and not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")


#: Modules outside this package that register tasks (``kd``, ``ard``, ``jacobian_kd`` and
#: ``targeted_dropout`` live in :mod:`fortify.compress`). They import :mod:`fortify.train`, so
#: importing them here would be a cycle; they are imported on the first lookup instead.
PLUGIN_MODULES: tuple[str, ...] = ("fortify.compress",)


class _PluginTaskRegistry(type(TASKS)):  # type: ignore[misc]
    """:data:`TASKS` whose lookups (``get``, ``names``, ``in``, ``len``) first import :data:`PLUGIN_MODULES`.

    Registration does not trigger the import, so the plugin modules can register into it while
    being imported. A lookup of an already registered name (e.g. ``standard``) imports nothing.
    """

    _plugins_loaded = False

    def _load_plugins(self) -> None:
        """Import the plugin modules once (re-entrant calls during that import do nothing)."""
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        try:
            for mod in PLUGIN_MODULES:
                importlib.import_module(mod)
        except BaseException:
            self._plugins_loaded = False
            raise

    def get(self, name: str) -> object:
        """The task class registered as ``name`` (plugins imported first when ``name`` is unknown)."""
        if name not in self._items:
            self._load_plugins()
        return super().get(name)

    def names(self) -> list[str]:
        """All task names, plugins included."""
        self._load_plugins()
        return super().names()

    def __contains__(self, name: object) -> bool:
        """Whether ``name`` is a task, plugins included."""
        if name not in self._items:
            self._load_plugins()
        return name in self._items

    def __len__(self) -> int:
        """Number of tasks, plugins included."""
        self._load_plugins()
        return len(self._items)


TASKS.__class__ = _PluginTaskRegistry


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


__all__ = ["TASKS", "Task", "create", "resolve"]
