"""Neural Cleanse unlearning (Wang et al. 2019, IEEE S&P, Sec. VI-C "patching via unlearning").

On a copy of the model: Neural Cleanse reverse-engineers the minimal trigger of every class on the
defender's clean set ``x (N, C, H, W)`` and picks the flagged target (the smallest-mask class when nothing
is flagged: the evidence says so); then the copy is fine-tuned for ``epochs`` on ``(x, y)`` with the
reversed trigger stamped on a ``fraction`` of every minibatch, keeping the TRUE labels, so the trigger
stops meaning the target. Cost: one Neural Cleanse scan plus ``epochs * N`` training rows.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fortify.audit.backdoor._ops import fit, owned_copy
from fortify.audit.backdoor.detect import check_positive
from fortify.audit.backdoor.mitigate import BACKDOOR_MITIGATIONS, Mitigation
from fortify.audit.backdoor.neural_cleanse import verdict
from fortify.audit.backdoor.reverse import ReverseOptions, reverse_triggers
from fortify.errors import ConfigError


@BACKDOOR_MITIGATIONS.register("nc-unlearning", help="Neural Cleanse unlearning: fine-tune with the reversed trigger, true labels")
class NeuralCleanseUnlearning(Mitigation):
    """Reverse-engineer the trigger, then unlearn it (module docstring)."""

    def __init__(self, steps: int = 300, fraction: float = 0.2, epochs: int = 3, lr: float = 1e-3,
                 batch_size: int = 64, threshold: float | None = None, seed: int = 0) -> None:
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
            raise ConfigError(f"fraction must be a number in (0, 1], got {fraction!r}")
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ConfigError(f"epochs must be a positive integer, got {epochs!r}")
        self.steps = int(check_positive(steps, "steps", integer=True))
        self.fraction, self.epochs = float(fraction), epochs
        self.lr = float(check_positive(lr, "lr"))
        self.batch_size = int(check_positive(batch_size, "batch_size", integer=True))
        self.threshold = None if threshold is None else float(check_positive(threshold, "threshold"))
        self.seed = seed

    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[nn.Module, dict[str, Any]]:
        gen = torch.Generator().manual_seed(self.seed)
        classes = int(y.max()) + 1
        with torch.no_grad():
            classes = max(classes, int(model(x[:1]).shape[1]))
        ref = x[torch.randperm(x.shape[0], generator=gen)[:256]]
        rev = reverse_triggers(model, ref, classes, ReverseOptions(steps=self.steps), gen)
        score, flagged, target, _, _ = verdict(rev, self.threshold)
        m, p = rev.masks[target], rev.patterns[target]

        def stamp(xb: torch.Tensor, yb: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
            sel = (torch.rand(xb.shape[0], generator=g) < self.fraction).to(xb.device)
            out = xb.clone()
            out[sel] = (1 - m) * xb[sel] + m * p
            return out, yb

        new = owned_copy(model)
        fit(new, x, y, epochs=self.epochs, lr=self.lr, batch_size=self.batch_size, seed=self.seed, augment=stamp)
        return new, {"target": target, "flagged": flagged, "anomaly_index": score,
                     "mask_l1": float(rev.norms[target])}
