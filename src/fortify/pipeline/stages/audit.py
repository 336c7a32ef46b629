"""``audit`` pipeline stage: can the model be trusted? Calibration, abstention, OOD and adversarial-input detection
(static and adaptive), natural corruptions, fooling images.

Runs :func:`fortify.audit.suite.audit_model` (the library; definitions and references there and in
:mod:`fortify.audit.calibration`, :mod:`fortify.audit.detect`, :mod:`fortify.audit.adversarial`) on the run's model
-- and, when they exist, on the compressed model of the ``compress`` stage (does int8 / pruning change calibration
or detection?) and on ``compare_model`` (e.g. the standard twin of a robust model) -- with cheap settings by
default: detectors fitted on the first ``n_fit`` training images, the first ``n`` test images split into a
calibration half and an evaluation half.

Writes ``audit/audit.json``, ``audit/reliability[_<label>].png`` (reliability diagram + confidence histogram, the
calibrated curves overlaid), ``audit/risk_coverage.png`` and ``audit/corruptions.png``; logs
``audit/<label>/<figure>`` in the run store; adds a report section with the calibration, detector (per OOD set,
per attack, static vs adaptive), adversarial-ECE, corruption and fooling tables and up to five findings: ECE, the
best OOD AUROC with its FPR95, the best adaptive AUROC (warning when a detector collapses), the mean corruption
accuracy, the fooling rate.

Recipe section ``audit`` (:class:`AuditConfig`, the fields of :class:`fortify.audit.suite.AuditOptions` plus)::

    audit:
      n: 400                  # test images (half fits the calibrators, half is measured)
      n_fit: 1000             # training images the detectors are fitted on
      compressed: true        # also audit the compress stage's model when it ran
      compare_model: null     # path of another saved model audited side by side (robust vs standard)
      sections: [calibration, ood, adversarial, corruptions, fooling]
      detectors: [msp, energy, mahalanobis, knn]
      eps: [0.1]
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

from fortify import progress
from fortify.audit.adversarial import MIN_SUCCESS
from fortify.audit.suite import AuditOptions, ModelAudit
from fortify.errors import ConfigError
from fortify.pipeline.base import RunContext, StageResult, register_stage
from fortify.report.sections import Finding, Section, Table


@dataclass
class AuditConfig(AuditOptions):
    """``audit`` section (module docstring); ``seed`` null: ``train.seed``."""

    n: int = 400
    n_fit: int = 1000
    compressed: bool = True
    compare_model: str | None = None
    bootstrap: int = 100
    seed: int | None = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("n", "n_fit"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (4 if name == "n" else 1):
                raise ConfigError(f"audit.{name} must be an integer >= {4 if name == 'n' else 1}, got {v!r}")


@dataclass
class AuditResult(StageResult):
    """``audit``: one :class:`ModelAudit` per audited model (``model``, ``compressed``, ``compare``), the figures
    and the JSON document."""

    audits: dict[str, ModelAudit]
    figures: list[Path] = field(default_factory=list)
    audit_json: Path | None = None
    seconds: float = 0.0


def _png(fig: Any, path: Path) -> Path:
    from fortify.io import write_atomic

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, metadata={"Software": None})
    return write_atomic(path, buf.getvalue(), what="figure")


def corruption_figure(audits: dict[str, ModelAudit], path: Path) -> Path | None:
    """Bar chart: accuracy per corruption (mean over severities), one bar group per audited model."""
    from matplotlib.figure import Figure

    reps = {k: a.corruptions for k, a in audits.items() if a.corruptions is not None}
    if not reps:
        return None
    names = next(iter(reps.values())).names
    fig = Figure(figsize=(max(6.0, 0.45 * len(names) + 2), 3.4))
    ax = fig.subplots()
    width = 0.8 / len(reps)
    for i, (label, rep) in enumerate(reps.items()):
        ax.bar([j + i * width for j in range(len(names))], [rep.accuracy(n) for n in names], width=width,
               label=f"{label} (clean {rep.clean_accuracy:.3f}, mean {rep.mean_accuracy:.3f})")
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(names))])
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    ax.set_title("accuracy under MNIST-C corruptions", fontsize=9)
    fig.tight_layout()
    return _png(fig, path)


def _ci(v: float, iv: tuple[float, float] | None) -> str:
    return f"{v:.3f}" if iv is None else f"{v:.3f} [{iv[0]:.3f}, {iv[1]:.3f}]"


def tables(audits: dict[str, ModelAudit]) -> list[Table]:
    """Calibration, OOD, adversarial (static vs adaptive), adversarial ECE, corruption and fooling tables."""
    out = []
    cal = [[lab, name, *(round(v, 4) for v in (r.ece, r.mce, r.classwise_ece, r.adaptive_ece, r.brier, r.nll,
                                                r.accuracy))]
           for lab, a in audits.items() for name, r in a.calibration.items()]
    if cal:
        out.append(Table(["model", "calibrator", "ECE", "MCE", "classwise ECE", "adaptive ECE", "Brier", "NLL",
                          "accuracy"], cal,
                         "calibration on the evaluation half (calibrators fitted on the other half)"))
    ood = []
    for lab, a in audits.items():
        for det, row in a.ood.items():
            for s, v in row.items():
                ood.append([lab, det, s, v] if isinstance(v, str) else
                           [lab, det, s, _ci(v.auroc, v.intervals["auroc"]), _ci(v.fpr95, v.intervals["fpr95"]),
                            round(v.aupr_in, 4), round(v.aupr_out, 4)])
    if ood:
        out.append(Table(["model", "detector", "OOD set", "AUROC [95% bootstrap]", "FPR@95TPR", "AUPR-in",
                          "AUPR-out"], ood, "out-of-distribution detection (in: test images)"))
    adv = []
    for lab, a in audits.items():
        if a.adversarial is None:
            continue
        for r in a.adversarial.rows:
            adv.append([lab, r.detector, r.attack, r.kind, r.eps, "-" if r.auroc is None else round(r.auroc, 4),
                        "-" if r.fpr95 is None else round(r.fpr95, 4), round(r.success_rate, 4),
                        round(r.evasion_rate, 4), "COLLAPSED" if r.collapsed else ""])
    if adv:
        out.append(Table(["model", "detector", "attack", "kind", "eps", "AUROC", "FPR@95TPR", "attack success",
                          "evasion", "verdict"], adv,
                         "adversarial-input detection: static attacks vs the adaptive attack that knows the detector"))
        ece = [[lab, k, round(r.ece, 4), round(r.nll, 4), round(r.accuracy, 4)] for lab, a in audits.items()
               if a.adversarial is not None for k, r in a.adversarial.calibration.items()]
        out.append(Table(["model", "attack@eps", "ECE", "NLL", "accuracy"], ece, "calibration on adversarial examples"))
    cor = [[lab, n, round(a.corruptions.accuracy(n), 4)] for lab, a in audits.items() if a.corruptions is not None
           for n in a.corruptions.names]
    if cor:
        out.append(Table(["model", "corruption", "accuracy"], cor, "MNIST-C corruptions"))
    fool = [[lab, a.fooling.method, round(a.fooling.rate, 4), " ".join(f"{float(v):.2f}" for v in a.fooling.rate_per_class)]
            for lab, a in audits.items() if a.fooling is not None]
    if fool:
        out.append(Table(["model", "method", "fooling rate", "rate per class"], fool,
                         "fooling images (>= 99% confidence from noise)"))
    return out


def _pct(band: tuple[float, float] | None) -> tuple[float, float] | None:
    return None if band is None else (round(100 * band[0], 2), round(100 * band[1], 2))


def _mean_accuracy_band(accuracies: list[float], n: int) -> tuple[float, float]:
    """A conservative 95% interval of the mean of accuracies measured on the same ``n`` images: the standard
    error of each is ``sqrt(p (1 - p) / n)`` and, the images being shared, the mean's is at most their mean."""
    mean = sum(accuracies) / len(accuracies)
    se = sum(math.sqrt(p * (1 - p) / n) for p in accuracies) / len(accuracies)
    return max(0.0, mean - 1.96 * se), min(1.0, mean + 1.96 * se)


def findings(a: ModelAudit) -> list[Finding]:
    """The headline figures of the main model (see the module docstring), each with its n and 95% interval."""
    from fortify.stats import proportion_interval

    out = []
    if "uncalibrated" in a.calibration:
        r = a.calibration["uncalibrated"]
        best = min(a.calibration.items(), key=lambda kv: kv[1].ece)
        out.append(Finding("calibration.ece", "Expected calibration error (top-label, 15 bins)", round(100 * r.ece, 2),
                           "%", n=r.n, interval=_pct(r.ece_interval),
                           detail=f"bootstrap interval; best post-hoc: {best[0]} {100 * best[1].ece:.2f}%; NLL "
                                  f"{r.nll:.3f}", higher_is_better=False))
    best_ood = a.best_ood()
    if best_ood is not None:
        det, s, v = best_ood
        out.append(Finding("ood.best_auroc", "Best OOD detector AUROC (worst set)", round(100 * v.auroc, 2), "%",
                           n=v.n_out, interval=(round(100 * v.intervals["auroc"][0], 2),
                                                round(100 * v.intervals["auroc"][1], 2)),
                           detail=f"{det} on {s}; FPR@95TPR {100 * v.fpr95:.1f}%", higher_is_better=True))
    if a.adversarial is not None:
        rows = [r for r in a.adversarial.rows if r.kind == "adaptive" and r.auroc is not None]
        if rows:
            best = max(rows, key=lambda r: r.auroc or 0.0)
            collapsed = a.adversarial.collapsed()
            warn = (f"collapses under the adaptive attack (AUROC < 0.6): {', '.join(collapsed)}" if collapsed else "")
            if best.n_success < MIN_SUCCESS:
                warn = "; ".join(w for w in (warn, f"only {best.n_success} successful adversarial examples: the AUROC "
                                                   "is noisy") if w)
            out.append(Finding("adversarial.adaptive_auroc", f"Best detector AUROC under the adaptive attack, "
                               f"{rows[0].eps:g}", round(100 * (best.auroc or 0.0), 2), "%", n=best.n_success,
                               interval=_pct(best.auroc_interval), detail=f"{best.detector}; FPR@95TPR {100 * (best.fpr95 or 0):.1f}%", warning=warn,
                               higher_is_better=True))
    if a.corruptions is not None:
        out.append(Finding("corruptions.mean_accuracy", "Mean accuracy under MNIST-C corruptions",
                           round(100 * a.corruptions.mean_accuracy, 2), "%", n=a.corruptions.n,
                           interval=_pct(_mean_accuracy_band([a.corruptions.accuracy(c) for c in a.corruptions.names],
                                                             a.corruptions.n)),
                           detail=f"clean {100 * a.corruptions.clean_accuracy:.1f}%; interval conservative (the "
                                  "corruptions share the images)", higher_is_better=True))
    if a.fooling is not None:
        n_fool = int(a.fooling.labels.numel())
        out.append(Finding("fooling.rate", "Fooling images at >= 99% confidence", round(100 * a.fooling.rate, 2), "%",
                           n=n_fool, interval=_pct(proportion_interval(round(a.fooling.rate * n_fool), n_fool)),
                           detail="exact binomial interval", higher_is_better=False))
    return out[:5]


def metrics(audits: dict[str, ModelAudit]) -> dict[str, float]:
    """Numbers for the run store: ``<label>/<name>``."""
    out: dict[str, float] = {}
    for lab, a in audits.items():
        for name, r in a.calibration.items():
            out.update({f"{lab}/{name}/ece": r.ece, f"{lab}/{name}/nll": r.nll, f"{lab}/{name}/brier": r.brier})
        for name, rc in a.risk.items():
            out[f"{lab}/aurc/{name}"] = rc.aurc
        for det, row in a.ood.items():
            for s, v in row.items():
                if not isinstance(v, str):
                    out.update({f"{lab}/ood/{det}/{s}/auroc": v.auroc, f"{lab}/ood/{det}/{s}/fpr95": v.fpr95})
        if a.adversarial is not None:
            for r in a.adversarial.rows:
                if r.auroc is not None:
                    out[f"{lab}/adv/{r.detector}/{r.attack}@{r.eps:g}/auroc"] = r.auroc
        if a.corruptions is not None:
            out[f"{lab}/corruptions/mean_accuracy"] = a.corruptions.mean_accuracy
        if a.fooling is not None:
            out[f"{lab}/fooling/rate"] = a.fooling.rate
    return {k: v for k, v in out.items() if math.isfinite(v)}


def to_doc(audits: dict[str, ModelAudit]) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for lab, a in audits.items():
        doc[lab] = {
            "n_eval": a.n_eval, "notices": a.notices, "seconds": a.seconds,
            "calibration": {k: r.to_dict() for k, r in a.calibration.items()},
            "risk_coverage": {k: rc.to_dict() for k, rc in a.risk.items()},
            "ood": {d: {s: (v if isinstance(v, str) else v.to_dict()) for s, v in row.items()} for d, row in a.ood.items()},
            "adversarial": None if a.adversarial is None else {
                "rows": [r.to_dict() for r in a.adversarial.rows],
                "calibration": {k: r.to_dict() for k, r in a.adversarial.calibration.items()}},
            "corruptions": None if a.corruptions is None else a.corruptions.to_rows(),
            "fooling": None if a.fooling is None else {"rate": a.fooling.rate, "method": a.fooling.method,
                                                       "rate_per_class": [float(v) for v in a.fooling.rate_per_class]},
        }
    return doc


def other_models(ctx: RunContext, sec: AuditConfig) -> dict[str, Any]:
    """The compressed model of the run (when ``compressed`` and the compress stage ran) and ``compare_model``."""
    out: dict[str, Any] = {}
    if sec.compressed:
        from fortify.pipeline.results import CompressResult

        res = ctx.find("compress", CompressResult)
        if res is not None:
            out["compressed"] = res.model
    if sec.compare_model:
        from fortify import models

        out["compare"] = models.load(sec.compare_model, device=ctx.device)  # fortify's own, on the run's device
    return out


@register_stage
class AuditStage:
    """Calibration, selective prediction, OOD and adversarial detection (static + adaptive), corruptions, fooling."""

    name: ClassVar[str] = "audit"
    config_class: ClassVar[type | None] = AuditConfig

    def run(self, ctx: RunContext) -> AuditResult:
        """Audit the model (and the compressed / comparison model), write figures, JSON, metrics and the section."""
        import time

        from fortify.audit.calibration import reliability_diagram
        from fortify.audit.selective import risk_coverage_figure
        from fortify.audit.suite import audit_model

        import dataclasses

        sec: AuditConfig = ctx.config.section(self.name) or AuditConfig()
        sec = dataclasses.replace(sec, seed=int(ctx.config.seed if sec.seed is None else sec.seed))
        model = ctx.require_model()
        test = ctx.test_inputs(sec.n)
        xtr, ytr = ctx.data("train")
        train = (xtr[: sec.n_fit], ytr[: sec.n_fit])
        out = ctx.out_dir("audit")
        t0 = time.perf_counter()
        others = other_models(ctx, sec)
        steps = (1 + len(others)) * (len(sec.sections) + int("ood" in sec.sections or "adversarial" in sec.sections))
        with progress.task("audit", total=steps, unit="steps") as steps_bar:
            def advance(label: str) -> Callable[[str], None]:
                return lambda step: steps_bar.advance(info=f"{label}: {step}")

            audits = {"model": audit_model(model, train, test, sec, label="model", on_section=advance("model"))}
            for label, other in others.items():
                audits[label] = audit_model(other, train, test, sec, label=label, on_section=advance(label))
        seconds = time.perf_counter() - t0
        figures: list[Path] = []
        for label, a in audits.items():
            if "uncalibrated" in a.eval_probs and a.eval_labels is not None:
                others = {k: v for k, v in a.eval_probs.items() if k != "uncalibrated"}
                name = "reliability.png" if label == "model" else f"reliability_{label}.png"
                figures.append(reliability_diagram(a.eval_probs["uncalibrated"], a.eval_labels, out / name,
                                                   n_bins=sec.n_bins, others=others, title=f"{label}: {a.n_eval} "
                                                   "test images"))
        curves = {f"{lab} {k}" if len(audits) > 1 else k: rc for lab, a in audits.items() for k, rc in a.risk.items()}
        if curves:
            figures.append(risk_coverage_figure(curves, out / "risk_coverage.png"))
        bar = corruption_figure(audits, out / "corruptions.png")
        if bar is not None:
            figures.append(bar)
        for f in figures:
            ctx.add_artefact(f"audit_{f.stem}", f, kind="figure")
        ctx.log_metrics({**metrics(audits), "audit_seconds": seconds})
        doc = {"config": {k: v for k, v in vars(sec).items()}, "seconds": seconds, "models": to_doc(audits)}
        path = ctx.add_artefact("audit_json", ctx.write_json(out / "audit.json", doc), kind="report")
        text = (f"Audit of the model{' and of ' + ', '.join(k for k in audits if k != 'model') if len(audits) > 1 else ''}"
                f" on {audits['model'].n_eval} test images (calibrators fitted on {test[0].shape[0] - audits['model'].n_eval}"
                f" others, detectors on {train[0].shape[0]} training images). Definitions: ECE is top-label with 15 "
                "equal-width bins (torchmetrics' CalibrationError); AUROC treats the anomalous inputs as positives; "
                "FPR@95TPR is the fraction of anomalous inputs accepted when 95% of test images are. The adaptive "
                "attack knows the detector (orthogonal PGD on the classifier margin and the detector score); a "
                "detector whose adaptive AUROC falls below 0.6 (over at least 10 successful adversarial examples) is "
                "reported as collapsed.")
        notices = [f"{lab}: {n}" for lab, a in audits.items() for n in a.notices]
        if notices:
            text += " Notices: " + "; ".join(notices)
        rel = [str(f.relative_to(ctx.run_dir)) for f in figures if f.is_relative_to(ctx.run_dir)]
        ctx.add_section(Section("Audit: calibration, detection, corruptions", text=text, tables=tables(audits),
                                figures=rel, findings=findings(audits["model"])))
        for n in notices:
            ctx.print(n)
        return AuditResult(audits=audits, figures=figures, audit_json=path, seconds=seconds)


__all__ = ["AuditConfig", "AuditResult", "AuditStage", "corruption_figure", "findings", "metrics", "tables"]
