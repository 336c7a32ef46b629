"""One call for the CLI verb and the ``fortify run`` evaluation stage: evaluate, plot, write files.

``run_evaluation(model, x, y, ["linf:0.3"], out_dir=..., **options)`` runs :func:`robust_accuracy` (resumable
through ``out_dir/state.safetensors``), one :func:`robustness_curve` per norm, and writes
``evaluation.json`` (the report's ``to_dict()`` plus the curves) and ``robustness_curves.png``.
Returns the report, the curves and the written paths, for the run store and the HTML report.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from fortify.io import write_atomic
from fortify.errors import ConfigError, OutputError
from fortify.evaluate.cascade import CascadeOptions, robust_accuracy
from fortify.evaluate.plan import Preset, ThreatLike, as_threats
from fortify.evaluate.curves import RobustnessCurve, plot_curves, robustness_curve
from fortify.evaluate.report import EvaluationReport


@dataclass
class EvaluationRun:
    """What :func:`run_evaluation` produced: the report, one curve per norm, written files by kind."""

    report: EvaluationReport
    curves: list[RobustnessCurve]
    files: dict[str, Path] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {**self.report.to_dict(), "curves": [c.to_dict() for c in self.curves],
                "files": {k: str(v) for k, v in self.files.items()}}


def _write_json(path: Path, doc: dict) -> None:
    """Write ``doc`` as JSON atomically (:func:`fortify.io.write_atomic`)."""
    write_atomic(path, json.dumps(doc, indent=2, allow_nan=True), what="evaluation file")


def run_evaluation(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   threats: ThreatLike | Sequence[ThreatLike], *, out_dir: str | Path | None = None,
                   preset: Preset = "fast", curves: bool = True, curve_points: int = 256,
                   **options: Any) -> EvaluationRun:
    """Evaluate ``model`` on ``x (N, ...)``, ``y (N,)`` under ``threats`` and write the artifacts.

    ``options``: the keyword options of :func:`robust_accuracy` (:class:`CascadeOptions`; ``seed``
    defaults to 0 here, ``state_path`` is ``out_dir/state.safetensors``); the curves use the same
    ``budget``, ``batch_size`` and ``seed``. ``curves``: also compute accuracy-vs-eps per norm on the
    first ``curve_points`` inputs. ``out_dir`` None: nothing is written (no resumable state either)."""
    thr = as_threats(threats)
    if "state_path" in options:
        raise ConfigError("run_evaluation keeps its resume state in out_dir/state.safetensors; pass out_dir")
    opts = CascadeOptions.from_kwargs({"seed": 0, **options})
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"cannot create {out}: {e}") from None
    state_path = str(out / "state.safetensors") if out is not None else None
    report = robust_accuracy(model, x, y, thr, preset=preset, **{**options, "seed": opts.seed, "state_path": state_path})
    result = EvaluationRun(report=report, curves=[])
    if curves:
        seed = int(report.config["seed"])
        for norm in dict.fromkeys(t.norm for t in thr):
            bounds = next(t.bounds for t in thr if t.norm == norm)
            result.curves.append(robustness_curve(model, x[:curve_points], y[:curve_points], norm, None,
                                                  bounds=bounds, label=norm, budget=opts.budget,
                                                  batch_size=opts.batch_size, seed=seed))
    if out is not None:
        if result.curves:
            result.files["curves_png"] = plot_curves(result.curves, out / "robustness_curves.png")
        result.files["state"] = out / "state.safetensors"
        result.files["json"] = out / "evaluation.json"
        _write_json(out / "evaluation.json", result.to_dict())
    return result
