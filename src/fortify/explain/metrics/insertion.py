"""Insertion AUC (Petsiuk, Das & Saenko 2018, "RISE: randomized input sampling for explanation").

Starting from an all-``baseline`` input, the most relevant features first are put back in ``steps``
equal stages; the value is the area under the target-probability curve over the inserted fraction
[0, 1]. **Higher is better**. ``extra["curve"]``: ``(N, steps + 1)``. Cost: at most ``N (steps + 1)``
forward passes (chunked): one per distinct perturbed input (see :mod:`fortify.explain.metrics._flipping`).
"""
from __future__ import annotations

from fortify.explain.metrics._flipping import FlipMetric
from fortify.explain.metrics.base import ATTRIBUTION_METRICS


@ATTRIBUTION_METRICS.register("insertion", help="AUC of the target probability as top features are inserted (higher is better)")
class Insertion(FlipMetric):
    """Insertion AUC; higher is better."""

    higher_is_better = True
    insert = True
