"""Explicit, named registries (datasets, models, attacks, tasks, certifiers, ...).

A registry maps a name to an object (usually a factory or class). Registering a name twice is an
error; looking up an unknown name raises :class:`fortify.errors.UnknownNameError` listing the
allowed names. :meth:`Registry.create` is the one construction path: it checks the keyword
arguments against the registered class's (or factory's) signature, so an unknown or missing
argument is a :class:`fortify.errors.ConfigError` naming the allowed ones, never a bare TypeError.
The CLI and the contract tests enumerate registries, so a new method is found everywhere by
registering it.

Discovery: :func:`discover` imports every module of a package (``pkgutil.walk_packages``) so the
registration decorators in each file run; every pillar's ``__init__`` calls it, so a new file is
never silently unregistered. :meth:`Registry.instances` lists every registry built so far (the
contract tests check that each one is covered).

Renamed keyword arguments: :func:`renamed_kwargs` keeps an old spelling working for one release
with a ``DeprecationWarning``; :meth:`Registry.create` and :meth:`Registry.check_kwargs` apply the
same translation, so recipes and the CLI get the alias too.
"""
from __future__ import annotations

import functools
import importlib
import inspect
import pkgutil
import sys
import warnings
import weakref
from types import ModuleType
from typing import Any, Callable, ClassVar, Generic, Iterator, Mapping, TypeVar, overload

from fortify.errors import ConfigError, UnknownNameError
from fortify.validation import build, check_kwargs

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])
#: attribute a :func:`renamed_kwargs`-decorated callable carries: ``{old name: new name}``
RENAMED_ATTR = "__fortify_renamed__"
#: package name -> the modules :func:`discover` imported under it (the discovery record)
DISCOVERED: dict[str, tuple[str, ...]] = {}


def discover(package: str | ModuleType) -> tuple[str, ...]:
    """Import every module and subpackage of ``package`` so their registration decorators run.

    ``package`` is a package object or its dotted name (usually ``__name__`` from a pillar's
    ``__init__``). Modules already imported are not re-imported; an import error propagates (a
    broken method file fails loudly, it is not skipped). Returns the dotted names imported, in
    ``pkgutil.walk_packages`` order, and records them in :data:`DISCOVERED`.
    Cost: one import per module, once per process.
    """
    pkg = importlib.import_module(package) if isinstance(package, str) else package
    path = getattr(pkg, "__path__", None)
    if path is None:
        raise ConfigError(f"discover needs a package, got module {pkg.__name__!r}")
    names: list[str] = []
    for info in pkgutil.walk_packages(path, prefix=pkg.__name__ + "."):
        importlib.import_module(info.name)
        names.append(info.name)
    DISCOVERED[pkg.__name__] = tuple(names)
    return tuple(names)


def _name_class(obj: object, name: str, kind: str) -> None:
    """The registered name is the one place a class's ``name`` comes from.

    A class whose protocol declares a ``name`` attribute (Attack, Certifier, Transform, Task, ...)
    gets ``cls.name = name`` on registration; a class that spells a different name itself is a
    ConfigError (the two would drift apart in messages, reports and the store)."""
    if not isinstance(obj, type) or not hasattr(obj, "name"):
        return
    own = obj.__dict__.get("name")
    if isinstance(own, str) and own and own != name:
        raise ConfigError(f"{kind} {name!r}: class {obj.__qualname__} declares name={own!r}; the registered name "
                          "is the only one (drop the class attribute)")
    setattr(obj, "name", name)


def renamed_kwargs(**renames: str) -> Callable[[F], F]:
    """Decorator for an ``__init__`` or a factory: keyword ``old`` still works as ``new`` for one release.

    ``@renamed_kwargs(n_queries="queries")`` maps ``n_queries=5`` onto ``queries=5`` with a
    ``DeprecationWarning`` naming both; passing both is a :class:`ConfigError`. The signature seen
    by ``inspect`` (and so the "allowed:" lists of error messages and ``--help``) shows only the
    new names.
    """

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def inner(*args: Any, **kwargs: Any) -> Any:
            return fn(*args, **translate_renamed(renames, kwargs, what=fn.__qualname__.split(".")[0]))

        setattr(inner, RENAMED_ATTR, dict(renames))
        return inner  # type: ignore[return-value]

    return wrap


def renamed_of(obj: object) -> dict[str, str]:
    """``{old: new}`` keyword renames declared on ``obj`` (a class's ``__init__`` or a factory)."""
    target = getattr(obj, "__init__", None) if isinstance(obj, type) else obj
    found = getattr(target, RENAMED_ATTR, None)
    return dict(found) if isinstance(found, Mapping) else {}


def accepted_kwargs(obj: Callable[..., Any]) -> tuple[set[str], bool]:
    """Keyword names ``obj`` (a class or factory) takes, deprecated spellings included, and whether
    it takes ``**kwargs``. Read from ``inspect.signature``, which sees through :func:`renamed_kwargs`."""
    try:
        params = list(inspect.signature(obj).parameters.values())
    except (TypeError, ValueError):  # no signature (a builtin): let the call decide
        return set(), True
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return names | set(renamed_of(obj)), any(p.kind is p.VAR_KEYWORD for p in params)


def translate_renamed(renames: Mapping[str, str], kwargs: Mapping[str, Any], *, what: str) -> dict[str, Any]:
    """``kwargs`` with every deprecated key of ``renames`` replaced by its new name (one warning each)."""
    out = dict(kwargs)
    for old, new in renames.items():
        if old not in out:
            continue
        if new in out:
            raise ConfigError(f"{what}: {old!r} is the deprecated spelling of {new!r}; pass only {new!r}")
        warnings.warn(f"{what}: argument {old!r} is deprecated and will be removed in the next release; "
                      f"use {new!r}", DeprecationWarning, stacklevel=3)
        out[new] = out.pop(old)
    return out


class Registry(Generic[T]):
    """A named collection of objects of one kind.

    >>> R = Registry("widget")
    >>> @R.register("a", help="the A widget")
    ... def make_a(): ...
    >>> R.get("a") is make_a
    True
    """

    #: weak references to every registry built (see :meth:`instances`)
    _all: ClassVar[list["weakref.ReferenceType[Registry[Any]]"]] = []

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._help: dict[str, str] = {}
        #: the module that built this registry (where its names are declared)
        self.module: str = str(sys._getframe(1).f_globals.get("__name__", ""))
        Registry._all.append(weakref.ref(self))

    @classmethod
    def instances(cls) -> list["Registry[Any]"]:
        """Every live registry, in creation order (the contract tests enumerate these)."""
        return [r for r in (ref() for ref in cls._all) if r is not None]

    @overload
    def register(self, name: str, obj: None = None, *, help: str = "") -> Callable[[T], T]: ...

    @overload
    def register(self, name: str, obj: T, *, help: str = "") -> T: ...

    def register(self, name: str, obj: T | None = None, *, help: str = "") -> Callable[[T], T] | T:
        """Register ``obj`` under ``name``; usable as a decorator when ``obj`` is omitted."""

        def _add(o: T) -> T:
            if not isinstance(name, str) or not name:
                raise ConfigError(f"{self.kind} name must be a non-empty string, got {name!r}")
            if name in self._items:
                raise ConfigError(f"duplicate {self.kind} name {name!r}")
            _name_class(o, name, self.kind)
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
        obj = self.get(name)
        kwargs = translate_renamed(renamed_of(obj), kwargs, what=f"{self.kind} {name!r}")
        check_kwargs(obj, kwargs, what=f"{self.kind} {name!r}")  # type: ignore[arg-type]

    def create(self, name: str, **kwargs: Any) -> Any:
        """Call the object registered as ``name`` (a class or factory) with ``kwargs``.

        Raises UnknownNameError for an unknown name and ConfigError for an unknown or missing
        keyword argument (the message names the allowed ones). A deprecated spelling declared with
        :func:`renamed_kwargs` is mapped onto its new name with a DeprecationWarning.
        """
        obj = self.get(name)
        kwargs = translate_renamed(renamed_of(obj), kwargs, what=f"{self.kind} {name!r}")
        return build(obj, kwargs, what=f"{self.kind} {name!r}")  # type: ignore[arg-type]

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
