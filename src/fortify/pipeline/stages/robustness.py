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

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from fortify.errors import ConfigError, InputError, ThreatModelError, UnknownNameError
from fortify.stats import rate_text
from fortify.pipeline.base import RunContext, register_stage
from fortify.report.sections import Section, Table
from fortify.threat import ThreatModel
from fortify.validation import check_images, check_labels, check_logits


def parse_threats(specs: list[str] | str, where: str) -> list[ThreatModel]:
    """``["linf:0.3", "l2:2"]`` -> ThreatModels; ThreatModelError naming ``where`` on a bad entry."""
    items = [specs] if isinstance(specs, str) else list(specs)
    if not items:
        raise ThreatModelError(f"{where} must list at least one threat like linf:0.3")
    out: list[ThreatModel] = []
    for s in items:
        if not isinstance(s, str):
            raise ThreatModelError(f"{where}: threat must look like NORM:EPS (e.g. linf:0.3), got {s!r}")
        try:
            t = ThreatModel.parse(s)
        except ThreatModelError as e:
            raise ThreatModelError(f"{where}: {e}") from None
        if not math.isfinite(t.eps):
            raise ThreatModelError(f"{where}: eps must be finite, got {s!r}")
        if any(str(t) == str(o) for o in out):
            raise ThreatModelError(f"{where}: threat {s!r} is listed twice")
        out.append(t)
    return out


@dataclass
class RobustnessConfig:
    """``robustness`` section: threats, preset (or a custom attack list), points, budget, curves.

    ``n``: the first ``n`` test images are attacked (null: all). ``curve_points``: images used for
    the accuracy-vs-eps curves (0 disables them). ``seed`` null: the run's seed. ``state``: path of
    the resumable cascade state (null: ``<run folder>/robustness/state.safetensors``); a rerun with
    the same state file skips finished attacks.
    """

    threats: list[str] | str = field(default_factory=lambda: ["linf:0.3"])
    preset: str = "fast"
    attacks: list[str] | None = None
    n: int | None = 500
    budget: float = 1.0
    batch_size: int = 256
    sanity: bool = True
    curve_points: int = 100
    seed: int | None = None
    state: str | None = None

    def __post_init__(self) -> None:
        from fortify.attacks import ATTACKS
        from fortify.evaluate.presets import PRESETS

        if isinstance(self.threats, str):
            self.threats = [self.threats]
        threats = parse_threats(self.threats, "robustness.threats")
        self.threats = [str(t) for t in threats]
        if self.preset not in PRESETS:
            raise UnknownNameError(f"unknown preset {self.preset!r}; allowed: {', '.join(PRESETS)}")
        if self.attacks is not None:
            if not self.attacks:
                raise ConfigError("robustness.attacks must be null or a non-empty list of attack names")
            if len(set(self.attacks)) != len(self.attacks):
                raise ConfigError(f"robustness.attacks lists an attack twice: {self.attacks}")
            for a in self.attacks:
                norms = getattr(ATTACKS.get(a), "norms", ())  # UnknownNameError names the allowed attacks
                for t in threats:
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
        """The threats as :class:`ThreatModel` objects (bounds ``(0, 1)``)."""
        return parse_threats(self.threats, "robustness.threats")


def eval_inputs(ctx: RunContext, n: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` test images ``(n, C, H, W)`` and labels ``(n,)``, validated against the model.

    Raises InputError for NaN / out-of-range inputs, inputs of the wrong shape for the model, and
    labels the model cannot output (e.g. a 5-class model on a 10-class dataset).
    """
    if ctx.model is None:
        raise ConfigError(f"the {ctx.stage or 'this'} stage needs a model: put 'train' or 'load' before it in 'stages'")
    name = ctx.config.data.name
    x, y = ctx.data("test")
    if n is not None:
        x, y = x[:n], y[:n]
    check_images(x, name=f"{name} test inputs")
    expected = ctx.model_meta.get("in_shape")
    if expected is not None and tuple(x.shape[1:]) != tuple(expected):
        raise InputError(f"dataset {name!r} has inputs of shape {tuple(x.shape[1:])} but the model expects "
                         f"{tuple(expected)}")
    try:
        with torch.no_grad():
            was = {m: m.training for m in ctx.model.modules()}
            ctx.model.eval()
            try:
                logits = check_logits(ctx.model(x[:2]), min(2, x.shape[0]))
            finally:
                for m, f in was.items():
                    m.training = f
    except RuntimeError as e:
        raise InputError(f"the model cannot take inputs of shape {tuple(x.shape[1:])} from dataset {name!r}: "
                         f"{str(e).splitlines()[0]}") from None
    check_labels(y, x.shape[0], int(logits.shape[1]), name=f"{name} test labels")
    return x, y


def write_json(path: Path, doc: dict[str, Any]) -> Path:
    """Write ``doc`` (NaN/inf -> null) as indented JSON atomically."""
    from fortify.io import write_atomic
    from fortify.report.json_report import jsonable

    return write_atomic(path, json.dumps(jsonable(doc), indent=2, allow_nan=False) + "\n")


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

    def run(self, ctx: RunContext) -> None:
        """Attack the first ``n`` test images, draw the curves, log metrics, artefacts and a section."""
        from fortify.evaluate import AttackSpec, plot_curves, robust_accuracy, robustness_curve

        sec: RobustnessConfig = ctx.config.section(self.name) or RobustnessConfig()
        x, y = eval_inputs(ctx, sec.n)
        threats = sec.threat_models()
        out = ctx.path("robustness")
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            from fortify.errors import OutputError

            raise OutputError(f"cannot create {str(out)!r}: {e.strerror or e}") from None
        state = Path(sec.state) if sec.state else out / "state.safetensors"
        preset: Any = sec.preset if sec.attacks is None else [AttackSpec(a, a) for a in sec.attacks]
        seed = ctx.config.seed if sec.seed is None else sec.seed
        report = robust_accuracy(ctx.model, x, y, threats, preset=preset, budget=sec.budget,
                                 batch_size=sec.batch_size, state_path=str(state), seed=seed, sanity=sec.sanity,
                                 progress=not ctx.quiet)
        ctx.add_artefact("robustness_state", state, kind="state")
        curves = []
        t0 = time.perf_counter()
        if sec.curve_points:
            k = min(sec.curve_points, x.shape[0])
            for norm in dict.fromkeys(t.norm for t in threats):
                curves.append(robustness_curve(ctx.model, x[:k], y[:k], norm, None, budget=sec.budget,
                                               batch_size=sec.batch_size, seed=seed, label=norm))
        curve_seconds = time.perf_counter() - t0
        figure = None
        if curves:
            figure = plot_curves(curves, out / "robustness_curves.png",
                                 title=f"robustness curves ({curves[0].distances.numel()} test images)")
            ctx.add_artefact("robustness_curves", figure, kind="figure")
        doc = {**report.to_dict(), "n": int(x.shape[0]), "preset": sec.preset if sec.attacks is None else None,
               "attacks": sec.attacks, "curves": [c.to_dict() for c in curves], "curve_seconds": curve_seconds}
        ctx.add_artefact("evaluation_json", write_json(out / "evaluation.json", doc), kind="report")

        metrics: dict[str, Any] = {"clean_accuracy": report.clean_accuracy, "robust_accuracy": report.robust_accuracy,
                                   "n": int(x.shape[0]), "flags_fired": len(report.fired),
                                   "cascade_seconds": report.seconds, "curve_seconds": curve_seconds}
        for t in report.threats:
            metrics[f"robust_accuracy[{t.threat}]"] = t.robust_accuracy
        ctx.log_metrics(metrics)
        ctx.state[self.name] = report
        ctx.add_section(self.section(report, sec, int(x.shape[0]), figure, ctx.run_dir))
        n = int(x.shape[0])
        what = ", ".join(f"{t.threat} {rate_text(t.robust_accuracy, n)}" for t in report.threats)
        union = f", union {rate_text(report.robust_accuracy, n)}" if len(report.threats) > 1 else ""
        fired = f"; sanity flags fired: {', '.join(report.fired)}" if report.fired else "; no sanity flag fired"
        ctx.print(f"robust accuracy ({sec.preset if sec.attacks is None else 'custom cascade'}): "
                  f"{what}{union} (clean {pct(report.clean_accuracy)}){fired}")
        caveat = preset_caveat(sec)
        if caveat:
            ctx.print(f"  note: {caveat}")

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
        return Section("Robustness (attacks)", text=text, tables=tables, figures=figs)
