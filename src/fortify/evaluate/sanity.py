"""Sanity checks for gradient masking and unreliable evaluations (flags), and the remedies.

Pre-attack checks (on the raw model) decide which evaluation wrappers the cascade attacks through:

* ``randomized_outputs`` -- two forward passes on the same input differ -> :class:`EoT`.
* ``probability_outputs`` -- outputs are non-negative with constant row sums (softmax already
  applied) -> :class:`LogitRescale` ``log``.
* ``zero_or_nan_gradients`` -- many inputs get an all-zero or non-finite loss gradient. If the
  margin-loss gradient is alive the logits are saturated -> :class:`LogitRescale` ``scale``;
  otherwise a non-differentiable input transform is searched for -> :class:`BPDA`.

Post-attack checks (computed by the cascade from its stages, see ``cascade.py``) follow Croce &
Hein 2020 (AutoAttack ``checks.py``), Athalye et al. 2018 and Carlini et al. 2019 ("On evaluating
adversarial robustness"): ``blackbox_beats_whitebox``, ``single_step_beats_iterative``,
``non_monotone_in_eps``, ``large_eps_not_broken``, ``not_converged`` and
``transfer_beats_whitebox``. Every flag carries a one-line explanation and its evidence.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from fortify.evaluate.report import SanityFlag
from fortify.evaluate.wrappers import BPDA, EoT, LogitRescale, SurrogateGradient, find_nondifferentiable

EXPLAIN: dict[str, str] = {
    "randomized_outputs": "the model's outputs change between identical calls; single-sample gradients are "
                          "noisy, so attacks run through EoT (expectation over randomness)",
    "probability_outputs": "outputs look like probabilities (softmax already applied); losses on them "
                           "saturate, so attacks run on log-probabilities",
    "zero_or_nan_gradients": "many inputs have zero or NaN input gradients (gradient masking: saturation or "
                             "a non-differentiable transform); remedied by rescaling or BPDA",
    "blackbox_beats_whitebox": "gradient-free attacks broke points the gradient attacks missed: the gradients "
                               "are likely masked, white-box numbers alone would overestimate robustness",
    "single_step_beats_iterative": "a single FGSM step broke points the iterative attacks missed: the iterative "
                                   "attacks are stuck (masked or badly scaled gradients)",
    "non_monotone_in_eps": "accuracy went up when eps grew; a correct attack can only get stronger with eps",
    "large_eps_not_broken": "with an eps covering the whole input box accuracy did not reach ~0%: the attack "
                            "fails where any input is reachable",
    "not_converged": "doubling the attack iterations broke more points: the budget is too small to converge",
    "transfer_beats_whitebox": "adversarial examples transferred from a standard-trained surrogate broke points "
                               "the white-box attacks missed: the model's own gradients are uninformative",
}


def make_flag(name: str, fired: bool, evidence: dict | None = None, ran: bool = True) -> SanityFlag:
    """A flag with its standard explanation from :data:`EXPLAIN`."""
    return SanityFlag(name=name, fired=bool(fired), explanation=EXPLAIN[name], evidence=dict(evidence or {}), ran=ran)


def not_run(name: str, reason: str) -> SanityFlag:
    """A flag that could not be evaluated; ``evidence["reason"]`` says why."""
    return make_flag(name, False, {"reason": reason}, ran=False)


@dataclass
class Remedy:
    """What the pre-checks found: flags plus the wrapped model the attacks should use."""

    flags: list[SanityFlag]
    attack_model: nn.Module
    wrappers: list[str] = field(default_factory=list)
    randomized: bool = False


def _dead_fraction(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str) -> tuple[float, float]:
    """Fractions of samples whose input gradient of ``loss`` is all-zero, and non-finite."""
    with torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)
        out = model(xg)
        if loss == "ce":
            val = F.cross_entropy(out, y, reduction="sum")
        else:
            true = out.gather(1, y[:, None]).squeeze(1)
            other = out.masked_fill(F.one_hot(y, out.shape[1]).bool(), float("-inf")).amax(1)
            val = (other - true).sum()
        if not val.requires_grad:
            return 1.0, 0.0
        (g,) = torch.autograd.grad(val, xg, allow_unused=True)
    if g is None:
        return 1.0, 0.0
    g = g.reshape(g.shape[0], -1)
    nan = ~torch.isfinite(g).all(dim=1)
    zero = (g.abs().amax(dim=1) == 0) & ~nan
    return float(zero.float().mean()), float(nan.float().mean())


def pre_checks(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eot_samples: int = 16,
               max_points: int = 64, dead_threshold: float = 0.1,
               surrogate_factory: Callable[[], nn.Module] | None = None) -> Remedy:
    """Run the pre-attack checks on ``x (N, ...)``, ``y (N,)`` and choose the evaluation wrappers.

    The model must already be in eval mode (the cascade runs this inside ``models.state.frozen``)."""
    xs, ys = x[:max_points], y[:max_points]
    flags: list[SanityFlag] = []
    wrappers: list[str] = []
    with torch.no_grad():
        o1, o2 = model(xs), model(xs)
    diff = float((o1 - o2).abs().max())
    scale = float(o1.abs().max().clamp_min(1e-12))
    randomized = diff > 1e-5 * scale
    flags.append(make_flag("randomized_outputs", randomized, {
        "max_abs_diff": diff, "prediction_changes": float((o1.argmax(1) != o2.argmax(1)).float().mean())}))

    sums = o1.sum(dim=1)
    prob_like = bool((o1 >= 0).all()) and float(sums.std(unbiased=False) / sums.abs().mean().clamp_min(1e-12)) < 1e-3
    flags.append(make_flag("probability_outputs", prob_like, {
        "min_output": float(o1.min()), "row_sum_mean": float(sums.mean()), "row_sum_std": float(sums.std(unbiased=False))}))

    attack_model: nn.Module = model
    if prob_like:
        attack_model = LogitRescale(attack_model, "log")
        wrappers.append("log-probabilities")
    raw_zero, raw_nan = _dead_fraction(model, xs, ys, "ce")
    zero_ce, nan_ce = _dead_fraction(attack_model, xs, ys, "ce") if prob_like else (raw_zero, raw_nan)
    zero_m, nan_m = _dead_fraction(attack_model, xs, ys, "margin")
    evidence: dict = {"zero_grad_fraction_ce": raw_zero, "nan_grad_fraction_ce": raw_nan,
                      "zero_grad_fraction_margin": zero_m, "nan_grad_fraction_margin": nan_m}
    dead = raw_zero + raw_nan >= dead_threshold or zero_m + nan_m >= dead_threshold
    if zero_ce + nan_ce >= dead_threshold:  # still dead after the log remedy (if any)
        if zero_m + nan_m < dead_threshold:
            with torch.no_grad():
                top2 = attack_model(xs).topk(2, dim=1).values
            gap = float((top2[:, 0] - top2[:, 1]).median())
            s = max(1.0, gap / 5.0)
            attack_model = LogitRescale(attack_model, "scale", s)
            wrappers.append(f"logit-scale/{s:.3g}")
            evidence["diagnosis"] = "saturated outputs (margin gradients are alive)"
        else:
            mods = find_nondifferentiable(model, xs)
            names = [n for n, m in model.named_modules() if any(m is t for t in mods)]
            evidence["nondifferentiable_modules"] = names
            if mods:
                attack_model = _rewrap_bpda(attack_model, model, mods)
                wrappers.append("bpda(" + ",".join(names) + ")")
                evidence["diagnosis"] = "non-differentiable input transform; straight-through (BPDA) gradients"
            elif surrogate_factory is not None:
                attack_model = SurrogateGradient(attack_model, surrogate_factory())
                wrappers.append("bpda(surrogate)")
                evidence["diagnosis"] = "no non-differentiable submodule found; gradients from a surrogate (BPDA)"
            else:
                evidence["diagnosis"] = "no non-differentiable submodule found; relying on black-box attacks"
        z2, n2 = _dead_fraction(attack_model, xs, ys, "margin")
        evidence["zero_or_nan_after_remedy"] = z2 + n2
    flags.append(make_flag("zero_or_nan_gradients", dead, evidence))
    if randomized:
        attack_model = EoT(attack_model, eot_samples)
        wrappers.append(f"eot/{eot_samples}")
    return Remedy(flags=flags, attack_model=attack_model, wrappers=wrappers, randomized=randomized)


def _rewrap_bpda(attack_model: nn.Module, model: nn.Module, mods: list[nn.Module]) -> nn.Module:
    """Insert BPDA directly around the raw model, under any LogitRescale already applied."""
    if isinstance(attack_model, LogitRescale):
        return LogitRescale(BPDA(model, mods), attack_model.mode, attack_model.scale)
    return BPDA(model, mods)


def count_threshold(n: int) -> int:
    """Points a post-check must find before it fires: at least 2 (one point can be sampling noise
    of a randomized model or a lucky restart) and at least 1% of ``n``."""
    return max(2, -(-n // 100))
