"""Clean-label backdoor (Turner, Tsipras & Madry 2019, "Label-consistent backdoor attacks"): only images
of the target class are poisoned and they keep their (correct) label. Each is first made hard to
classify by an adversarial perturbation (untargeted PGD within ``linf`` radius ``eps`` against a
``surrogate`` model: fortify's ``pgd`` from the attack registry), then stamped with a BadNets patch of
amplitude ``amplitude`` (the paper's reduced-visibility trigger), so the network leans on the patch to
classify them. At test time the patch alone is the trigger.

``surrogate``: an ``nn.Module`` for the perturbation (never mutated); None trains a small MLP on the
given ``(x, y)`` for ``surrogate_epochs`` epochs (seeded) -- the attacker's own model.
Shapes: ``(N, C, H, W) -> (N, C, H, W)``; cost one PGD attack (``steps`` gradients) per poisoned row.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fortify.audit.backdoor._ops import fit
from fortify.audit.backdoor.badnets import BadNets
from fortify.audit.backdoor.base import POISONS, Mode, check_unit
from fortify.errors import ConfigError


@POISONS.register("clean-label", help="label-consistent backdoor (Turner et al. 2019): PGD-perturbed target images + patch")
class CleanLabel(BadNets):
    """Adversarially perturbed target-class images with a patch, labels kept (module docstring)."""

    clean_label = True

    def __init__(self, rate: float = 0.05, target: int = 0, mode: Mode = "all-to-one", seed: int = 0,
                 size: int = 3, position: str | list[int] = "bottom-right", pattern: Any = "checker",
                 margin: int = 1, eps: float = 0.3, steps: int = 10, amplitude: float = 1.0,
                 surrogate: nn.Module | None = None, surrogate_epochs: int = 3) -> None:
        super().__init__(rate, target, mode, seed, size, position, pattern, margin)
        self.eps = check_unit(eps, "eps", closed_low=True)
        self.amplitude = check_unit(amplitude, "amplitude")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ConfigError(f"steps must be a positive integer, got {steps!r}")
        if surrogate is not None and not isinstance(surrogate, nn.Module):
            raise ConfigError(f"surrogate must be a torch.nn.Module or null, got {type(surrogate).__name__}")
        if isinstance(surrogate_epochs, bool) or not isinstance(surrogate_epochs, int) or surrogate_epochs < 1:
            raise ConfigError(f"surrogate_epochs must be a positive integer, got {surrogate_epochs!r}")
        self.steps, self.surrogate_epochs = steps, surrogate_epochs
        self._surrogate = surrogate

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        stamped = super()._run(x)
        return x + self.amplitude * (stamped - x)

    def _prepare(self, x: torch.Tensor, y: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """PGD-perturbed ``x[rows]`` (untargeted, away from their label) against the surrogate."""
        from fortify.attacks import ATTACKS
        from fortify.threat import ThreatModel

        if self.eps == 0 or rows.numel() == 0:
            return x[rows]
        model = self._surrogate
        if model is None:
            with torch.random.fork_rng():  # the surrogate's init only: the caller's RNG is left as it was
                torch.manual_seed(self.seed)
                model = nn.Sequential(nn.Flatten(), nn.Linear(x[0].numel(), 128), nn.ReLU(),
                                      nn.Linear(128, int(y.max()) + 1))
            fit(model, x, y, epochs=self.surrogate_epochs, seed=self.seed)
        attack = ATTACKS.create("pgd", steps=self.steps)
        gen = torch.Generator().manual_seed(self.seed + 1)
        res = attack(model, x[rows], y[rows], ThreatModel("linf", self.eps), generator=gen)
        return res.x_adv.detach()
