"""Deletion AUC (MoRF pixel flipping: Samek et al. 2017, "Evaluating the visualization of what a deep
neural network has learned"; Petsiuk et al. 2018, RISE).

The most relevant features first (by attribution value, each element of ``x``) are set to
``baseline`` in ``steps`` equal stages; the value is the area under the target-probability curve
over the removed fraction [0, 1]. **Lower is better** (a faithful attribution removes the evidence
first). ``extra["curve"]``: ``(N, steps + 1)``. Cost: at most ``N (steps + 1)`` forward
passes (chunked): one per distinct perturbed input (see :mod:`fortify.explain.metrics._flipping`).
"""
from __future__ import annotations

from fortify.explain.metrics._flipping import FlipMetric
from fortify.explain.metrics.base import ATTRIBUTION_METRICS


@ATTRIBUTION_METRICS.register("deletion", help="AUC of the target probability as top features are removed (lower is better)")
class Deletion(FlipMetric):
    """MoRF deletion AUC; lower is better."""

    higher_is_better = False
    insert = False
