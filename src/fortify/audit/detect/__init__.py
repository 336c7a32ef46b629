"""Out-of-distribution and adversarial-input detectors, one per file, registered in :data:`DETECTORS`.

``fitted = DETECTORS.create("energy").fit(model, x_train, y_train)``; ``fitted.score(x) -> (N,)``, higher = more
anomalous (protocol: :mod:`fortify.audit.detect.base`). :mod:`fortify.audit.detect.metrics` scores a detector:
AUROC, AUPR-in/out, FPR at 95% TPR with bootstrap intervals. Every module of this package is imported by
:func:`fortify.registry.discover`, so a detector is available everywhere as soon as its file registers it.
"""
from __future__ import annotations

from fortify.audit.detect.base import DETECTORS, Detector, FittedDetector, NotFittedError
from fortify.registry import discover

discover(__name__)
for _name, _cls in DETECTORS.items():
    globals()[_cls.__name__] = _cls


def create(name: str, **kwargs: object) -> Detector:
    """The detector registered as ``name`` with its options (UnknownNameError / ConfigError otherwise)."""
    return DETECTORS.create(name, **kwargs)


__all__ = ["DETECTORS", "Detector", "FittedDetector", "NotFittedError", "create"] + [
    c.__name__ for _, c in DETECTORS.items()]
