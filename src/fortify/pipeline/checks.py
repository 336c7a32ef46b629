"""Checks of a run configuration that need the pillars' registries, registered with
:func:`fortify.config.register_check` when :mod:`fortify.pipeline` is imported.

:func:`check_names`: dataset, model and task names against their registries, ``model.args`` and
``task.args`` against the constructors, and (when the run trains) the task built once from
``task.args`` so a bad value names its key. :func:`eps_box_warnings`: threats whose ball covers the
whole input box.
"""
from __future__ import annotations

import dataclasses
import inspect
import math
from typing import Any, Mapping

from fortify.config import Config, check_name, register_check
from fortify.errors import ConfigError, FortifyError
from fortify.threat import ThreatModel


def use_data_path(cfg: Config) -> None:
    """``data.path`` set: read the user's files once, register them as a dataset, point ``data.name`` at it.

    The registered name is derived from the resolved path, so a resumed run finds the same name."""
    d = cfg.data
    if d.path is None:
        return
    from fortify.data.files import from_path

    size = (int(d.image_size[0]), int(d.image_size[1])) if d.image_size else None
    spec = from_path(d.path, label=d.label, test_fraction=d.test_fraction, image_size=size)
    d.name = spec.name


register_check(use_data_path)  # before check_names: data.name must be the registered user dataset


def check_names(cfg: Config) -> None:
    """Names and constructor arguments of the core sections, before any run is created."""
    from fortify.data import DATASETS
    from fortify.models import MODELS
    from fortify.train.tasks import TASKS

    check_name(DATASETS, cfg.data.name, "data.name")
    if not getattr(cfg.model, "factory", None):  # a user's factory takes its own arguments (checked when called)
        check_name(MODELS, cfg.model.name, "model.name")
        check_args(MODELS.get(cfg.model.name), cfg.model.args, "model.args", {"in_shape", "num_classes"})
    check_name(TASKS, cfg.task.name, "task.name")
    check_args(TASKS.get(cfg.task.name), cfg.task.args, "task.args", set())
    if "train" in cfg.stages:
        check_task_values(TASKS.get(cfg.task.name), cfg.task.args)


register_check(check_names)


def check_args(factory: Any, args: Mapping[str, Any], key: str, reserved: set[str]) -> None:
    """Unknown keyword arguments of a factory/class fail here, naming ``key`` and the allowed keys."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    allowed = [n for n, p in params.items() if n not in reserved and n != "self"
               and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
    for k in args:
        if k not in allowed:
            raise ConfigError(f"unknown config key {key + '.' + str(k)!r}; allowed keys in {key!r}: "
                              f"{', '.join(allowed) or '(none)'}")


def check_task_values(factory: Any, args: Mapping[str, Any]) -> None:
    """Build the task once from ``task.args`` so a bad value (``threat: linf:-1``, ``steps: 0``) fails
    before any run is created, naming its key and value. A task that cannot be built without
    run-time inputs (a distillation teacher) is left to the train stage."""
    try:
        factory()
    except (FortifyError, TypeError, ValueError):
        return
    try:
        factory(**args)
        return
    except (FortifyError, TypeError, ValueError) as e:
        error: Exception = e
    for key, value in args.items():  # the first argument that fails on its own is the one to name
        try:
            factory(**{key: value})
        except (FortifyError, TypeError, ValueError) as e:
            kind = type(e) if isinstance(e, ConfigError) else ConfigError
            raise kind(f"task.args.{key}={show_value(value)}: {e}") from None
    kind = type(error) if isinstance(error, ConfigError) else ConfigError
    raise kind(f"task.args: {error}") from None


def show_value(value: Any) -> str:
    """A config value as the user wrote it (``linf:-1``, ``[linf:0.3, l2:2]``, ``3``)."""
    if isinstance(value, (str, ThreatModel)):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(show_value(v) for v in value) + "]"
    return repr(value)


def threat_specs(cfg: Config) -> list[tuple[str, ThreatModel]]:
    """``(key, threat)`` of every threat the stages of ``cfg`` will use (``task.args.threat``,
    ``robustness.threats[i]``, ``certify.threat``, ...): keys named ``threat``/``threats`` holding a
    ThreatModel or a ``NORM:EPS`` string (unparseable strings are skipped: they fail elsewhere)."""
    found: list[tuple[str, ThreatModel]] = []

    def add(key: str, v: Any) -> None:
        try:
            found.append((key, ThreatModel.coerce(v, where=key)))
        except FortifyError:
            pass

    def walk(node: Any, key: str) -> None:
        if isinstance(node, Mapping):
            for k, v in node.items():
                sub = f"{key}.{k}"
                if k in ("threat", "threats") and isinstance(v, (str, ThreatModel)):
                    add(sub, v)
                elif k in ("threat", "threats") and isinstance(v, (list, tuple)):
                    for i, t in enumerate(v):
                        if isinstance(t, (str, ThreatModel)):
                            add(f"{sub}[{i}]", t)
                else:
                    walk(v, sub)

    if "train" in cfg.stages:
        walk(cfg.task.args, "task.args")
    for name, sec in cfg.sections.items():
        if name in cfg.stages and dataclasses.is_dataclass(sec) and not isinstance(sec, type):
            walk({f.name: getattr(sec, f.name) for f in dataclasses.fields(sec)}, name)
    return found


def eps_box_warnings(cfg: Config) -> list[str]:
    """One warning line per threat of ``cfg`` whose ball covers the whole input box ``[0, 1]^d``.

    With ``span = hi - lo`` and ``d`` input coordinates (the dataset's ``C*H*W``), the box's diameter is
    ``span`` in linf, ``span*sqrt(d)`` in l2 and ``span*d`` in l1
    (:func:`fortify.evaluate.eps_checks.box_covering_eps`).
    An eps at or beyond it lets every image reach every other one: robust accuracy is ~0 by construction
    and says nothing about the model. Unknown datasets give no warning (they fail validation elsewhere)."""
    from fortify.data import DATASETS
    from fortify.evaluate.eps_checks import box_covering_eps

    try:
        dim = math.prod(DATASETS.get(cfg.data.name).input_shape)
    except FortifyError:
        return []
    out = []
    for key, thr in threat_specs(cfg):
        cover = box_covering_eps(thr, dim)
        if thr.eps >= cover:
            out.append(f"{key} {thr}: eps {thr.eps:g} >= {cover:.4g}, the {thr.norm} diameter of the input box "
                       f"[{thr.envelope()[0]:g}, {thr.envelope()[1]:g}]^{dim}, so the ball covers every input and any "
                       "image can become any other: robust accuracy is ~0 by construction, not a property of "
                       "the model")
    return out
