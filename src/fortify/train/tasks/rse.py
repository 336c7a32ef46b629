"""Random self-ensemble training (Liu et al. 2018, "Towards robust neural networks via random
self-ensemble").

Trains with Gaussian noise in front of every convolution: cross-entropy of the noisy forward pass.
If the model already has :class:`~fortify.train.adversarial.noise.NoiseLayer` modules (from the
:func:`~fortify.train.adversarial.noise.add_noise_layers` transform) those are used; otherwise the
same noise is added for the duration of the step with forward pre-hooks, so the ``rse`` task also
works from a recipe on a plain model. Noise is drawn from the call's ``generator`` (the Trainer's:
exact resume).
At inference wrap the noisy model in :class:`~fortify.train.adversarial.noise.SelfEnsemble`.
Shapes: ``x (B, ...)``, ``y (B,)``; ``logits (B, C)`` of the noisy pass. No input gradients.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from fortify.train.adversarial.base import positive
from fortify.train.adversarial.noise import layer_generators, noise_hooks, noise_layers
from fortify.train.tasks.base import Task, TaskOutput
from fortify.train.tasks.registry import TASKS


@TASKS.register("rse", help="random self-ensemble: train with noise layers (Liu et al. 2018)")
class RSE(Task):
    """RSE. Args: ``init_std`` (first noise layer, 0.2), ``inner_std`` (others, 0.1), ``linear``
    (also noise before linear layers)."""

    def __init__(self, init_std: float = 0.2, inner_std: float = 0.1, linear: bool = False) -> None:
        super().__init__()
        self.init_std = positive(init_std, "init_std", allow_zero=True)
        self.inner_std = positive(inner_std, "inner_std", allow_zero=True)
        self.linear = bool(linear)
        self.grad_evals_total = 0

    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             generator: torch.Generator | None) -> TaskOutput:
        """Cross-entropy of one noisy pass over ``x (B, ...)``; logits ``(B, C)``. The noise comes from
        ``generator``: the model's NoiseLayers draw from it for the duration of the call (their own
        generators restored afterwards), or temporary hooks do on a model without them."""
        layers = noise_layers(model)
        if layers:
            with layer_generators(layers, generator):
                logits = model(x)
        else:
            with noise_hooks(model, self.init_std, self.inner_std, generator, self.linear):
                logits = model(x)
        return TaskOutput(F.cross_entropy(logits, y), logits, {"grad_evals": 0})

    def state_dict(self) -> dict[str, Any]:
        return {"grad_evals_total": self.grad_evals_total}

    def __repr__(self) -> str:
        return f"RSE(init_std={self.init_std}, inner_std={self.inner_std}, linear={self.linear})"

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.grad_evals_total = int(state.get("grad_evals_total", 0))
