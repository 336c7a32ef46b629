"""Explain: attributions whose faithfulness is measured.

``attr = ATTRIBUTIONS.create("integrated-gradients", steps=32)(model, x, target=None)`` returns a
tensor shaped like ``x``; ``res = ATTRIBUTION_METRICS.create("deletion")(model, x, attr, target)``
returns a :class:`MetricResult` (``values (N,)``, ``higher_is_better``). Every module of the
``attributions`` and ``metrics`` subpackages is imported by :func:`fortify.registry.discover`, so a
method is available everywhere as soon as its file registers it; the registered classes are
re-exported by class name (``fortify.explain.IntegratedGradients``).
"""
from __future__ import annotations

from fortify.explain.base import ATTRIBUTIONS, Attribution
from fortify.explain.metrics.base import ATTRIBUTION_METRICS, AttributionMetric, MetricResult
from fortify.registry import discover

discover(__name__)
for _reg in (ATTRIBUTIONS, ATTRIBUTION_METRICS):
    for _name, _cls in _reg.items():
        globals()[_cls.__name__] = _cls


def create(name: str, **kwargs: object) -> Attribution:
    """The attribution method registered as ``name`` with its options (ConfigError for unknown ones)."""
    return ATTRIBUTIONS.create(name, **kwargs)


def create_metric(name: str, **kwargs: object) -> AttributionMetric:
    """The attribution metric registered as ``name`` with its options."""
    return ATTRIBUTION_METRICS.create(name, **kwargs)


__all__ = (["ATTRIBUTIONS", "ATTRIBUTION_METRICS", "Attribution", "AttributionMetric", "MetricResult", "create",
            "create_metric"]
           + [c.__name__ for r in (ATTRIBUTIONS, ATTRIBUTION_METRICS) for _, c in r.items()])
