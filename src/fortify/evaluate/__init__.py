"""Evaluate: cascade ensemble of attacks, presets, sanity checks, robustness curves.

* :func:`robust_accuracy` -- AutoAttack-style cascade with resumable state, several threats and
  their union, sanity flags and automatic BPDA / EoT / rescaling remedies; a :class:`Plan` of steps
  (:mod:`~fortify.evaluate.plan`) run against a typed :class:`CascadeState` (:mod:`~fortify.evaluate.state`)
  by :mod:`~fortify.evaluate.runner`, options in :class:`CascadeOptions`.
* :func:`robustness_curve` / :func:`plot_curves` -- accuracy vs eps from minimum-norm attacks,
  cross-checked with fixed-eps attacks.
* :func:`run_evaluation` -- both, plus ``evaluation.json`` and ``robustness_curves.png`` in a
  folder: the entry point for the CLI verb and the ``fortify run`` stage.
"""
from __future__ import annotations

from fortify.evaluate.cascade import CascadeOptions, robust_accuracy
from fortify.evaluate.curves import CurveOptions, RobustnessCurve, plot_curves, robustness_curve
from fortify.evaluate.plan import Kind, Plan, Step, ThreatPlan
from fortify.evaluate.presets import PRESETS, AttackSpec, describe_presets, preset_specs
from fortify.evaluate.run import EvaluationRun, run_evaluation
from fortify.evaluate.report import AttackRow, EvaluationReport, SanityFlag, ThreatResult, render
from fortify.evaluate.state import CascadeState, StateMismatchError, ThreatState
from fortify.evaluate.wrappers import BPDA, EoT, LogitRescale, find_nondifferentiable

__all__ = [
    "CascadeOptions", "CascadeState", "ThreatState", "Plan", "ThreatPlan", "Step", "Kind", "CurveOptions",
    "robust_accuracy", "run_evaluation", "EvaluationRun", "robustness_curve", "plot_curves", "RobustnessCurve", "PRESETS", "AttackSpec",
    "preset_specs", "describe_presets", "AttackRow", "EvaluationReport", "SanityFlag", "ThreatResult", "render",
    "StateMismatchError", "BPDA", "EoT", "LogitRescale", "find_nondifferentiable",
]
