"""Targeted dropout around any base task (Gomez, Zhang, Kamalakara, Madaan, Swersky, Gal, Hinton
2019, "Learning sparse networks using targeted dropout").

During training, for every output unit of every ``Conv2d``/``Linear`` (each row of ``W (U, ...)``),
the ``gamma`` fraction of weights with the smallest magnitude are the *targets*; each target is
dropped (set to 0) independently with probability ``alpha``, afresh at every forward pass. The
network learns to rely on its large weights, so a later magnitude pruning at rate ``gamma`` costs
little accuracy (the ``targeted_dropout_prune`` transform of :mod:`fortify.compress.prune` does
both). ``base="pgd_at"`` gives adversarial targeted dropout: the base task's attack runs the model
in eval mode, where nothing is dropped.

The dropped weights enter through ``torch.func.functional_call`` (the model's own parameters are
never written; gradients reach them through the mask), so any model with ``Conv2d``/``Linear``
layers works. Cost per forward pass: one ``kthvalue`` per weight row on top of the base task.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import torch
from torch import nn
from torch.func import functional_call

from fortify.errors import ConfigError
from fortify.train.tasks.base import Task, TaskOutput
from fortify.train.tasks.registry import TASKS


def targeted_dropout_weight(w: torch.Tensor, gamma: float, alpha: float, generator: torch.Generator | None) -> torch.Tensor:
    """Drop each of the ``gamma`` smallest-|w| weights of every row of ``w (U, ...)`` with probability ``alpha``;
    the drop draws come from ``generator`` (on its own device, then moved to ``w``'s; None: the global RNG)."""
    rows = w.reshape(w.shape[0], -1)
    k = int(gamma * rows.shape[1])
    if k == 0 or alpha == 0:
        return w
    thresh = rows.detach().abs().kthvalue(k, dim=1, keepdim=True).values
    target = rows.detach().abs() <= thresh
    dev = generator.device if generator is not None else w.device
    drop = (torch.rand(rows.shape, generator=generator, device=dev) < alpha).to(w.device)
    return (rows * ~(target & drop)).reshape(w.shape)


def _fraction(value: object, name: str) -> float:
    """A number in ``[0, 1]``; ConfigError naming ``name`` otherwise."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))
    if not (ok and 0.0 <= float(value) <= 1.0):  # type: ignore[arg-type]
        raise ConfigError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)  # type: ignore[arg-type]


class TargetedDropoutNet(nn.Module):
    """``model`` whose ``Conv2d``/``Linear`` weights are targeted-dropped in training mode.

    Parameters stay ``model``'s own (shared), so training the wrapper trains the model. Only the
    wrapper's own ``training`` flag decides whether weights are dropped; ``model``'s flags are
    whatever the caller (or :mod:`fortify.models.state`) set. The drops are drawn from
    ``generator`` (None: torch's global RNG). Shapes: those of ``model``.
    """

    def __init__(self, model: nn.Module, gamma: float, alpha: float,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.model = model
        self.gamma, self.alpha = gamma, alpha
        self.generator = generator
        self.targets = [f"{n}.weight" if n else "weight" for n, m in model.named_modules()
                        if isinstance(m, (nn.Conv2d, nn.Linear))]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (N, ...)`` -> logits ``(N, K)``, with dropped weights when the wrapper is training."""
        if not self.training:
            return self.model(x)
        params = dict(self.model.named_parameters())
        dropped = {k: targeted_dropout_weight(params[k], self.gamma, self.alpha, self.generator) for k in self.targets}
        return functional_call(self.model, dropped, (x,))


@TASKS.register("targeted_dropout", help="targeted dropout around any base task (Gomez et al. 2019)")
class TargetedDropoutTask(Task):
    """Args: ``base`` task name and ``base_args``; ``gamma`` (targeted fraction) and ``alpha`` (drop rate) in [0, 1]."""

    def __init__(self, base: str = "standard", base_args: Mapping[str, Any] | None = None,
                 gamma: float = 0.5, alpha: float = 0.5) -> None:
        """Validate and store the hyper-parameters (ConfigError naming the bad one)."""
        super().__init__()
        if not isinstance(base, str) or base == self.name:
            raise ConfigError(f"targeted_dropout: base must be another task's name, got {base!r}")
        self.base: Task = TASKS.create(base, **dict(base_args or {}))
        self.gamma = _fraction(gamma, "gamma")
        self.alpha = _fraction(alpha, "alpha")

    @property
    def input_bounds(self) -> tuple[float, float]:
        """The wrapped task's input box (its threat model's bounds, if it has one)."""
        return self.base.input_bounds

    def set_progress(self, progress: float, epoch: int) -> None:
        """Forward training progress to the wrapped task too."""
        super().set_progress(progress, epoch)
        self.base.set_progress(progress, epoch)

    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             generator: torch.Generator | None) -> TaskOutput:
        """Run the base task on ``model`` with targeted dropout on its weights (when ``model`` is
        training); ``generator`` feeds both the drops and the base task. Shapes and metrics: the
        base task's."""
        net = TargetedDropoutNet(model, self.gamma, self.alpha, generator)
        net.training = model.training
        return self.base(net, x, y, generator=generator)

    def state_dict(self) -> dict[str, Any]:
        """The wrapped task's state (exact resume)."""
        return self.base.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the wrapped task's state."""
        self.base.load_state_dict(state)


__all__ = ["TargetedDropoutNet", "TargetedDropoutTask", "targeted_dropout_weight"]
