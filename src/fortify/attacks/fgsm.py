"""FGSM / fast gradient method (Goodfellow et al. 2015, "Explaining and harnessing adversarial
examples"), generalised to the steepest-ascent step of each norm.

One gradient of the cross-entropy at ``x`` (or at a random start, as in Wong et al. 2020 "Fast is
better than free"), one step of size ``eps`` along the norm's steepest-ascent direction, projection.
Shapes: ``x (B, ...)`` -> ``x_adv (B, ...)``.
"""
from __future__ import annotations


from fortify.attacks.base import Attack, Oracle
from fortify.attacks.losses import ce_loss
from fortify.attacks.registry import ATTACKS
from fortify.attacks.steps import steepest_ascent
from fortify.threat import ThreatModel


@ATTACKS.register("fgsm", help="one-step steepest ascent (FGSM / FGM), optional random start")
class FGSM(Attack):
    norms = ("linf", "l2", "l1")
    access = "gradient"
    supports_targeted = True

    def __init__(self, random_start: bool = False, step_ratio: float = 1.0) -> None:
        self.random_start = bool(random_start)
        self.step_ratio = float(step_ratio)

    def _run(self, oracle: Oracle, x, y, threat: ThreatModel, targeted, generator):
        x0 = threat.random_init(x, generator) if self.random_start else x
        if targeted is None:
            _, _, g = oracle.value_and_grad(x0, lambda z: ce_loss(z, y))
        else:
            _, _, g = oracle.value_and_grad(x0, lambda z: -ce_loss(z, targeted))
        return threat.project(x0 + self.step_ratio * threat.eps * steepest_ascent(g, threat.norm), x)
