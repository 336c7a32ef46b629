"""Certification: proofs that no input in the threat set changes the prediction.

Protocol: ``cert = CERTIFIERS.get(name)(**hyper)(model, x, y, threat)`` returns a
:class:`Certificate` (``lower_margin (N,)``, ``certified (N,)``, ``method``); the model is never
mutated. Registered names:

* ``ibp``: interval bound propagation (Gowal et al. 2018), margin folded into the last layer;
* ``crown``: CROWN backward linear bounds with adaptive ReLU slopes (Zhang et al. 2018), CROWN
  intermediate bounds (conv layers via receptive-field windows, see ``patches.py``), memory-aware
  chunking (``memory_budget`` bytes), intersected with IBP (``intersect_ibp``), final-pass slopes
  refined by 3 optimisation steps on the 2 lowest margin rows (``alpha_steps``, ``alpha_rows``);
* ``alpha-crown``: the same with 20 slope-optimisation steps on every margin row (alpha-CROWN of
  Xu et al. 2021 on the final specification; intermediate bounds stay CROWN-Ada's);
* ``crown-ibp``: IBP intermediate bounds + CROWN final bound (Zhang et al. 2020);
* ``smoothing``: randomized smoothing, l2 (Cohen et al. 2019), ``Smoothing.predict`` abstains;
* ``milp``: exact MILP verification of small ReLU nets (HiGHS via scipy), with counterexamples.

Entry points for the CLI / pipeline: :func:`certify`, :func:`certified_accuracy`,
:func:`certified_accuracy_curve` and :func:`plot_certified_curves`; certified training uses
:func:`margin_lower_bound` (differentiable) and :func:`robust_logits`.
"""
from __future__ import annotations

from fortify.certify.accuracy import (
    CertifiedCurve,
    certified_accuracy,
    certified_accuracy_curve,
    certify,
    plot_certified_curves,
)
from fortify.certify.base import CERTIFIERS, Certificate, Certifier
from fortify.certify.milp import MILPVerifier
from fortify.certify.propagation import (
    AlphaCROWNCertifier,
    BoundOptions,
    CROWNCertifier,
    CROWNIBPCertifier,
    IBPCertifier,
    margin_lower_bound,
    robust_logits,
)
from fortify.certify.smoothing import Smoothing, SmoothingResult, clopper_pearson_lower
from fortify.registry import discover

discover(__name__)  # every certifier module registers itself; a new file is found without an edit here

__all__ = [
    "CERTIFIERS",
    "Certificate",
    "Certifier",
    "IBPCertifier",
    "CROWNCertifier",
    "AlphaCROWNCertifier",
    "CROWNIBPCertifier",
    "margin_lower_bound",
    "BoundOptions",
    "robust_logits",
    "Smoothing",
    "SmoothingResult",
    "clopper_pearson_lower",
    "MILPVerifier",
    "certify",
    "certified_accuracy",
    "CertifiedCurve",
    "certified_accuracy_curve",
    "plot_certified_curves",
]
