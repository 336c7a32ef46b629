"""The model registry, :func:`create`, and the architecture record that makes ``save`` self-contained.

A registered factory has the signature ``factory(in_shape=(C, H, W), num_classes=10, **arch_args)
-> nn.Module`` (``in_shape`` may also be ``(C, L)`` or ``(F,)`` where the architecture takes signals or
tables). Any module torch.fx can trace (:mod:`fortify.models.graph`) is certifiable; structured
pruning still needs an ``nn.Sequential`` stack and refuses others with a typed error.
:func:`create` validates the arguments, calls the factory and attaches the record
``model.fortify_arch = {"name", "in_shape", "num_classes", "args"}`` (JSON-ready) that
:func:`fortify.models.save` writes into the file header.
"""
from __future__ import annotations

import copy
import inspect
import json
from typing import Any, Callable, Mapping, Sequence

from torch import nn

from fortify.errors import ConfigError
from fortify.registry import Registry

ModelFactory = Callable[..., nn.Module]
MODELS: Registry[ModelFactory] = Registry("model")

#: Attribute holding the architecture record on models built by :func:`create`.
ARCH_ATTR = "fortify_arch"


def _check_in_shape(in_shape: object) -> tuple[int, ...]:
    """Validate one example's shape: ``(C, H, W)`` images, ``(C, L)`` signals or ``(F,)`` tables, positive ints."""
    if (
        not isinstance(in_shape, Sequence)
        or not 1 <= len(in_shape) <= 3
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in in_shape)
    ):
        raise ConfigError(f"in_shape must be (C, H, W), (C, L) or (F,) with positive ints, got {in_shape!r}")
    return tuple(int(v) for v in in_shape)


def _check_num_classes(num_classes: object) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError(f"num_classes must be an int >= 2, got {num_classes!r}")
    return int(num_classes)


def _jsonable(value: Any) -> Any:
    """Tuples become lists so the record survives a JSON round trip unchanged."""
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def create(name: str, *, in_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10, **arch_args: Any) -> nn.Module:
    """Build registered model ``name`` for inputs ``(N, *in_shape)`` and ``num_classes`` logits.

    Args:
        name: a name in :data:`MODELS` (``mlp``, ``lenet5``, ``small-cnn``, ``madry-cnn``).
        in_shape: ``(C, H, W)`` (28x28 MNIST and 8x8 digits are both supported), ``(C, L)`` or ``(F,)``
            for the architectures that take signals or tables (``mlp`` takes any shape).
        num_classes: number of output logits.
        arch_args: factory-specific widths (e.g. ``hidden=(300, 100)`` for ``mlp``).
    Returns:
        A module mapping ``(N, *in_shape) -> (N, num_classes)``, carrying the
        architecture record in ``model.fortify_arch``.
    Raises:
        UnknownNameError for an unknown name, ConfigError for bad shapes or unknown arguments.
    """
    factory = MODELS.get(name)
    shape = _check_in_shape(in_shape)
    classes = _check_num_classes(num_classes)
    params = inspect.signature(factory).parameters
    unknown = sorted(set(arch_args) - set(params) - {"in_shape", "num_classes"})
    if unknown and not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        allowed = sorted(set(params) - {"in_shape", "num_classes"})
        raise ConfigError(f"model {name!r} got unknown argument(s) {unknown}; allowed: {allowed}")
    for bad in ("in_shape", "num_classes"):
        if bad in arch_args:
            raise ConfigError(f"pass {bad} as a keyword of create(), not inside arch_args")
    record = {"name": name, "in_shape": list(shape), "num_classes": classes, "args": _jsonable(arch_args)}
    try:
        json.dumps(record)
    except (TypeError, ValueError):
        raise ConfigError(f"model {name!r} arguments must be JSON-serialisable, got {arch_args!r}") from None
    model = factory(in_shape=shape, num_classes=classes, **arch_args)
    setattr(model, ARCH_ATTR, record)
    return model


def architecture(model: nn.Module) -> dict[str, Any] | None:
    """Return a copy of the architecture record of ``model`` (looking inside ``Normalized``), or None."""
    from fortify.models.normalized import Normalized

    target = model.inner if isinstance(model, Normalized) else model
    record = getattr(target, ARCH_ATTR, None)
    return copy.deepcopy(record) if isinstance(record, dict) else None


__all__ = ["ARCH_ATTR", "MODELS", "ModelFactory", "architecture", "create"]
