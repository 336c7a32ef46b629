"""Max-sensitivity (Yeh et al. 2019, "On the (in)fidelity and sensitivity of explanations").

``SENS_max(a, x) = max_{|d|_inf <= r} ||a(x + d) - a(x)||_F / ||a(x)||_F`` estimated from
``samples`` uniform draws in the L-inf ball of radius ``radius`` (:func:`sensitivity_noise`:
``(N, samples, *sample)``, seeded); ``a`` is the attribution method named by ``attribution``
(built from the registry with ``attribution_args``), and the ``attributions`` passed in are taken as
``a(x)`` (so they must come from that method). A zero ``||a(x)||`` divides by 1 (Captum's rule).
Matches Captum's ``sensitivity_max`` given the same perturbations. **Lower is better**.
Cost: ``samples`` calls of the attribution method on ``N`` perturbed inputs (``N samples`` rows).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fortify.errors import ConfigError
from fortify.explain.base import ATTRIBUTIONS, DEFAULT_BATCH_SIZE, Attribution, check_positive_int
from fortify.explain.metrics.base import ATTRIBUTION_METRICS, AttributionMetric
from fortify.validation import check_finite_number


def sensitivity_noise(x: torch.Tensor, samples: int, radius: float, seed: int) -> torch.Tensor:
    """``(N, samples, *sample)`` uniform perturbations in ``[-radius, radius]`` (CPU generator, seed)."""
    g = torch.Generator().manual_seed(seed)
    shape = (x.shape[0], samples) + tuple(x.shape[1:])
    return ((torch.rand(shape, generator=g, dtype=x.dtype) * 2 - 1) * radius).to(x.device)


def build_method(attribution: str | Attribution, args: dict[str, Any] | None) -> Attribution:
    """An attribution method from its registry name (with ``args``) or an instance."""
    if isinstance(attribution, Attribution):
        return attribution
    if not isinstance(attribution, str):
        raise ConfigError(f"attribution must be a registered name or an Attribution, got {type(attribution).__name__}")
    made: Attribution = ATTRIBUTIONS.create(attribution, **(args or {}))
    return made


@ATTRIBUTION_METRICS.register("max-sensitivity", help="largest relative change of the attribution under small noise (lower is better)")
class MaxSensitivity(AttributionMetric):
    """Max-sensitivity of an attribution method; lower is better."""

    higher_is_better = False
    stochastic = True

    def __init__(self, attribution: str | Attribution = "saliency", attribution_args: dict[str, Any] | None = None,
                 radius: float = 0.02, samples: int = 10, seed: int = 0, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        super().__init__(batch_size)
        self.method = build_method(attribution, attribution_args)
        self.radius = check_finite_number(radius, "radius")
        if self.radius <= 0:
            raise ConfigError(f"radius must be > 0, got {radius!r}")
        self.samples = check_positive_int(samples, "samples")
        self.seed = int(seed)

    def _run(self, model: nn.Module, x: torch.Tensor, attributions: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        n, s = x.shape[0], self.samples
        pert = sensitivity_noise(x, s, self.radius, self.seed).reshape((n * s,) + tuple(x.shape[1:]))
        moved = self.method(model, x.repeat_interleave(s, dim=0) + pert, target.repeat_interleave(s))
        diff = (moved - attributions.repeat_interleave(s, dim=0)).reshape(n, s, -1).norm(dim=2)
        norm = attributions.reshape(n, -1).norm(dim=1, keepdim=True)
        return (diff / torch.where(norm == 0, torch.ones_like(norm), norm)).max(dim=1).values
