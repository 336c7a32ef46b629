"""Backdoors: plant a trojan on purpose, measure it, find it and remove it.

* Poisoning (:data:`POISONS`): ``res = POISONS.create("badnets", rate=0.1, target=0)(x, y)`` returns a
  poisoned copy with the poisoned indices (BadNets, blended, WaNet, clean-label; all-to-one / all-to-all).
* Measures: :func:`evaluate_backdoor` (clean accuracy and attack success rate).
* Detection (:data:`BACKDOOR_DETECTORS`): ``det = BACKDOOR_DETECTORS.create("neural-cleanse")(model, x)``
  returns a :class:`BackdoorDetection` (score, flagged, target, evidence) at the model level (Neural
  Cleanse, data-free trigger search), data level (activation clustering, spectral signatures) or input
  level (STRIP).
* Mitigation (:data:`BACKDOOR_MITIGATIONS`): fine-pruning and Neural Cleanse unlearning return a new model.

Every module of this package is imported by :func:`fortify.registry.discover`, so a method is available
everywhere as soon as its file registers it. The package never imports ``pipeline``, ``report`` or ``cli``.
"""
from __future__ import annotations

from fortify.audit.backdoor.base import POISONS, Poison, PoisonResult, create_poison
from fortify.audit.backdoor.detect import BACKDOOR_DETECTORS, BackdoorDetection, BackdoorDetector, create_detector
from fortify.audit.backdoor.measures import BackdoorMetrics, attack_success_rate, evaluate_backdoor
from fortify.registry import discover

discover(__name__)

from fortify.audit.backdoor.mitigate import (  # noqa: E402  (registered by discover above)
    BACKDOOR_MITIGATIONS, Mitigation, MitigationResult, create_mitigation,
)

__all__ = ["BACKDOOR_DETECTORS", "BACKDOOR_MITIGATIONS", "POISONS", "BackdoorDetection", "BackdoorDetector",
           "BackdoorMetrics", "Mitigation", "MitigationResult", "Poison", "PoisonResult", "attack_success_rate",
           "create_detector", "create_mitigation", "create_poison", "evaluate_backdoor"]
