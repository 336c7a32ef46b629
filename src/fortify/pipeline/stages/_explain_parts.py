"""Parts of the ``explain`` stage (:mod:`fortify.pipeline.stages.explain`) kept apart to keep that file
short: scoring one model, the side-by-side comparison of the run's model with a ``compare`` model
(e.g. a standard and an adversarially trained model of the same architecture: the faithfulness gap,
paired over the same images, with a 95% t interval), the report-card findings and the typed result.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from fortify.errors import ConfigError
from fortify.pipeline.results import ExplainResult, MetricSummary
from fortify.report.sections import Finding, Table

if TYPE_CHECKING:
    from fortify.pipeline.stages.explain import ExplainConfig

#: attributions, metric x method table, random-attribution baseline of one model
Scored = tuple[dict[str, torch.Tensor], dict[str, dict[str, MetricSummary]], dict[str, MetricSummary]]


@dataclass
class ExplainStageResult(ExplainResult):
    """:class:`ExplainResult` plus ``compare``: with a ``compare`` model, its label, table, baseline,
    verdicts, attributions and the gap (run minus compare, per method and metric), else None."""

    compare: dict[str, Any] | None = None


def check_compare(path: object) -> None:
    """``explain.compare``: None or an existing model file (ConfigError before the run starts)."""
    if path is not None and (not isinstance(path, str) or not Path(path).is_file()):
        raise ConfigError(f"explain.compare must be the path of a fortify model file, got {path!r} (no such file)")


def load_compare(path: str, device: torch.device | None = None) -> nn.Module:
    """The comparison model (:func:`fortify.models.load`: safetensors, never unpickled), eval mode, built on
    ``device`` (the run's: fortify's own model, placed like the main one)."""
    from fortify.models import load

    return load(path, device=device)


def score(model: nn.Module, x: torch.Tensor, target: Any, sec: ExplainConfig, seed: int, random: torch.Tensor,
          bar: Any, label: str, extra: dict[str, Any]) -> Scored:
    """Every method on ``model`` scored by every metric, and the random attribution by the metrics that
    do not re-run a method; ``extra``: constructor options for metrics that take them (ROAR's train)."""
    from fortify.explain import ATTRIBUTION_METRICS, ATTRIBUTIONS
    from fortify.pipeline.stages.explain import _accepts, summarize

    def metric(name: str, method: str) -> Any:
        kw = sec.metric_options(name, method, seed)
        kw.update({k: v for k, v in extra.items() if _accepts(ATTRIBUTION_METRICS.get(name), k) and k not in kw})
        return ATTRIBUTION_METRICS.create(name, **kw)

    tag = "" if label == "run" else f"{label}: "
    attrs: dict[str, torch.Tensor] = {}
    table: dict[str, dict[str, MetricSummary]] = {}
    baseline: dict[str, MetricSummary] = {}
    for method in sec.methods:
        bar.update(info=tag + method)
        attrs[method] = ATTRIBUTIONS.create(method, **sec.method_options(method, seed))(model, x, target)
        bar.advance()
        table[method] = {}
        for name in sec.metrics:
            bar.update(info=f"{tag}{method} {name}")
            res = metric(name, method)(model, x, attrs[method], target)
            table[method][name] = summarize(res.values, res.higher_is_better)
            bar.advance()
    for name in sec.metrics:
        if not _accepts(ATTRIBUTION_METRICS.get(name), "attribution"):  # not re-running a method
            bar.update(info=f"{tag}random {name}")
            res = metric(name, sec.methods[0])(model, x, random, target)
            baseline[name] = summarize(res.values, res.higher_is_better)
        bar.advance()
    return attrs, table, baseline


def compare_models(run: Scored, other: Scored, sec: ExplainConfig) -> dict[str, Any]:
    """The comparison model's table, baseline and verdicts, and ``gap[method][metric]``: the paired
    difference run minus compare per image (mean, 95% t interval, in the metric's direction)."""
    from fortify.pipeline.stages.explain import summarize, verdict

    attrs, table, baseline = other
    gap = {m: {k: summarize(torch.tensor(run[1][m][k].values, dtype=torch.float64)
                            - torch.tensor(table[m][k].values, dtype=torch.float64), table[m][k].higher_is_better)
               for k in sec.metrics} for m in sec.methods}
    return {"label": sec.compare_label, "table": table, "baseline": baseline, "attributions": attrs,
            "verdicts": {m: verdict(table[m], baseline) for m in sec.methods}, "gap": gap}


def comparison_doc(comparison: dict[str, Any], sec: ExplainConfig) -> dict[str, Any]:
    """JSON-able part of the comparison (the maps are left out)."""
    return {"label": comparison["label"], "model": sec.compare, "verdicts": comparison["verdicts"],
            "table": {m: {k: vars(s) for k, s in row.items()} for m, row in comparison["table"].items()},
            "random_baseline": {k: vars(s) for k, s in comparison["baseline"].items()},
            "gap_run_minus_compare": {m: {k: vars(s) for k, s in row.items()} for m, row in comparison["gap"].items()}}


def _cell(s: MetricSummary) -> str:
    return f"{s.mean:.4g}" if s.low is None or s.high is None else f"{s.mean:.4g} [{s.low:.4g}, {s.high:.4g}]"


def _gap_word(s: MetricSummary) -> str:
    if s.low is None or s.high is None:
        return ""
    good, bad = (s.low > 0, s.high < 0) if s.higher_is_better else (s.high < 0, s.low > 0)
    return " (run better)" if good else " (compare better)" if bad else ""


def comparison_tables(comparison: dict[str, Any], sec: ExplainConfig, n: int) -> list[Table]:
    """The comparison model's metric x method table and verdicts, and the gap table."""
    label, table = comparison["label"], comparison["table"]
    head = ["metric", *sec.methods]
    return [
        Table(head, [[k, *(_cell(table[m][k]) for m in sec.methods)] for k in sec.metrics],
              f"{label} model ({sec.compare}): attribution metrics, mean [95% t interval] over {n} images"),
        Table(["method", f"verdict ({label} model)"], [[m, v] for m, v in comparison["verdicts"].items()],
              f"verdicts, {label} model"),
        Table(head, [[k, *(_cell(comparison["gap"][m][k]) + _gap_word(comparison["gap"][m][k])
                           for m in sec.methods)] for k in sec.metrics],
              f"gap: run model minus {label} model, paired over the {n} images, mean [95% t interval]"),
    ]


def findings(table: dict[str, dict[str, MetricSummary]], verdicts: dict[str, str], n: int,
             comparison: dict[str, Any] | None, sec: ExplainConfig) -> list[Finding]:
    """Report-card figures: methods more faithful than a random map, and (when the randomisation
    metric ran) methods passing Adebayo et al.'s randomisation check."""
    from fortify.pipeline.stages.explain import FAITHFULNESS, RANDOMISATION_THRESHOLD

    methods = list(verdicts)
    out = []
    scored = [k for k in FAITHFULNESS if k in sec.metrics]
    if scored:
        faithful = [m for m, v in verdicts.items() if v.startswith("faithful")]
        out.append(Finding("explain.faithful", "Attribution methods more faithful than a random map", len(faithful),
                           unit=f"of {len(methods)} methods", n=n, higher_is_better=True,
                           detail=f"better than a uniform random attribution on every one of {', '.join(scored)} "
                                  "(paired 95% t interval over the images): " + (", ".join(faithful) or "none"),
                           warning="" if faithful else "no attribution method beats a random map"))
    if "randomisation" in sec.metrics:
        passing = [m for m in methods if table[m]["randomisation"].mean < RANDOMISATION_THRESHOLD]
        failing = [m for m in methods if m not in passing]
        out.append(Finding("explain.sanity", "Attribution methods passing the randomisation check", len(passing),
                           unit=f"of {len(methods)} methods", n=n, higher_is_better=True,
                           detail=f"mean rank correlation with the cascade of randomised models below "
                                  f"{RANDOMISATION_THRESHOLD} (Adebayo et al. 2018)",
                           warning=("fails the randomisation check: " + ", ".join(failing)) if failing else ""))
    if comparison is not None and scored:
        k = scored[0]
        better = [m for m in methods if _gap_word(comparison["gap"][m][k]) == " (run better)"]
        out.append(Finding(f"explain.gap.{k}", f"Methods more faithful ({k}) on this run's model than on the "
                           f"{comparison['label']} model", len(better), unit=f"of {len(methods)} methods", n=n,
                           detail="paired 95% t interval of the per-image difference excludes 0: "
                                  + (", ".join(better) or "none")))
    return out


__all__ = ["ExplainStageResult", "Scored", "check_compare", "compare_models", "comparison_doc", "comparison_tables",
           "findings", "load_compare", "score"]
