"""Certification: proofs that no input in the threat set changes the prediction.

``cert = CERTIFIERS.get(name)(**hyper)(model, x, y, threat)`` with names ``ibp``, ``crown``,
``crown-ibp``, ``smoothing`` and ``milp``; :func:`certified_accuracy` and
:func:`certified_accuracy_curve` / :func:`plot_certified_curves` are the entry points for the CLI.
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
    CROWNCertifier,
    CROWNIBPCertifier,
    IBPCertifier,
    margin_lower_bound,
    robust_logits,
)
from fortify.certify.smoothing import Smoothing, SmoothingResult, clopper_pearson_lower

__all__ = [
    "CERTIFIERS",
    "Certificate",
    "Certifier",
    "IBPCertifier",
    "CROWNCertifier",
    "CROWNIBPCertifier",
    "margin_lower_bound",
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
