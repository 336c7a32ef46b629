"""Evaluate: cascade ensemble of attacks, presets, sanity checks, robustness curves.

* :func:`robust_accuracy` -- AutoAttack-style cascade with resumable state, several threats and
  their union, sanity flags and automatic BPDA / EoT / rescaling remedies.
* :func:`robustness_curve` / :func:`plot_curves` -- accuracy vs eps from minimum-norm attacks,
  cross-checked with fixed-eps attacks.
* :func:`run_evaluation` -- both, plus ``evaluation.json`` and ``robustness_curves.png`` in a
  folder: the entry point for the CLI verb and the ``fortify run`` stage.
"""
from __future__ import annotations

from fortify.evaluate.cascade import robust_accuracy
from fortify.evaluate.curves import RobustnessCurve, plot_curves, robustness_curve
from fortify.evaluate.presets import PRESETS, AttackSpec, describe_presets, preset_specs
from fortify.evaluate.run import EvaluationRun, run_evaluation
from fortify.evaluate.report import AttackRow, EvaluationReport, SanityFlag, ThreatResult, render
from fortify.evaluate.state import StateMismatchError
from fortify.evaluate.wrappers import BPDA, EoT, LogitRescale, find_nondifferentiable

__all__ = [
    "robust_accuracy", "run_evaluation", "EvaluationRun", "robustness_curve", "plot_curves", "RobustnessCurve", "PRESETS", "AttackSpec",
    "preset_specs", "describe_presets", "AttackRow", "EvaluationReport", "SanityFlag", "ThreatResult", "render",
    "StateMismatchError", "BPDA", "EoT", "LogitRescale", "find_nondifferentiable",
]
