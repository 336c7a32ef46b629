"""Users' own architectures: ``factory_model("package.module:function", **args)``.

The factory is an importable callable returning an ``nn.Module`` (the user's own code: importing
and calling it **runs that code**). :func:`factory_model` records ``{"factory": "pkg.mod:fn",
"args": {...}}`` (plus ``in_shape`` / ``num_classes``) in the model's architecture record, so
:func:`fortify.models.save` writes it and :func:`fortify.models.load` rebuilds the model by calling
the factory again with the same arguments. Because loading such a file would import a module the
*file* names, :func:`fortify.models.load` refuses it unless the caller opts in with
``trust_factory=True`` (CLI: ``--trust-factory``): a hostile file never makes fortify import
anything silently.

``in_shape`` / ``num_classes`` are passed to the factory when its signature accepts them (by name,
or through ``**kwargs``); ``args`` must be JSON data (they are stored in the file).
"""
from __future__ import annotations

import importlib
import inspect
import json
import re
from typing import Any, Callable, Mapping, Sequence

from torch import nn

from fortify.errors import ConfigError
from fortify.models.registry import ARCH_ATTR

#: ``package.module:function`` (dotted attribute after the colon allowed: ``mod:Class.build``)
_PATH = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


def import_factory(path: str) -> Callable[..., Any]:
    """The callable named by ``"package.module:function"`` (imports the module: runs user code).

    Raises:
        ConfigError (one line): a malformed path, a module that does not import (any exception
        while importing, named), a missing attribute or one that is not callable.
    """
    if not isinstance(path, str) or not _PATH.match(path.strip()):
        raise ConfigError(f"model factory must look like package.module:function, got {path!r}")
    mod_name, _, attr = path.strip().partition(":")
    try:
        obj: Any = importlib.import_module(mod_name)
    except Exception as exc:  # noqa: BLE001 - any failure of the user's module is reported in one line
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise ConfigError(f"model factory {path!r}: cannot import {mod_name!r} ({type(exc).__name__}: {first})") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"model factory {path!r}: {mod_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"model factory {path!r} is a {type(obj).__name__}, not a callable")
    return obj  # type: ignore[no-any-return]


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is p.VAR_KEYWORD for p in params)


def factory_model(path: str, *, in_shape: Sequence[int] | None = None, num_classes: int | None = None,
                  **args: Any) -> nn.Module:
    """Build ``path``'s model with ``args`` (and ``in_shape`` / ``num_classes`` where the factory takes
    them) and attach the architecture record that lets save / load rebuild it.

    Raises:
        ConfigError (one line): see :func:`import_factory`; ``args`` that are not JSON data; the
        factory raising (its exception named); a result that is not an ``nn.Module``.
    """
    fn = import_factory(path)
    try:
        json.dumps(args, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model factory {path!r}: args must be JSON data (they are saved with the model): {exc}") from None
    call = dict(args)
    if in_shape is not None and _accepts(fn, "in_shape"):
        call["in_shape"] = tuple(int(v) for v in in_shape)
    if num_classes is not None and _accepts(fn, "num_classes"):
        call["num_classes"] = int(num_classes)
    try:
        model = fn(**call)
    except Exception as exc:  # noqa: BLE001 - the user's code: one line naming what it raised
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise ConfigError(f"model factory {path!r} failed: {type(exc).__name__}: {first}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model factory {path!r} returned {type(model).__name__}, not a torch.nn.Module")
    setattr(model, ARCH_ATTR, {"name": "factory", "factory": path.strip(), "args": dict(args),
                               "in_shape": None if in_shape is None else [int(v) for v in in_shape],
                               "num_classes": None if num_classes is None else int(num_classes)})
    return model


def is_factory_record(arch: object) -> bool:
    """Whether an architecture record (in memory or read from a file) names a user factory."""
    return isinstance(arch, Mapping) and isinstance(arch.get("factory"), str)


def rebuild(arch: Mapping[str, Any], in_shape: Any, num_classes: Any, *, trust_factory: bool, where: str) -> nn.Module:
    """The model a factory record describes (``models.load``); ConfigError without ``trust_factory``."""
    path = str(arch["factory"])
    if not trust_factory:
        raise ConfigError(f"{where} was built by the model factory {path!r} (user code); loading it imports and runs "
                          f"that code: pass trust_factory=True (CLI: --trust-factory) only if you trust this file")
    args = arch.get("args") or {}
    if not isinstance(args, Mapping) or not all(isinstance(k, str) for k in args):
        raise ConfigError(f"{where}: factory args must be a mapping with string keys")
    shape = tuple(in_shape) if isinstance(in_shape, (list, tuple)) else None
    classes = int(num_classes) if isinstance(num_classes, int) and not isinstance(num_classes, bool) else None
    return factory_model(path, in_shape=shape, num_classes=classes, **dict(args))


__all__ = ["factory_model", "import_factory", "is_factory_record", "rebuild"]
