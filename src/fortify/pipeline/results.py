"""The typed result of every built-in stage (``Stage.run(ctx) -> StageResult``).

The runner keeps each in ``ctx.results[stage name]``; later stages, the report and the CLI read
them with ``ctx.result(name, Type)`` (a :class:`~fortify.pipeline.base.StageResultError` when the
stage did not run) or ``ctx.find(name, Type)`` (None). Figures measured by a stage are also logged
in ``ctx.metrics`` / the run store; a result holds the objects behind them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fortify.pipeline.base import StageResult
from fortify.threat import ThreatModel

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from fortify.certify.accuracy import CertifiedCurve
    from fortify.certify.base import Certificate
    from fortify.compress.measure import Measurement
    from fortify.evaluate.curves import RobustnessCurve
    from fortify.evaluate.report import EvaluationReport
    from fortify.pipeline.stages.compress import CompressConfig


@dataclass
class TrainResult(StageResult):
    """``train``: the per-epoch records, the catastrophic-overfitting guard's events, images trained on."""

    history: list[dict[str, Any]]
    train_examples: int
    co_events: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class LoadResult(StageResult):
    """``load``: the model file read and the metadata taken from it."""

    path: Path
    meta: dict[str, Any]


@dataclass
class AccuracyResult(StageResult):
    """``accuracy`` (formerly ``evaluate``): clean accuracy on the ``n`` test images."""

    clean_accuracy: float
    n: int


@dataclass
class RobustnessResult(StageResult):
    """``robustness``: the cascade's report on the first ``n`` test images, the curves and files."""

    report: "EvaluationReport"
    n: int
    preset: str | None
    attacks: list[str] | None
    curves: list["RobustnessCurve"]
    figure: Path | None
    evaluation_json: Path


@dataclass
class CertifyResult(StageResult):
    """``certify``: the certificate of the first ``n`` test images under ``threat`` and the curves."""

    certificate: "Certificate"
    curves: list["CertifiedCurve"]
    threat: ThreatModel
    method: str
    n: int
    figure: Path | None
    certification_json: Path


@dataclass
class CompressResult(StageResult):
    """``compress``: the measurements before/after (``rows``: original, compressed), the compressed
    model (and its float twin for an int8 model), the artefact and the step reports."""

    rows: list["Measurement"]
    model: "nn.Module"
    float_twin: "nn.Module | None"
    artefact: Path
    reports: list[dict[str, Any]]
    config: "CompressConfig"
    pareto: Path | None
    n_test: int


@dataclass
class ExportResult(StageResult):
    """``export``: the ONNX file, its size and its agreement with the PyTorch model."""

    path: Path
    onnx_bytes: int
    max_abs_diff: float
    agreement: float
    n_check: int
    export_seconds: float
    int8: str | None
    int8_scheme: str | None


@dataclass
class MetricSummary:
    """One attribution metric over the stage's ``n`` images: ``mean`` and its 95% Student-t interval
    ``[low, high]`` (None for a single image), the metric's direction and the per-image ``values``."""

    mean: float
    low: float | None
    high: float | None
    higher_is_better: bool
    values: list[float]


@dataclass
class ExplainResult(StageResult):
    """``explain``: attribution methods x faithfulness metrics on the first ``n`` test images.

    ``table[method][metric]`` and ``baseline[metric]`` (a uniform random attribution of the same
    shape, for the metrics that do not re-run the method) are :class:`MetricSummary`; ``verdicts``
    one line per method; ``attributions[method]`` the maps ``(n, *sample)``; ``target`` how the
    explained class was chosen (``predicted``, ``label`` or a class index)."""

    methods: list[str]
    metrics: list[str]
    n: int
    table: dict[str, dict[str, MetricSummary]]
    baseline: dict[str, MetricSummary]
    verdicts: dict[str, str]
    attributions: dict[str, Any]
    target: str
    seed: int
    figure: Path | None
    explain_json: Path


@dataclass
class SaveResult(StageResult):
    """``save``: the model file written."""

    path: Path


@dataclass
class ReportResult(StageResult):
    """``report``: the files written (``report_json``, ``report_html``, ``training_curve``)."""

    paths: dict[str, Path]


__all__ = ["TrainResult", "LoadResult", "AccuracyResult", "RobustnessResult", "CertifyResult", "CompressResult",
           "ExportResult", "MetricSummary", "ExplainResult", "SaveResult", "ReportResult"]
