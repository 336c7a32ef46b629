"""The audit pillar: can the model be trusted? Calibration and abstention (``calibration``, ``selective``),
out-of-distribution and adversarial-input detectors (``detect/``, one per file), natural corruptions
(``corruptions``), OOD sets that exist offline (``ood_sets``), fooling images (``fooling``) and backdoors
(``backdoor/``). The pillar never imports ``pipeline``, ``report`` or ``cli``.
"""
from fortify.registry import discover

discover(__name__)  # every audit module registers itself; a new file is found without an edit here
