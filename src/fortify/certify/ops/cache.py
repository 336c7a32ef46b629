"""The per-refinement relaxation cache shared by the operators and the strategies."""
from __future__ import annotations

from typing import Any, Callable


class RelaxCache(dict):
    """Relaxations computed once per refinement (a dict living while its bounds are fixed): they do
    not depend on the specification rows, so chunks of rows share them. Keys hold ``id`` of tensors
    that the caller keeps alive while the cache lives."""

    def memo(self, key: tuple, fn: Callable[[], Any]) -> Any:
        if key not in self:
            self[key] = fn()
        return self[key]


def memo(cache: dict | None, key: tuple, fn: Callable[[], Any]) -> Any:
    """``fn()``, computed once per ``cache`` (see :class:`RelaxCache`; ``None``: no caching)."""
    if cache is None:
        return fn()
    if isinstance(cache, RelaxCache):
        return cache.memo(key, fn)
    if key not in cache:
        cache[key] = fn()
    return cache[key]
