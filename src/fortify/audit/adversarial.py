"""Adversarial-input detection: every detector scored on static attacks and on an adaptive attack that knows it.

Static: adversarial examples from :data:`fortify.attacks.ATTACKS` (``fgsm``, ``pgd``, ``cw``, ``square``, ...) at
each ``eps``, crafted against the classifier alone. Adaptive (Carlini & Wagner 2017, "Adversarial examples are not
easily detected: bypassing ten detection methods"; Tramer et al. 2020, "On adaptive attacks to adversarial example
defenses"): PGD inside the same threat model that attacks classifier and detector together. Two modes:

* ``"orthogonal"`` (default; Bryniarski et al. 2022, "Evading adversarial example detection defenses with
  orthogonal projected gradient descent"): a row not yet misclassified steps on the classifier's margin
  ``max_{j != y} z_j - z_y``; a misclassified row steps down the detector's score ``s``, with the component of that
  direction that would lower the margin removed (so the step keeps the misclassification to first order). Free of
  any weight between the two objectives.
* ``"weighted"``: ascent on ``min(margin, kappa) - lam (s - tau) / sigma`` (``tau`` the threshold at 95% TPR on
  clean inputs, ``sigma`` the spread of clean scores, so ``lam`` is unit-free).

Gradients of ``s``: autograd through :meth:`FittedDetector.score_graph` (input preprocessing of ODIN / Mahalanobis
is a constant there: BPDA, Athalye et al. 2018); for a detector that is not differentiable (or
``detector_grad="nes"``) an antithetic Gaussian estimate (NES, Ilyas et al. 2018) of ``grad s`` from ``2 samples``
score queries. Per sample the best iterate is kept: misclassified and undetected (``s <= tau``) first, then
misclassified, then any; lower score first.

Figures (:class:`DetectionRow`): detection AUROC / FPR@95TPR of clean inputs (negatives) against the *successful*
adversarial examples (positives: misclassified), the attack's success rate, and the evasion rate (misclassified
and scored at or below ``tau``). A detector whose adaptive AUROC falls below :data:`COLLAPSE_AUROC` is reported as
collapsed when it rests on at least :data:`MIN_SUCCESS` successful examples (fewer: the AUROC is reported, not
judged). :func:`adversarial_calibration` gives the calibration metrics on adversarial examples (how honest the
confidence of a robust model stays under attack).

Cost: static, one attack run per (attack, eps); adaptive, ``steps`` x (one forward-backward of the model + one of
the detector) per (detector, eps), ``2 samples`` score queries per step with NES.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from fortify.attacks.base import Attack, Oracle
from fortify.attacks.losses import margin_loss
from fortify.attacks.steps import steepest_ascent
from fortify.audit.calibration import CalibrationReport, calibration_report, check_inputs, predict_probs
from fortify.audit.detect.base import FittedDetector, check_count, check_nonnegative
from fortify.audit.detect.metrics import detection_score
from fortify.errors import ConfigError, InputError
from fortify.threat import ThreatModel

#: an adaptive AUROC below this is a collapse (the detector is near chance or worse against an attacker who knows it)
COLLAPSE_AUROC = 0.6
#: fewest successful adversarial examples for a collapse verdict (an AUROC over fewer is reported, not judged)
MIN_SUCCESS = 10
#: the operating point of the threshold: fraction of clean inputs accepted
TPR = 0.95


class AdaptiveDetectorAttack(Attack):
    """PGD on the classifier's margin and the detector's score together (module docstring).

    Args: ``fitted`` the fitted detector (its ``model`` is the one attacked), ``tau`` the score threshold,
    ``sigma`` the clean-score spread, ``mode`` ``"orthogonal"`` or ``"weighted"``, ``lam`` the weight of the
    detector term and ``kappa`` the margin cap (weighted mode), ``steps``,
    ``step_ratio`` (step = ratio x eps), ``detector_grad`` ``"auto"`` (autograd when the detector is
    differentiable, else NES) / ``"autograd"`` / ``"nes"``, ``samples`` NES directions, ``sigma_nes`` their scale
    as a fraction of eps. Not registered in ATTACKS: it needs a fitted detector.
    """

    norms = ("linf", "l2")

    def __init__(self, fitted: FittedDetector, tau: float, sigma: float = 1.0, *, mode: str = "orthogonal",
                 lam: float = 1.0,
                 kappa: float = 2.0, steps: int = 40, step_ratio: float | None = None, detector_grad: str = "auto",
                 samples: int = 16, sigma_nes: float = 0.25) -> None:
        if not isinstance(fitted, FittedDetector):
            raise ConfigError(f"fitted must be a FittedDetector (detector.fit(...)), got {type(fitted).__name__}")
        if mode not in ("orthogonal", "weighted"):
            raise ConfigError(f"mode must be orthogonal or weighted, got {mode!r}")
        self.mode = mode
        if detector_grad not in ("auto", "autograd", "nes"):
            raise ConfigError(f"detector_grad must be auto, autograd or nes, got {detector_grad!r}")
        self.fitted, self.tau, self.sigma = fitted, float(tau), max(float(sigma), 1e-12)
        self.lam, self.kappa = check_nonnegative(lam, "lam"), check_nonnegative(kappa, "kappa")
        self.steps, self.samples = check_count(steps, "steps"), check_count(samples, "samples")
        self.step_ratio = 2.5 / steps if step_ratio is None else float(step_ratio)
        self.sigma_nes = float(sigma_nes)
        self.use_nes = detector_grad == "nes" or (detector_grad == "auto" and not fitted.detector.differentiable)

    def _score_grad(self, oracle: Oracle, x: torch.Tensor, eps: float,
                    generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(s (B,), d s / dx (B, ...))``: autograd, or NES from ``2 samples`` queries per row."""
        if not self.use_nes:
            with torch.enable_grad():
                xg = x.detach().requires_grad_(True)
                s = self.fitted.score_graph(xg)
                (g,) = torch.autograd.grad(s.sum(), xg)
            oracle.queries += x.shape[0]
            oracle.grad_evals += x.shape[0]
            return s.detach(), g.detach()
        s = self.fitted.score(x)
        g = torch.zeros_like(x)
        h = self.sigma_nes * eps
        for _ in range(self.samples):
            u = torch.randn(x.shape, generator=generator, dtype=x.dtype,  # on the generator's device
                            device=generator.device if generator is not None else x.device).to(x.device)
            g += (self.fitted.score(x + h * u) - self.fitted.score(x - h * u)).view(-1, *[1] * (x.dim() - 1)) * u
        oracle.queries += x.shape[0] * (1 + 2 * self.samples)
        return s, g / (2 * h * self.samples)

    def _direction(self, g_cls: torch.Tensor, g_det: torch.Tensor, wrong: torch.Tensor) -> torch.Tensor:
        """Ascent direction ``(B, ...)`` from the margin gradient and the score gradient (module docstring)."""
        if self.mode == "weighted":
            return g_cls - (self.lam / self.sigma) * g_det
        c, d = g_cls.flatten(1), -g_det.flatten(1)
        dot = (d * c).sum(1, keepdim=True)
        d = torch.where(dot < 0, d - dot / (c * c).sum(1, keepdim=True).clamp(min=1e-30) * c, d)
        return torch.where(wrong.view(-1, 1), d, c).view_as(g_cls)

    def _run(self, oracle: Oracle, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
             targeted: torch.Tensor | None, generator: torch.Generator | None) -> torch.Tensor:
        """Best iterate per row of ``x (B, ...)`` (misclassified and undetected first; then lowest score)."""
        alpha = self.step_ratio * threat.eps
        xa = threat.random_init(x, generator)
        best_x, best_rank = x.clone(), torch.full((x.shape[0],), -1, device=x.device)
        best_s = torch.full((x.shape[0],), float("inf"), device=x.device, dtype=x.dtype)
        for k in range(self.steps + 1):
            cap = self.kappa if self.mode == "weighted" else float("inf")
            logits, _, g_cls = oracle.value_and_grad(xa, lambda z: margin_loss(z, y).clamp(max=cap))
            s, g_det = self._score_grad(oracle, xa, threat.eps, generator)
            wrong = logits.argmax(1) != y
            rank = wrong.long() + (wrong & (s <= self.tau)).long()
            better = (rank > best_rank) | ((rank == best_rank) & (s < best_s))
            best_x[better], best_rank[better], best_s[better] = xa[better], rank[better], s[better]
            if k == self.steps:
                break
            xa = threat.project(xa + alpha * steepest_ascent(self._direction(g_cls, g_det, wrong), threat.norm), x)
        return best_x


@dataclass
class DetectionRow:
    """One cell of the adversarial-detection table (module docstring for the definitions)."""

    detector: str
    attack: str
    eps: float
    kind: str  # "static" or "adaptive"
    auroc: float | None
    fpr95: float | None
    success_rate: float
    evasion_rate: float
    n: int
    n_success: int
    collapsed: bool = False
    #: percentile-bootstrap 95% interval of ``auroc`` (clean and successful adversarial rows resampled)
    auroc_interval: tuple[float, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass
class AdversarialReport:
    """Static and adaptive detection rows, and, per (attack, eps), the calibration on adversarial examples."""

    rows: list[DetectionRow] = field(default_factory=list)
    calibration: dict[str, CalibrationReport] = field(default_factory=dict)

    def pairs(self) -> list[tuple[DetectionRow, DetectionRow | None]]:
        """``(static pgd row, adaptive row)`` per (detector, eps): the side-by-side comparison."""
        adaptive = {(r.detector, r.eps): r for r in self.rows if r.kind == "adaptive"}
        return [(r, adaptive.get((r.detector, r.eps))) for r in self.rows if r.kind == "static" and r.attack == "pgd"]

    def collapsed(self) -> list[str]:
        return sorted({r.detector for r in self.rows if r.collapsed})


def detection_row(fitted: FittedDetector, s_clean: torch.Tensor, tau: float, x_adv: torch.Tensor, wrong: torch.Tensor,
                  *, attack: str, eps: float, kind: str) -> DetectionRow:
    """Score ``x_adv`` and compare its successful rows (``wrong``) with the clean scores."""
    s_adv = fitted.score(x_adv)
    n, k = int(x_adv.shape[0]), int(wrong.sum())
    au = fp = band = None
    if k >= 1:
        score = detection_score(s_clean, s_adv[wrong])
        au, fp, band = score.auroc, score.fpr95, score.intervals["auroc"]
    evasion = float((wrong & (s_adv <= tau)).double().mean())
    return DetectionRow(fitted.name, attack, float(eps), kind, au, fp, k / n, evasion, n, k,
                        collapsed=kind == "adaptive" and au is not None and au < COLLAPSE_AUROC and k >= MIN_SUCCESS,
                        auroc_interval=band)


def _threat(norm: str, eps: float) -> ThreatModel:
    return ThreatModel(norm, eps)  # type: ignore[arg-type]


def adversarial_detection(model: nn.Module, detectors: dict[str, FittedDetector], x: torch.Tensor, y: torch.Tensor,
                          *, attacks: dict[str, dict[str, Any]] | None = None, eps: tuple[float, ...] = (0.1,),
                          norm: str = "linf", adaptive: dict[str, Any] | None = None, seed: int = 0,
                          x_clean: torch.Tensor | None = None) -> AdversarialReport:
    """Every fitted detector on every static attack (``attacks``: ``{name: constructor options}`` from ATTACKS,
    default ``{"fgsm": {}, "pgd": {"steps": 20}}``) and on the adaptive attack (options ``adaptive``; ``None``:
    defaults, ``{"skip": True}``: none) at every ``eps``. Clean scores and ``tau`` come from ``x_clean`` (default
    ``x``); only the rows of ``x (N, *sample)`` (in [0, 1], labels ``y (N,)``) the model classifies correctly are
    attacked. The model is never mutated (every call freezes it)."""
    from fortify.attacks import ATTACKS

    x = check_inputs(model, x)
    if not detectors:
        raise ConfigError("adversarial_detection needs at least one fitted detector")
    for name, fd in detectors.items():
        if fd.model is not model:
            raise InputError(f"detector {name!r} was fitted on another model than the one attacked")
    attacks = {"fgsm": {}, "pgd": {"steps": 20}} if attacks is None else attacks
    opts = dict(adaptive or {})
    skip_adaptive = bool(opts.pop("skip", False))
    ref = x if x_clean is None else check_inputs(model, x_clean, name="x_clean")
    clean = {n: fd.score(ref) for n, fd in detectors.items()}
    taus = {n: float(s.sort().values[max(1, math.ceil(TPR * s.numel() - 1e-9)) - 1]) for n, s in clean.items()}
    keep = predict_probs(model, x).argmax(1) == y  # attack only what the model gets right
    if not bool(keep.any()):
        raise InputError("the model misclassifies every input: there is nothing to attack")
    x, y = x[keep], y[keep]
    report = AdversarialReport()
    for e in eps:
        threat = _threat(norm, e)
        for aname, aopts in attacks.items():
            res = ATTACKS.create(aname, **aopts)(model, x, y, threat, generator=torch.Generator().manual_seed(seed))
            wrong = predict_probs(model, res.x_adv).argmax(1) != y
            report.calibration[f"{aname}@{e:g}"] = calibration_report(predict_probs(model, res.x_adv), y)
            for n, fd in detectors.items():
                report.rows.append(detection_row(fd, clean[n], taus[n], res.x_adv, wrong, attack=aname, eps=e,
                                                 kind="static"))
        if skip_adaptive:
            continue
        for n, fd in detectors.items():
            sigma = float(clean[n].std()) if clean[n].numel() > 1 else 1.0
            atk = AdaptiveDetectorAttack(fd, taus[n], sigma, **opts)
            res = atk(model, x, y, threat, generator=torch.Generator().manual_seed(seed))
            wrong = predict_probs(model, res.x_adv).argmax(1) != y
            report.rows.append(detection_row(fd, clean[n], taus[n], res.x_adv, wrong, attack="adaptive-pgd", eps=e,
                                             kind="adaptive"))
    return report


def adversarial_calibration(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, attack: str = "pgd",
                            eps: float = 0.1, norm: str = "linf", options: dict[str, Any] | None = None,
                            seed: int = 0, n_bins: int = 15) -> CalibrationReport:
    """Calibration metrics (:mod:`fortify.audit.calibration`) of ``model`` on adversarial examples of ``x (N, ...)``
    labelled ``y (N,)`` (attack ``attack`` from ATTACKS at ``eps``): is the confidence honest under attack?"""
    from fortify.attacks import ATTACKS

    res = ATTACKS.create(attack, **(options or {}))(model, x, y, _threat(norm, eps),
                                                    generator=torch.Generator().manual_seed(seed))
    return calibration_report(predict_probs(model, res.x_adv), y, n_bins)


__all__ = ["COLLAPSE_AUROC", "MIN_SUCCESS", "AdaptiveDetectorAttack", "AdversarialReport", "DetectionRow", "adversarial_calibration",
           "adversarial_detection", "detection_row"]
