"""One audit of one model: the sections of ``fortify audit`` / the ``audit`` stage, as plain library calls.

``audit_model(model, train, test, options) -> ModelAudit`` runs the selected sections on the in-distribution data
(``train = (x, y)`` fits the detectors, ``test = (x, y)`` is split in two halves: the first fits the calibrators,
the second is where every figure is measured):

* ``calibration``: :func:`fortify.audit.calibration.calibration_report` of the raw model and of each calibrator of
  :data:`fortify.audit.calibrators.CALIBRATORS` fitted on the first half; risk-coverage of MSP and calibrated MSP
  (:mod:`fortify.audit.selective`).
* ``ood``: every detector of ``detectors`` fitted on ``train``, scored on the second half (in) against each OOD set
  of :mod:`fortify.audit.ood_sets` (out): AUROC, AUPR, FPR@95TPR with bootstrap intervals. A set whose source is not
  installed is skipped with a one-line notice naming the package.
* ``adversarial``: :func:`fortify.audit.adversarial.adversarial_detection`, static and adaptive, and the ECE on
  adversarial examples.
* ``corruptions``: :func:`fortify.audit.corruptions.corruption_table` (MNIST-C); ``fooling``:
  :func:`fortify.audit.fooling.fooling_images` (the fooling rate; the images join the OOD sets when ``ood`` runs).

Nothing here prints or writes files; the model is never mutated (every callee freezes it). A detector or OOD set
that cannot run on this model (e.g. a feature detector on an ONNX model) is recorded as a notice, not an error; on a
gradient-free (ONNX Runtime) model the adversarial section is skipped and fooling images use the evolutionary search.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from fortify.audit.calibration import CalibrationReport, calibration_report, predict_logits
from fortify.audit.selective import RiskCoverage, risk_coverage
from fortify.errors import ConfigError, DatasetUnavailableError, FortifyError

SECTIONS = ("calibration", "ood", "adversarial", "corruptions", "fooling")


@dataclass
class AuditOptions:
    """What to run and how much of it (the ``audit`` recipe section carries the same fields)."""

    sections: list[str] = field(default_factory=lambda: list(SECTIONS))
    calibrators: list[str] = field(default_factory=lambda: ["temperature"])
    n_bins: int = 15
    detectors: list[str] = field(default_factory=lambda: ["msp", "energy", "mahalanobis", "knn"])
    ood_sets: list[str] = field(default_factory=lambda: ["fashion-mnist", "gaussian-noise", "uniform-noise"])
    n_ood: int = 200
    attacks: list[str] = field(default_factory=lambda: ["fgsm", "pgd"])
    eps: list[float] = field(default_factory=lambda: [0.1])
    norm: str = "linf"
    n_adv: int = 100
    adaptive: bool = True
    adaptive_steps: int = 20
    pgd_steps: int = 10
    corruptions: list[str] | None = None
    severities: int | list[int] | None = None
    n_corrupt: int = 200
    fooling_per_class: int = 2
    fooling_steps: int = 50
    bootstrap: int = 200
    seed: int = 0
    batch_size: int = 256

    def __post_init__(self) -> None:
        bad = [s for s in self.sections if s not in SECTIONS]
        if bad:
            raise ConfigError(f"unknown audit section(s) {', '.join(map(repr, bad))}; allowed: {', '.join(SECTIONS)}")
        from fortify.audit.calibrators import CALIBRATORS
        from fortify.audit.detect import DETECTORS

        for c in self.calibrators:
            CALIBRATORS.get(c)
        for d in self.detectors:
            DETECTORS.get(d)
        from fortify.audit.ood_sets import OOD_SETS

        for o in self.ood_sets:
            OOD_SETS.get(o)
        if self.norm not in ("linf", "l2"):
            raise ConfigError(f"audit.norm must be linf or l2, got {self.norm!r}")
        for name in ("n_bins", "n_ood", "n_adv", "adaptive_steps", "pgd_steps", "n_corrupt", "fooling_steps",
                     "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"audit.{name} must be a positive integer, got {v!r}")
        if any(not (isinstance(e, (int, float)) and math.isfinite(e) and e > 0) for e in self.eps):
            raise ConfigError(f"audit.eps must list radii > 0, got {self.eps!r}")


@dataclass
class ModelAudit:
    """Everything measured on one model. ``ood[detector][set]`` is a DetectionScore (or a notice string)."""

    label: str
    n_eval: int
    calibration: dict[str, CalibrationReport] = field(default_factory=dict)
    eval_probs: dict[str, torch.Tensor] = field(default_factory=dict)
    eval_labels: torch.Tensor | None = None
    risk: dict[str, RiskCoverage] = field(default_factory=dict)
    ood: dict[str, dict[str, Any]] = field(default_factory=dict)
    adversarial: Any = None
    corruptions: Any = None
    fooling: Any = None
    notices: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def best_ood(self) -> tuple[str, str, Any] | None:
        """``(detector, set, DetectionScore)`` with the highest mean AUROC over sets, on its worst set."""
        best: tuple[float, str, str, Any] | None = None
        for det, row in self.ood.items():
            scores = {s: v for s, v in row.items() if not isinstance(v, str)}
            if not scores:
                continue
            mean = sum(v.auroc for v in scores.values()) / len(scores)
            worst = min(scores, key=lambda s: scores[s].auroc)
            if best is None or mean > best[0]:
                best = (mean, det, worst, scores[worst])
        return None if best is None else best[1:]


def _timed(audit: ModelAudit, name: str, fn: Callable[[], Any], on_section: Callable[[str], None] | None = None) -> Any:
    import time

    t0 = time.perf_counter()
    try:
        return fn()
    finally:
        audit.seconds[name] = audit.seconds.get(name, 0.0) + time.perf_counter() - t0
        if on_section is not None:
            on_section(name)


def _calibration(model: nn.Module, audit: ModelAudit, xa: torch.Tensor, ya: torch.Tensor, xb: torch.Tensor,
                 yb: torch.Tensor, opt: AuditOptions) -> None:
    from fortify.audit.calibrators import calibrate

    probs = predict_logits(model, xb, opt.batch_size).softmax(1)
    audit.eval_probs["uncalibrated"] = probs
    audit.calibration["uncalibrated"] = calibration_report(probs, yb, opt.n_bins)
    correct = probs.argmax(1) == yb
    audit.risk["MSP"] = risk_coverage(probs.max(1).values.double(), correct)
    for name in opt.calibrators:
        try:
            wrapped = calibrate(model, xa, ya, name, batch_size=opt.batch_size)
            p = predict_logits(wrapped, xb, opt.batch_size).softmax(1)
        except FortifyError as e:
            audit.notices.append(f"calibrator {name}: {e}")
            continue
        audit.eval_probs[name] = p
        audit.calibration[name] = calibration_report(p, yb, opt.n_bins)
        audit.risk[f"{name} MSP"] = risk_coverage(p.max(1).values.double(), p.argmax(1) == yb)


def gradient_free(model: nn.Module) -> bool:
    """Whether ``model`` has no input gradients (an ONNX Runtime model, e.g. the int8 model of ``compress``)."""
    return bool(getattr(model, "gradient_free", False)) or type(model).__name__ == "OnnxModule"


def _fit_detectors(model: nn.Module, audit: ModelAudit, x: torch.Tensor, y: torch.Tensor,
                   opt: AuditOptions) -> dict[str, Any]:
    from fortify.audit.detect import DETECTORS

    fitted = {}
    for name in opt.detectors:
        det = DETECTORS.create(name, batch_size=opt.batch_size)
        if gradient_free(model) and float(getattr(det, "noise", 0.0)) > 0:
            audit.notices.append(f"detector {name} skipped: its input preprocessing needs gradients, which this "
                                 "ONNX Runtime model does not have")
            continue
        try:
            fitted[name] = det.fit(model, x, y)
        except FortifyError as e:
            audit.notices.append(f"detector {name} cannot run on this model: {e}")
    return fitted


def _ood(model: nn.Module, audit: ModelAudit, fitted: dict[str, Any], xb: torch.Tensor, opt: AuditOptions,
         extra: dict[str, torch.Tensor]) -> None:
    from fortify.audit.detect.metrics import detection_score

    sets: dict[str, torch.Tensor] = dict(extra)
    from fortify.audit.ood_sets import load_ood

    for name in opt.ood_sets:
        try:
            sets[name] = load_ood(name, opt.n_ood, tuple(xb.shape[1:]), seed=opt.seed,
                                  model=model if name == "fooling" else None).to(xb)  # CPU set -> the data's device
        except DatasetUnavailableError as e:
            audit.notices.append(f"OOD set {name} skipped: {str(e).splitlines()[0]}")
    for det, fd in fitted.items():
        s_in = fd.score(xb)
        audit.ood[det] = {}
        for name, xo in sets.items():
            try:
                audit.ood[det][name] = detection_score(s_in, fd.score(xo), resamples=opt.bootstrap, seed=opt.seed)
            except FortifyError as e:
                audit.ood[det][name] = f"n/a: {e}"


def audit_model(model: nn.Module, train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor],
                options: AuditOptions | None = None, *, label: str = "model",
                on_section: Callable[[str], None] | None = None) -> ModelAudit:
    """Run the sections of ``options`` on ``model`` (module docstring). ``train``/``test``: ``(x (N, *sample) in
    [0, 1], y (N,))``; the test set needs at least 4 rows (two per half). ``on_section(name)`` is called as each
    step ends (a progress bar)."""
    opt = options or AuditOptions()
    xt, yt = test
    if xt.shape[0] < 4:
        raise ConfigError(f"the audit needs at least 4 test inputs, got {xt.shape[0]}")
    half = xt.shape[0] // 2
    xa, ya, xb, yb = xt[:half], yt[:half], xt[half:], yt[half:]
    audit = ModelAudit(label=label, n_eval=int(xb.shape[0]), eval_labels=yb)
    if "calibration" in opt.sections:
        _timed(audit, "calibration", lambda: _calibration(model, audit, xa, ya, xb, yb, opt), on_section)
    extra: dict[str, torch.Tensor] = {}
    if "fooling" in opt.sections:
        from fortify.audit.fooling import fooling_images

        try:
            method = "evolution" if gradient_free(model) else "gradient"  # no gradients: the gradient-free search
            audit.fooling = _timed(audit, "fooling", lambda: fooling_images(
                model, opt.fooling_per_class, method=method, steps=opt.fooling_steps, seed=opt.seed,
                batch_size=opt.batch_size, sample_shape=tuple(xt.shape[1:])), on_section)
            extra["fooling"] = audit.fooling.images.to(xt)
        except FortifyError as e:
            audit.notices.append(f"fooling images: {e}")
    fitted: dict[str, Any] = {}
    if "ood" in opt.sections or "adversarial" in opt.sections:
        fitted = _timed(audit, "fit detectors", lambda: _fit_detectors(model, audit, train[0], train[1], opt),
                        on_section)
    if "ood" in opt.sections:
        _timed(audit, "ood", lambda: _ood(model, audit, fitted, xb, opt, extra), on_section)
    if "adversarial" in opt.sections and fitted and gradient_free(model):
        audit.notices.append("adversarial detection skipped: white-box attacks need a PyTorch model with gradients")
    elif "adversarial" in opt.sections and fitted:
        from fortify.audit.adversarial import adversarial_detection

        attacks = {a: ({"steps": opt.pgd_steps} if a == "pgd" else {}) for a in opt.attacks}
        adaptive = {"steps": opt.adaptive_steps} if opt.adaptive else {"skip": True}
        try:
            audit.adversarial = _timed(audit, "adversarial", lambda: adversarial_detection(
                model, fitted, xb[:opt.n_adv], yb[:opt.n_adv], attacks=attacks, eps=tuple(opt.eps), norm=opt.norm,
                adaptive=adaptive, seed=opt.seed, x_clean=xb), on_section)
        except FortifyError as e:
            audit.notices.append(f"adversarial detection: {e}")
    if "corruptions" in opt.sections:
        from fortify.audit.corruptions import corruption_table

        try:
            audit.corruptions = _timed(audit, "corruptions", lambda: corruption_table(
                model, xb[:opt.n_corrupt], yb[:opt.n_corrupt], opt.corruptions, opt.severities, seed=opt.seed,
                batch_size=opt.batch_size), on_section)
        except FortifyError as e:
            audit.notices.append(f"corruptions: {e}")
    return audit


__all__ = ["AuditOptions", "ModelAudit", "SECTIONS", "audit_model", "gradient_free"]
