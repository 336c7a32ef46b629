"""Cascade ensemble evaluation: ``robust_accuracy(model, x, y, threat, preset=..., **options)``.

Attacks run in sequence, each only on the points still robust, and the per-sample worst case is
kept (the adversarial example that broke the point, the attack, its distance) -- the scheme of
AutoAttack (Croce & Hein 2020). Every adversarial example is *re-scored* on the unwrapped model
(its EoT prediction for randomized models) and checked against the threat model, so wrappers and
surrogates can only make the evaluation stronger, never falsely break a point.

The pieces (one concept per module):

* :mod:`fortify.evaluate.plan` -- the :class:`~fortify.evaluate.plan.Plan`: per threat, the ordered
  steps (preset attacks, sanity probes, transfer, black-box, adaptive BPDA), built once.
* :mod:`fortify.evaluate.state` -- the typed :class:`~fortify.evaluate.state.CascadeState` (per-threat
  masks, adversarial examples, distances, rows, finished steps, surrogate, flags) and its resume file.
* :mod:`fortify.evaluate.runner` -- runs the steps against the state, saving it after each.
* :mod:`fortify.evaluate.post_checks` -- the sanity flags read from the probe steps' rows.

This module validates the call (the shared checks of :mod:`fortify.validation`, typed errors),
runs the pre-attack sanity checks inside :func:`fortify.models.state.frozen` and a forked RNG, and
assembles the :class:`~fortify.evaluate.report.EvaluationReport`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Sequence

import torch
from torch import nn

from fortify.errors import ConfigError, InputError
from fortify.evaluate import sanity as S
from fortify.evaluate.plan import Plan, Preset, ThreatLike, as_threats
from fortify.evaluate.post_checks import post_flags
from fortify.evaluate.presets import preset_specs
from fortify.evaluate.report import AttackRow, EvaluationReport, ThreatResult
from fortify.evaluate.runner import CascadeInputs, CascadeRunner, Scorer
from fortify.evaluate.state import CascadeState, fingerprint
from fortify.evaluate.surrogate import train_surrogate
from fortify.models.state import frozen
from fortify.threat import ThreatModel
from fortify.validation import (
    check_device, check_images, check_kwargs, check_labels, check_logits, check_model_input, forward_checked,
)

__all__ = ["CascadeOptions", "ThreatLike", "robust_accuracy"]


@dataclass(frozen=True)
class CascadeOptions:
    """The keyword options of :func:`robust_accuracy` (validated here; typed ``ConfigError``).

    budget: multiplies every attack's iterations and queries (``0.1`` for smoke tests).
    batch_size: points per attack call. state_path: safetensors file for resumable state; finished
    steps are skipped on rerun. seed / generator: reproducibility (``seed`` None: drawn from
    ``generator``, else 0); the global RNG is restored afterwards. sanity: run the sanity checks and
    their remedies (BPDA / EoT / rescaling, probes). surrogate: standard-trained model for the
    transfer check (trained on ``x, y`` if None). eot_samples: draws per EoT forward and per
    randomized-model prediction. transfer: run the transfer step from the surrogate even without sanity
    checks (black-box targets: a PGD attack on a surrogate trained on ``x, y``, scored on the model). eps_check_points: clean-correct points of the eps-sweep checks.
    callback: called as ``callback(threat, row)`` after each step's state is saved. progress: show
    a progress bar (one unit per attack step) on stderr.
    """

    budget: float = 1.0
    batch_size: int = 256
    state_path: str | None = None
    seed: int | None = None
    generator: torch.Generator | None = None
    sanity: bool = True
    transfer: bool = False
    surrogate: nn.Module | None = None
    eot_samples: int = 16
    eps_check_points: int = 64
    callback: Callable[[str, AttackRow], None] | None = None
    progress: bool = False

    def __post_init__(self) -> None:
        bs, eot = self.batch_size, self.eot_samples
        if isinstance(bs, bool) or not isinstance(bs, int) or bs < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {bs!r}")
        if isinstance(self.budget, bool) or not isinstance(self.budget, (int, float)) or not self.budget > 0:
            raise ConfigError(f"budget must be a number > 0, got {self.budget!r}")
        if isinstance(eot, bool) or not isinstance(eot, int) or eot < 1:
            raise ConfigError(f"eot_samples must be a positive integer, got {eot!r}")
        if self.surrogate is not None and not isinstance(self.surrogate, nn.Module):
            raise ConfigError(f"surrogate must be a torch.nn.Module, got {type(self.surrogate).__name__}")

    @classmethod
    def from_kwargs(cls, options: dict[str, Any]) -> "CascadeOptions":
        """Options from keyword arguments; an unknown keyword is a ConfigError naming the allowed ones."""
        check_kwargs(cls, options, what="robust_accuracy")
        return cls(**options)

    def resolved_seed(self) -> int:
        """``seed``, or one drawn from ``generator``, or 0."""
        if self.seed is not None:
            return self.seed
        return int(torch.randint(0, 2**31 - 1, (1,), generator=self.generator)) if self.generator is not None else 0


def robust_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatLike | Sequence[ThreatLike],
                    *, preset: Preset = "fast", **options: Any) -> EvaluationReport:
    """Robust accuracy of ``model`` on ``x (N, ...)``, ``y (N,)`` under one or several threats.

    Args:
        threat: a :class:`ThreatModel`, a ``"linf:0.3"`` string or a list of them (each evaluated,
            plus their union: a point is robust only if robust under every threat).
        preset: ``"fast"``, ``"standard"`` or ``"thorough"`` (see :mod:`fortify.evaluate.presets`),
            or a custom list of :class:`AttackSpec` run in that order.
        options: the fields of :class:`CascadeOptions` (``budget``, ``batch_size``, ``state_path``,
            ``seed``, ``generator``, ``sanity``, ``surrogate``, ``eot_samples``, ``eps_check_points``,
            ``callback``, ``progress``).

    Cost: per threat, the preset's attacks on the surviving points (plus the probes with sanity
    checks and, for randomized models, ``4 * eot_samples`` forwards per scored point).

    Raises: UnknownNameError (preset), ThreatModelError, InputError (inputs, labels, model output,
    device, dtype, sample shape), ConfigError, :class:`fortify.evaluate.state.StateMismatchError`.
    """
    preset_specs(preset, "linf")  # UnknownNameError / ConfigError for a bad preset, before any work
    threats = as_threats(threat)
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    opts = CascadeOptions.from_kwargs(options)
    for t in threats:
        check_images(x, t.bounds)
    check_device(model, x)
    check_model_input(model, x)
    seed = opts.resolved_seed()
    x = x.detach()
    t0 = time.perf_counter()
    rng_devices = [x.device.index or 0] if x.is_cuda else []
    with torch.random.fork_rng(devices=rng_devices), frozen(model):
        torch.manual_seed(seed)
        state = CascadeState.empty(len(threats), surrogate=opts.surrogate)
        inputs, remedy = _prepare(model, x, y, state, seed, opts)
        plan = Plan.build(preset, threats, budget=opts.budget, sanity=opts.sanity,
                          suspect=any(f.fired for f in remedy.flags), transfer=opts.transfer)
        config = _config(threats, preset, plan, remedy.wrappers, seed, opts)
        fp = fingerprint(model, x, inputs.y, {**config, "surrogate": _surrogate_id(opts.surrogate)})
        state.restore(opts.state_path, fp, x.dtype)
        results = _run(plan, CascadeRunner(inputs, state), opts)
        if opts.sanity:
            state.flags += post_flags(plan, results, inputs, budget=opts.budget, points=opts.eps_check_points)
    union = torch.stack([r.robust for r in results]).all(dim=0)
    return EvaluationReport(threats=results, union_robust=union, flags=state.flags, wrappers=remedy.wrappers,
                            config=config, seconds=time.perf_counter() - t0)


def _prepare(model: nn.Module, x: torch.Tensor, y: torch.Tensor, state: CascadeState, seed: int,
             opts: CascadeOptions) -> tuple[CascadeInputs, S.Remedy]:
    """Label check on the first batch's logits, pre-attack sanity checks (remedy wrappers; a
    surrogate they train is kept in ``state``), the scorer and the clean-correct mask. The pre-check
    flags go to ``state.flags``."""
    n, bs = x.shape[0], opts.batch_size
    with torch.no_grad():
        logits = check_logits(forward_checked(model, x[:bs], shown_shape=tuple(x.shape)), min(n, bs))
    num_classes = int(logits.shape[1])
    y = check_labels(y, n, num_classes).to(x.device)
    train = partial(train_surrogate, x, y, num_classes, seed=seed)
    if opts.sanity:
        remedy = S.pre_checks(model, x, y, eot_samples=opts.eot_samples,
                              surrogate_factory=lambda: state.surrogate_or(train))
    else:
        remedy = S.Remedy(flags=[], attack_model=model)
    scorer = Scorer(model, remedy.randomized, 4 * opts.eot_samples, bs)
    torch.manual_seed(seed)
    clean_correct = (scorer.predict(x) == y).cpu()
    state.flags = list(remedy.flags)
    return CascadeInputs(remedy.attack_model, scorer, x, y, clean_correct, num_classes, bs, seed), remedy


def _run(plan: Plan, runner: CascadeRunner, opts: CascadeOptions) -> list[ThreatResult]:
    """Every threat plan in order, with the progress bar and the caller's callback per step."""
    bar = _progress_bar(opts.progress, plan.total_steps)

    def on_step(t: str, row: AttackRow) -> None:
        if bar is not None:
            bar.advance(info=f"{t} {row.label}")
        if opts.callback is not None:
            opts.callback(t, row)

    runner.on_step = on_step
    try:
        return [runner.run_threat(tp) for tp in plan.threats]
    finally:
        if bar is not None:
            bar.close()


def _config(threats: list[ThreatModel], preset: Preset, plan: Plan, wrappers: list[str], seed: int,
            opts: CascadeOptions) -> dict[str, Any]:
    """The resolved configuration (reported, and part of the resume fingerprint)."""
    return {
        "threats": [[t.norm, t.eps, list(t.bounds)] for t in threats],
        "preset": preset if isinstance(preset, str) else [[s.label, s.attack, s.kwargs] for s in preset],
        "budget": opts.budget, "batch_size": opts.batch_size, "seed": seed, "sanity": opts.sanity,
        "eot_samples": opts.eot_samples, "stages": plan.step_labels, "wrappers": wrappers,
    }


def _progress_bar(enabled: bool, total: int) -> Any:
    """An open :func:`fortify.progress.task` (a bar on a terminal, periodic lines in a log), or None."""
    if not enabled:
        return None
    from fortify import progress as fprogress

    return fprogress.task("attack cascade", total=total, unit="attacks", enabled=True)


def _surrogate_id(surrogate: nn.Module | None) -> str:
    """Fingerprint component for the caller-supplied surrogate (``"trained"`` when built here)."""
    if surrogate is None:
        return "trained"
    return fingerprint(surrogate, torch.zeros(1, 1), torch.zeros(1, dtype=torch.long), {})

