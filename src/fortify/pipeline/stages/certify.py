"""``certify`` pipeline stage: certified accuracy and a certified-accuracy-vs-eps curve.

Certifies the first ``n`` test images with a registered certifier (``ibp``: Gowal et al. 2018;
``crown``: Zhang et al. 2018; ``crown-ibp``: Zhang et al. 2020; ``smoothing``: Cohen et al. 2019;
``milp``: exact, Tjeng et al. 2019) under one threat, then draws certified accuracy against the
radius: bound methods are re-run at each radius of the grid (bounds depend on eps) on the images
that can still be certified there (see :meth:`CertifyStage._bound_curve`; the radius 0 point is
the exact clean margin from IBP at eps 0), smoothing reads the whole curve off the
certified radii of one run. Optional ``compare`` methods (e.g. ``ibp`` next to ``crown``) are drawn
on the same figure. Writes ``certify/certification.json`` and ``certify/certified_curve.png``,
logs metrics in the run store and adds a report section.

Recipe section ``certify`` (:class:`CertifyConfig`)::

    certify:
      method: crown          # ibp | crown | crown-ibp | smoothing | milp
      threat: linf:0.1       # smoothing certifies l2 radii: l2:0.5
      n: 100                 # first N test images (null: the whole test split)
      curve_points: 5        # radii from 0 to eps (0: no curve); or curve_eps: [0.02, 0.05, 0.1]
      compare: [ibp]         # other bound methods drawn on the same curve
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from fortify import progress
from fortify.errors import ConfigError, ThreatModelError
from fortify.pipeline.base import RunContext, register_stage
from fortify.pipeline.results import CertifyResult
from fortify.report.findings import accuracy_finding, ratio_finding, threat_label
from fortify.report.sections import Finding, Section, Table
from fortify.threat import ThreatModel


def parse_threats(specs: list[ThreatModel | str] | ThreatModel | str, where: str) -> list[ThreatModel]:
    """Shared with the robustness stage (imported lazily: both stage modules load during
    ``fortify.pipeline``'s import)."""
    from fortify.pipeline.stages.robustness import parse_threats as parse

    return parse(specs, where)


def pct(v: float) -> str:
    """``0.1234`` -> ``"12.34%"``."""
    return f"{100 * v:.2f}%"


#: constructor options of each certifier taken from the section
_OPTIONS: dict[str, tuple[str, ...]] = {
    **{m: ("batch_size",) for m in ("ibp", "crown", "alpha-crown", "crown-ibp")},
    "smoothing": ("sigma", "n0", "samples", "alpha", "seed"), "milp": ("time_limit", "max_binaries"),
}


@dataclass
class CertifyConfig:
    """``certify`` section: method, threat (a :class:`~fortify.threat.ThreatModel`, written
    ``NORM:EPS`` in a recipe), points, curve radii and method options.

    ``curve_eps`` (a list of radii) overrides ``curve_points`` (evenly spaced radii from 0 to the
    threat's eps; for smoothing from 0 to just past the largest certified radius). Smoothing options:
    ``sigma`` (noise level), ``n0`` (selection draws), ``samples`` (estimation draws), ``alpha``
    (failure probability), ``seed``; MILP: ``time_limit`` seconds per image, ``max_binaries`` (refuse
    an image with more unstable ReLUs; null: no limit); bound methods:
    ``batch_size``.
    """

    method: str = "crown"
    threat: ThreatModel = field(default_factory=lambda: ThreatModel("linf", 0.1))
    n: int | None = 100
    curve_points: int = 5
    curve_eps: list[float] | None = None
    compare: list[str] = field(default_factory=list)
    batch_size: int = 256
    sigma: float = 0.25
    n0: int = 100
    samples: int = 1000
    alpha: float = 0.001
    time_limit: float = 30.0
    max_binaries: int | None = 200  # fortify.certify.milp.MAX_BINARIES
    seed: int | None = None

    def __post_init__(self) -> None:
        from fortify.certify.base import CERTIFIERS

        cls = CERTIFIERS.get(self.method)  # UnknownNameError names the allowed methods
        (thr,) = parse_threats([self.threat], "certify.threat")
        self.threat = thr
        norms = getattr(cls, "norms", ())
        if thr.norm not in norms:
            raise ThreatModelError(f"certify method {self.method!r} does not support norm {thr.norm!r}; it supports "
                                   f"{', '.join(norms)}" + (" (e.g. --threat l2:0.5)" if self.method == "smoothing"
                                                            else ""))
        for m in self.compare:
            c = CERTIFIERS.get(m)
            if m in ("smoothing", "milp") or thr.norm not in getattr(c, "norms", ()):
                raise ConfigError(f"certify.compare: {m!r} cannot be compared on {thr.norm}; use bound methods "
                                  "(ibp, crown, crown-ibp)")
        if self.n is not None and self.n < 1:
            raise ConfigError(f"certify.n must be null or an integer >= 1, got {self.n!r}")
        if self.curve_points < 0 or self.curve_points == 1:
            raise ConfigError(f"certify.curve_points must be 0 (no curve) or >= 2, got {self.curve_points!r}")
        if self.curve_eps is not None:
            if not self.curve_eps or any(not math.isfinite(e) or e < 0 for e in self.curve_eps):
                raise ThreatModelError(f"certify.curve_eps must be a non-empty list of finite radii >= 0, got "
                                       f"{self.curve_eps!r}")
            self.curve_eps = sorted(set(float(e) for e in self.curve_eps))
        if self.batch_size < 1 or self.n0 < 1 or self.samples < 1:
            raise ConfigError("certify.batch_size, certify.n0 and certify.samples must be integers >= 1")
        if not (math.isfinite(self.sigma) and self.sigma > 0):
            raise ConfigError(f"certify.sigma must be a number > 0, got {self.sigma!r}")
        if not 0 < self.alpha < 1:
            raise ConfigError(f"certify.alpha must be in (0, 1), got {self.alpha!r}")
        if not (math.isfinite(self.time_limit) and self.time_limit > 0):
            raise ConfigError(f"certify.time_limit must be a number > 0, got {self.time_limit!r}")
        if self.max_binaries is not None and self.max_binaries < 1:
            raise ConfigError(f"certify.max_binaries must be null or an integer >= 1, got {self.max_binaries!r}")
        for m in dict.fromkeys([self.method, *self.compare]):  # the options each certifier will be built with
            try:
                CERTIFIERS.check_kwargs(m, self.options(m))
            except ConfigError as e:
                raise ConfigError(f"certify.method={m}: {e}") from None

    def threat_model(self) -> ThreatModel:
        """The threat (bounds ``(0, 1)``)."""
        return self.threat

    def options(self, method: str | None = None, seed: int = 0) -> dict[str, Any]:
        """Constructor keyword arguments of the certifier ``method`` (default: ``self.method``)."""
        method = method or self.method
        vals = {"batch_size": self.batch_size, "sigma": self.sigma, "n0": self.n0, "samples": self.samples,
                "alpha": self.alpha, "seed": seed if self.seed is None else self.seed, "time_limit": self.time_limit,
                "max_binaries": self.max_binaries}
        rename = {"samples": "n"}
        return {rename.get(k, k): vals[k] for k in _OPTIONS.get(method, ())}


def _radii(sec: CertifyConfig, thr: ThreatModel, cert: Any) -> list[float]:
    """The curve's radii: ``curve_eps``, or ``curve_points`` evenly spaced from 0 to eps (smoothing:
    to just past the largest certified radius, at least ``2 * sigma``)."""
    if sec.curve_eps is not None:
        return list(sec.curve_eps)
    k = sec.curve_points
    if sec.method == "smoothing":
        rad = cert.radius[torch.isfinite(cert.radius)] if cert.radius is not None else torch.zeros(0)
        top = max(float(rad.max()) * 1.05 if rad.numel() else 0.0, 2 * sec.sigma)
        top = max(top, thr.eps)
    else:
        top = thr.eps if thr.eps > 0 else 0.1
    return sorted(set([top * i / (k - 1) for i in range(k)] + ([thr.eps] if sec.method != "smoothing" else [])))


@register_stage
class CertifyStage:
    """Certified accuracy under the configured threat (ibp/crown/smoothing/milp) and its curve vs eps."""

    name: ClassVar[str] = "certify"
    config_class: ClassVar[type | None] = CertifyConfig

    def run(self, ctx: RunContext) -> CertifyResult:
        """Certify the first ``n`` test images, draw the curve, log metrics, artefacts and a section."""
        from fortify.certify import CertifiedCurve, certified_accuracy_curve, certify, plot_certified_curves

        sec: CertifyConfig = ctx.config.section(self.name) or CertifyConfig()
        x, y = ctx.test_inputs(sec.n)
        model = ctx.require_model()
        thr = sec.threat_model()
        out = ctx.out_dir("certify")
        t0 = time.perf_counter()
        cert = certify(model, x, y, thr, sec.method, **sec.options(seed=ctx.config.seed))
        seconds = time.perf_counter() - t0
        metrics: dict[str, Any] = {"certified_accuracy": cert.certified_accuracy, "n": int(x.shape[0]),
                                   "eps": thr.eps, "certify_seconds": seconds}
        if cert.status is not None:
            for s in sorted(set(cert.status)):
                metrics[f"status[{s}]"] = sum(1 for v in cert.status if v == s)
        if sec.method == "smoothing":
            pred = cert.extra["prediction"]
            metrics["abstain_rate"] = float((pred < 0).float().mean())
            metrics["smoothed_accuracy"] = float((pred.to(y.device) == y).float().mean())
            metrics["mean_certified_radius"] = float(cert.radius.double().mean()) if cert.radius is not None else 0.0

        curves: list[Any] = []
        t1 = time.perf_counter()
        if sec.curve_points or sec.curve_eps is not None:
            radii = _radii(sec, thr, cert)
            if sec.method == "smoothing":
                good = cert.extra["prediction"].to(y.device) == y
                assert cert.radius is not None, "randomized smoothing certifies a radius per image"
                rad = cert.radius.to(y.device)
                acc = [float((good & (rad >= r)).float().mean()) for r in radii]
                curves.append(CertifiedCurve("smoothing", thr.norm, radii, acc, int(x.shape[0]), {"sigma": sec.sigma}))
            else:
                curves.append(self._bound_curve(ctx, x, y, thr, sec.method, radii, cert, sec))
                for m in sec.compare:
                    if m != sec.method:
                        curves.append(certified_accuracy_curve(model, x, y, thr.norm, radii, m,
                                                               **sec.options(m, ctx.config.seed)))
        curve_seconds = time.perf_counter() - t1
        figure = None
        if curves:
            figure = plot_certified_curves(curves, out / "certified_curve.png",
                                           title=f"certified accuracy vs {'radius' if sec.method == 'smoothing' else 'eps'}"
                                                 f" ({x.shape[0]} test images)")
            ctx.add_artefact("certified_curve", figure, kind="figure")
        metrics["curve_seconds"] = curve_seconds
        doc = {"method": sec.method, "threat": str(thr), "n": int(x.shape[0]),
               "certified_accuracy": cert.certified_accuracy, "options": sec.options(seed=ctx.config.seed),
               "certified": cert.certified.tolist(), "lower_margin": cert.lower_margin.tolist(),
               "status": cert.status, "radius": cert.radius.tolist() if cert.radius is not None else None,
               "curves": [c.as_dict() for c in curves], "seconds": seconds, "curve_seconds": curve_seconds}
        doc_path = ctx.add_artefact("certification_json", ctx.write_json(out / "certification.json", doc),
                                    kind="report")
        ctx.log_metrics(metrics)
        ctx.add_section(self.section(sec, thr, cert, curves, metrics, figure, ctx.run_dir))
        ctx.print(f"certified accuracy ({sec.method}, {thr}, {x.shape[0]} images): {pct(cert.certified_accuracy)}")
        return CertifyResult(certificate=cert, curves=curves, threat=thr, method=sec.method, n=int(x.shape[0]),
                             figure=figure, certification_json=doc_path)

    @staticmethod
    def _bound_curve(ctx: RunContext, x: torch.Tensor, y: torch.Tensor, thr: ThreatModel, method: str,
                     radii: list[float], cert: Any, sec: CertifyConfig) -> Any:
        """Certified accuracy of a bound method at each radius (ascending), with sound pruning.

        An image certified at the threat's eps is robust at every smaller radius (the threat sets are
        nested), and one the method could not certify at a smaller radius is not re-tried at a larger
        one (reported as not certified: still a lower bound). So each radius only certifies the images
        certified at the previous radius and not already covered by the certificate at eps; radius 0
        uses the exact clean margins (IBP at eps 0). Returns a :class:`CertifiedCurve`.
        """
        from fortify.certify import CertifiedCurve, certify

        model = ctx.require_model()
        at_eps = cert.certified.detach().cpu().bool()
        n = int(x.shape[0])
        prev = torch.ones(n, dtype=torch.bool)
        acc: dict[float, float] = {}
        with progress.task(f"certified curve {method}", total=len(radii), unit="radii") as bar:
            for r in sorted(radii):
                bar.update(info=f"eps {r:.3g}")
                if r == thr.eps:
                    cur = at_eps
                else:
                    known = at_eps if r < thr.eps else torch.zeros(n, dtype=torch.bool)
                    cand = prev & ~known
                    cur = known.clone()
                    if bool(cand.any()):
                        idx = cand.nonzero().squeeze(1)
                        xs, ys = x[idx.to(x.device)], y[idx.to(y.device)]
                        if r == 0 and method != "milp":
                            c = certify(model, xs, ys, thr.with_eps(0.0), "ibp", batch_size=sec.batch_size)
                        else:
                            c = certify(model, xs, ys, thr.with_eps(r), method, **sec.options(method))
                        cur[idx] = c.certified.detach().cpu().bool()
                acc[r] = float(cur.float().mean())
                prev = cur
                bar.advance()
        return CertifiedCurve(method, thr.norm, list(radii), [acc[r] for r in radii], n, {"pruned": True})

    @staticmethod
    def section(sec: CertifyConfig, thr: ThreatModel, cert: Any, curves: list[Any], metrics: dict[str, Any],
                figure: Path | None, run_dir: Path) -> Section:
        """The report section: headline table, curve table, figure."""
        head = [[sec.method, str(thr), metrics["n"], cert.certified_accuracy, round(metrics["certify_seconds"], 2)]]
        tables = [Table(["method", "threat", "images", "certified accuracy", "seconds"], head, "certified accuracy")]
        extra = [[k, v] for k, v in metrics.items() if k.startswith("status[") or k in (
            "abstain_rate", "smoothed_accuracy", "mean_certified_radius")]
        if extra:
            tables.append(Table(["metric", "value"], extra, f"{sec.method} details"))
        if curves:
            radii = curves[0].eps
            tables.append(Table(["radius"] + [c.method for c in curves],
                                [[r] + [c.accuracy[i] for c in curves] for i, r in enumerate(radii)],
                                "certified accuracy vs radius"))
        what = ("a randomized-smoothing certificate (Cohen et al. 2019) holds for the smoothed classifier with "
                f"probability >= 1 - alpha (alpha={sec.alpha:g}, sigma={sec.sigma:g})" if sec.method == "smoothing"
                else "a certified image is provably classified correctly for every input in the threat set")
        text = (f"Certification with {sec.method} under {thr} on the first {metrics['n']} test images: "
                f"{pct(cert.certified_accuracy)} certified; {what}. Certified accuracy is a lower bound of the "
                "robust accuracy any attack can reach.")
        figs = [str(figure.relative_to(run_dir))] if figure is not None and figure.is_relative_to(run_dir) else []
        return Section("Certification", text=text, tables=tables, figures=figs,
                       findings=CertifyStage.findings(sec, thr, cert, metrics))

    @staticmethod
    def findings(sec: CertifyConfig, thr: ThreatModel, cert: Any, metrics: dict[str, Any]) -> list[Finding]:
        """Certified accuracy at the threat's radius (percent, exact binomial 95% interval over the
        certified images; smoothing's holds with probability >= 1 - alpha on top) and, for smoothing, the
        mean certified radius; images the method gave up on (MILP time-outs) are a warning."""
        n = int(metrics["n"])
        gave_up = sum(int(v) for k, v in metrics.items() if k.startswith("status[") and
                      any(w in k for w in ("timeout", "inconclusive", "skipped", "refused", "error")))
        warn = f"{gave_up} of {n} images not decided by {sec.method} (counted as not certified)" if gave_up else ""
        what = (f"randomized smoothing, sigma {sec.sigma:g}, alpha {sec.alpha:g}" if sec.method == "smoothing"
                else f"{sec.method} bounds (sound: a lower bound of the robust accuracy)")
        out = [accuracy_finding(f"certified_accuracy.{thr}", f"Certified accuracy, {threat_label(thr)}",
                                cert.certified_accuracy, n, detail=f"{what}, first {n} test images", warning=warn)]
        if sec.method == "smoothing" and "mean_certified_radius" in metrics:
            out.append(ratio_finding("certified_radius.mean", f"Mean certified {thr.norm} radius",
                                     metrics["mean_certified_radius"], unit=thr.norm,
                                     detail=f"smoothed classifier, {n} images (0 for abstained or wrong images)"))
        return out
