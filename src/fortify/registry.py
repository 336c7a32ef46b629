"""Explicit, named registries (datasets, models, attacks, tasks, certifiers, ...).

A registry maps a name to an object (usually a factory or class). Registering a name twice is an
error; looking up an unknown name raises :class:`fortify.errors.UnknownNameError` listing the
allowed names. :meth:`Registry.create` is the one construction path: it checks the keyword
arguments against the registered class's (or factory's) signature, so an unknown or missing
argument is a :class:`fortify.errors.ConfigError` naming the allowed ones, never a bare TypeError.
The CLI and the contract tests enumerate registries, so a new method is found everywhere by
registering it.
"""
from __future__ import annotations

from typing import Any, Callable, Generic, Iterator, TypeVar

from fortify.errors import ConfigError, UnknownNameError
from fortify.validation import build, check_kwargs

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of objects of one kind.

    >>> R = Registry("widget")
    >>> @R.register("a", help="the A widget")
    ... def make_a(): ...
    >>> R.get("a") is make_a
    True
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._help: dict[str, str] = {}

    def register(self, name: str, obj: T | None = None, *, help: str = "") -> Callable[[T], T] | T:
        """Register ``obj`` under ``name``; usable as a decorator when ``obj`` is omitted."""

        def _add(o: T) -> T:
            if not isinstance(name, str) or not name:
                raise ConfigError(f"{self.kind} name must be a non-empty string, got {name!r}")
            if name in self._items:
                raise ConfigError(f"duplicate {self.kind} name {name!r}")
            self._items[name] = o
            doc = help or (getattr(o, "__doc__", None) or "").strip().splitlines()
            self._help[name] = doc if isinstance(doc, str) else (doc[0] if doc else "")
            return o

        if obj is None:
            return _add
        return _add(obj)

    def get(self, name: str) -> T:
        """Return the object registered as ``name`` or raise UnknownNameError naming the choices."""
        try:
            return self._items[name]
        except (KeyError, TypeError):
            allowed = ", ".join(sorted(self._items)) or "(none registered)"
            raise UnknownNameError(f"unknown {self.kind} {name!r}; allowed: {allowed}") from None

    def check_kwargs(self, name: str, kwargs: dict[str, Any]) -> None:
        """ConfigError if ``kwargs`` are not keyword arguments of the object registered as ``name``."""
        check_kwargs(self.get(name), kwargs, what=f"{self.kind} {name!r}")  # type: ignore[arg-type]

    def create(self, name: str, **kwargs: Any) -> Any:
        """Call the object registered as ``name`` (a class or factory) with ``kwargs``.

        Raises UnknownNameError for an unknown name and ConfigError for an unknown or missing
        keyword argument (the message names the allowed ones).
        """
        return build(self.get(name), kwargs, what=f"{self.kind} {name!r}")  # type: ignore[arg-type]

    def help(self, name: str) -> str:
        self.get(name)
        return self._help[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def items(self) -> list[tuple[str, T]]:
        return [(n, self._items[n]) for n in self.names()]

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
