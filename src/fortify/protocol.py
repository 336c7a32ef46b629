"""The protocol kernel: one template-method pattern for every pillar's base class.

Each protocol (Attack, Certifier, Transform, Task, and the pillars that follow) has a base class
whose ``__call__`` is the *template method*: it validates the inputs with :mod:`fortify.validation`
(the same checks and error types everywhere), guards the user's model with
:mod:`fortify.models.state` (flags, ``requires_grad`` and ``.grad`` restored; never moved), calls
the subclass's ``_run`` and returns one result dataclass. Subclasses write only ``_run``.

:class:`TemplateCall` enforces that shape: the base marks its ``__call__`` with :func:`template`,
and a subclass that defines its own ``__call__`` (skipping the validation and the model guard) is a
``TypeError`` when the class is created -- not a silent bypass found later.
"""
from __future__ import annotations

from typing import Any, Callable, TypeVar

F = TypeVar("F", bound=Callable[..., Any])
_MARK = "__fortify_template__"


def template(fn: F) -> F:
    """Mark a base class's ``__call__`` as the protocol's template method."""
    setattr(fn, _MARK, True)
    return fn


def is_template(fn: object) -> bool:
    return bool(getattr(fn, _MARK, False))


class TemplateCall:
    """Mixin for protocol bases: subclasses implement ``_run``; ``__call__`` is final."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        call = cls.__dict__.get("__call__")
        if call is not None and not is_template(call):
            base = next((b.__name__ for b in cls.__mro__[1:] if is_template(b.__dict__.get("__call__"))), "its base")
            raise TypeError(f"{cls.__qualname__} overrides __call__, the template method of {base}: implement _run "
                            "instead (validation and the model guard live in the base's __call__)")


__all__ = ["TemplateCall", "is_template", "template"]
