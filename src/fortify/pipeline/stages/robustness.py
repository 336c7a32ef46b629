"""``robustness`` pipeline stage: cascade robust accuracy, sanity flags and robustness curves.

Runs :func:`fortify.evaluate.robust_accuracy` (the AutoAttack-style cascade of Croce & Hein 2020,
"Reliable evaluation of adversarial robustness with an ensemble of diverse parameter-free
attacks") on the first ``n`` test images, one :func:`fortify.evaluate.robustness_curve` per norm,
and records everything: metrics in the run store, ``robustness/evaluation.json``,
``robustness/robustness_curves.png``, the resumable cascade state, and a report section (per-threat
robust accuracy and their union, the per-attack contribution table, the sanity flags with their
explanations, the curves).

Recipe section ``robustness`` (:class:`RobustnessConfig`)::

    robustness:
      threats: [linf:0.3]     # one or more NORM:EPS; several also give their union
      preset: fast            # fast | standard | thorough
      attacks: null           # or a list of registered attack names: a custom cascade (replaces preset)
      n: 500                  # first N test images (null: the whole test split)
      budget: 1.0             # multiplies every attack's iterations / queries
      curve_points: 100       # images for the robustness curves (0: no curves)
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Sequence

from fortify.errors import ConfigError, ThreatModelError, UnknownNameError
from fortify.stats import rate_text
from fortify.pipeline.base import RunContext, register_stage
from fortify.pipeline.results import RobustnessResult
from fortify.report.findings import accuracy_finding, threat_label
from fortify.report.sections import Finding, Section, Table
from fortify.threat import ThreatModel


def parse_threats(specs: Sequence[ThreatModel | str] | ThreatModel | str, where: str) -> list[ThreatModel]:
    """``["linf:0.3", "l2:2"]`` (strings, mappings or ThreatModels) -> ThreatModels; ThreatModelError
    naming ``where`` (``where[i]`` for an entry) on a bad or repeated entry or an empty list."""
    items = [specs] if isinstance(specs, (str, ThreatModel)) else list(specs)
    if not items:
        raise ThreatModelError(f"{where} must list at least one threat like linf:0.3")
    out: list[ThreatModel] = []
    for i, s in enumerate(items):
        t = ThreatModel.coerce(s, where=f"{where}[{i}]" if len(items) > 1 else where)
        if not math.isfinite(t.eps):
            raise ThreatModelError(f"{where}: eps must be finite, got {s!r}")
        if any(t == o for o in out):
            raise ThreatModelError(f"{where}: threat {t} is listed twice")
        out.append(t)
    return out


@dataclass
class RobustnessConfig:
    """``robustness`` section: threats, preset (or a custom attack list), points, budget, curves.

    ``threats``: :class:`~fortify.threat.ThreatModel` objects (written ``NORM:EPS`` in a recipe).
    ``n``: the first ``n`` test images are attacked (null: all). ``curve_points``: images used for
    the accuracy-vs-eps curves (0 disables them). ``seed`` null: the run's seed. ``state``: path of
    the resumable cascade state (null: ``<run folder>/robustness/state.safetensors``); a rerun with
    the same state file skips finished attacks. ``transfer``: the transfer attack from a surrogate
    even with ``sanity: false`` (set for ONNX black-box targets).
    """

    threats: list[ThreatModel] = field(default_factory=lambda: [ThreatModel("linf", 0.3)])
    preset: str = "fast"
    attacks: list[str] | None = None
    n: int | None = 500
    budget: float = 1.0
    batch_size: int = 256
    sanity: bool = True
    transfer: bool = False
    curve_points: int = 100
    seed: int | None = None
    state: str | None = None

    def __post_init__(self) -> None:
        from fortify.attacks import ATTACKS
        from fortify.evaluate.presets import PRESETS

        self.threats = parse_threats(self.threats, "robustness.threats")
        if self.preset not in PRESETS:
            raise UnknownNameError(f"unknown preset {self.preset!r}; allowed: {', '.join(PRESETS)}")
        if self.attacks is not None:
            if not self.attacks:
                raise ConfigError("robustness.attacks must be null or a non-empty list of attack names")
            if len(set(self.attacks)) != len(self.attacks):
                raise ConfigError(f"robustness.attacks lists an attack twice: {self.attacks}")
            for a in self.attacks:
                norms = getattr(ATTACKS.get(a), "norms", ())  # UnknownNameError names the allowed attacks
                for t in self.threats:
                    if t.norm not in norms:
                        raise ThreatModelError(f"attack {a!r} does not support norm {t.norm!r} (threat {t}); it "
                                               f"supports {', '.join(norms)}")
        if self.n is not None and self.n < 1:
            raise ConfigError(f"robustness.n must be null or an integer >= 1, got {self.n!r}")
        if not (math.isfinite(self.budget) and self.budget > 0):
            raise ConfigError(f"robustness.budget must be a number > 0, got {self.budget!r}")
        if self.batch_size < 1:
            raise ConfigError(f"robustness.batch_size must be an integer >= 1, got {self.batch_size!r}")
        if self.curve_points < 0:
            raise ConfigError(f"robustness.curve_points must be an integer >= 0, got {self.curve_points!r}")

    def threat_models(self) -> list[ThreatModel]:
        """The threats (bounds ``(0, 1)``)."""
        return list(self.threats)


def pct(v: float) -> str:
    """``0.1234`` -> ``"12.34%"``."""
    return f"{100 * v:.2f}%"


def preset_caveat(sec: "RobustnessConfig") -> str | None:
    """The caveat to print next to a figure measured with a preset weaker than AutoAttack (None otherwise)."""
    from fortify.evaluate.presets import PRESET_CAVEATS

    return PRESET_CAVEATS.get(sec.preset) if sec.attacks is None else None


@register_stage
class RobustnessStage:
    """Robust accuracy under the configured threats (attack cascade), sanity flags and curves."""

    name: ClassVar[str] = "robustness"
    config_class: ClassVar[type | None] = RobustnessConfig

    def run(self, ctx: RunContext) -> RobustnessResult:
        """Attack the first ``n`` test images, draw the curves, log metrics, artefacts and a section."""
        from fortify.evaluate import AttackSpec, plot_curves, robust_accuracy, robustness_curve

        sec: RobustnessConfig = ctx.config.section(self.name) or RobustnessConfig()
        x, y = ctx.test_inputs(sec.n)
        model = ctx.require_model()
        threats = sec.threat_models()
        out = ctx.out_dir("robustness")
        state = Path(sec.state) if sec.state else out / "state.safetensors"
        preset: Any = sec.preset if sec.attacks is None else [AttackSpec(a, a) for a in sec.attacks]
        seed = ctx.config.seed if sec.seed is None else sec.seed
        report = robust_accuracy(model, x, y, threats, preset=preset, budget=sec.budget,
                                 batch_size=sec.batch_size, state_path=str(state), seed=seed, sanity=sec.sanity,
                                 transfer=sec.transfer,
                                 progress=not ctx.quiet)
        ctx.add_artefact("robustness_state", state, kind="state")
        curves = []
        t0 = time.perf_counter()
        if sec.curve_points:
            k = min(sec.curve_points, x.shape[0])
            for norm in dict.fromkeys(t.norm for t in threats):
                curves.append(robustness_curve(model, x[:k], y[:k], norm, None, budget=sec.budget,
                                               batch_size=sec.batch_size, seed=seed, label=norm))
        curve_seconds = time.perf_counter() - t0
        figure = None
        if curves:
            figure = plot_curves(curves, out / "robustness_curves.png",
                                 title=f"robustness curves ({curves[0].distances.numel()} test images)")
            ctx.add_artefact("robustness_curves", figure, kind="figure")
        doc = {**report.to_dict(), "n": int(x.shape[0]), "preset": sec.preset if sec.attacks is None else None,
               "attacks": sec.attacks, "curves": [c.to_dict() for c in curves], "curve_seconds": curve_seconds}
        doc_path = ctx.add_artefact("evaluation_json", ctx.write_json(out / "evaluation.json", doc), kind="report")

        metrics: dict[str, Any] = {"clean_accuracy": report.clean_accuracy, "robust_accuracy": report.robust_accuracy,
                                   "n": int(x.shape[0]), "flags_fired": len(report.fired),
                                   "cascade_seconds": report.seconds, "curve_seconds": curve_seconds}
        for t in report.threats:
            metrics[f"robust_accuracy[{t.threat}]"] = t.robust_accuracy
        ctx.log_metrics(metrics)
        n = int(x.shape[0])
        ctx.add_section(self.section(report, sec, n, figure, ctx.run_dir))
        what = ", ".join(f"{t.threat} {rate_text(t.robust_accuracy, n)}" for t in report.threats)
        union = f", union {rate_text(report.robust_accuracy, n)}" if len(report.threats) > 1 else ""
        fired = f"; sanity flags fired: {', '.join(report.fired)}" if report.fired else "; no sanity flag fired"
        ctx.print(f"robust accuracy ({sec.preset if sec.attacks is None else 'custom cascade'}): "
                  f"{what}{union} (clean {pct(report.clean_accuracy)}){fired}")
        caveat = preset_caveat(sec)
        if caveat:
            ctx.print(f"  note: {caveat}")
        return RobustnessResult(report=report, n=n, preset=sec.preset if sec.attacks is None else None,
                                attacks=sec.attacks, curves=curves, figure=figure, evaluation_json=doc_path)

    @staticmethod
    def section(report: Any, sec: RobustnessConfig, n: int, figure: Path | None, run_dir: Path) -> Section:
        """The report section: summary, contribution tables, sanity flags, curves figure."""
        rows: list[list[Any]] = [[t.threat, t.robust_accuracy, int(t.robust.sum())] for t in report.threats]
        if len(report.threats) > 1:
            rows.append(["union (worst case per image)", report.robust_accuracy, int(report.union_robust.sum())])
        tables = [Table(["threat", "robust accuracy", "robust images"], rows, "robust accuracy")]
        for t in report.threats:
            tables.append(Table(
                ["attack", "access", "attacked", "broken", "robust after", "seconds", "grad evals", "queries"],
                [[r.label, r.access, r.attacked, r.broken, r.robust_after, round(r.seconds, 3), r.grad_evals,
                  r.queries] for r in t.rows], f"attack contributions: {t.threat}"))
            if t.skipped:
                tables.append(Table(["attack", "reason skipped"], [list(s) for s in t.skipped], f"skipped: {t.threat}"))
        tables.append(Table(["check", "status", "explanation"],
                            [[f.name, "FIRED" if f.fired else ("ok" if f.ran else "not run"),
                              f.explanation if f.fired or f.ran else str(f.evidence.get("reason", ""))]
                             for f in report.flags], "sanity checks"))
        how = f"preset '{sec.preset}'" if sec.attacks is None else f"custom cascade {', '.join(sec.attacks)}"
        text = (f"Attack cascade ({how}, budget x{sec.budget:g}) on the first {n} test images: every attack runs only "
                f"on the images still robust and the per-image worst case is kept. Clean accuracy "
                f"{pct(report.clean_accuracy)}, robust accuracy {pct(report.robust_accuracy)}"
                + (" under every threat at once (union)" if len(report.threats) > 1 else "")
                + (f". Sanity flags fired: {', '.join(report.fired)} (the evaluation may be unreliable; see the "
                   "explanations)." if report.fired else ". No sanity flag fired.")
                + (f" Wrappers used by the attacks: {', '.join(report.wrappers)}." if report.wrappers else "")
                + (f" Caveat: {preset_caveat(sec)}." if preset_caveat(sec) else ""))
        figs = [str(figure.relative_to(run_dir))] if figure is not None and figure.is_relative_to(run_dir) else []
        return Section("Robustness (attacks)", text=text, tables=tables, figures=figs,
                       findings=RobustnessStage.findings(report, sec, n, how))

    @staticmethod
    def findings(report: Any, sec: RobustnessConfig, n: int, how: str) -> list[Finding]:
        """Robust accuracy per threat and their union (percent, exact binomial 95% interval over the ``n``
        attacked images); a fired sanity flag is a warning on every figure (the evaluation may be unreliable)."""
        warn = (f"sanity flags fired: {', '.join(report.fired)}; the attacks may be masked and the figure an "
                "overestimate") if report.fired else ""
        caveat = preset_caveat(sec)
        detail = f"attack cascade, {how}, budget x{sec.budget:g}, first {n} test images" + (
            f"; {caveat}" if caveat else "")
        out = [accuracy_finding(f"robust_accuracy.{t.threat}", f"Robust accuracy, {threat_label(t.threat)}",
                                t.robust_accuracy, n, detail=detail, warning=warn) for t in report.threats]
        if len(report.threats) > 1:
            out.append(accuracy_finding("robust_accuracy.union", "Robust accuracy, union of all threats",
                                        report.robust_accuracy, n, detail=detail + "; worst case per image",
                                        warning=warn))
        return out
