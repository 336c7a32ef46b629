"""Data-free trigger search (in the spirit of DeepInspect, Chen, Fu, Zhao & Koushanfar 2019, IJCAI, and
T-Miner, Azizi et al. 2021): no clean data is needed.

1. Model inversion: ``per_class`` inputs per class are synthesised from uniform noise by maximising the
   class's log-probability with a total-variation prior (DeepInspect's substitute training set), for
   ``inversion_steps`` Adam steps on a sigmoid parametrisation (inputs stay in [0, 1]).
2. Trigger search: Neural Cleanse's minimal-trigger reverse-engineering, batched over classes, runs on the
   synthesised inputs; the MAD outlier test on the mask norms gives the verdict and the suspected target.

``x`` only gives the input shape (no pixel of it is read). Evidence as Neural Cleanse's plus the
synthesised inputs' mean confidence. Cost: ``inversion_steps * K * per_class`` plus the trigger search's
``steps * K * batch`` forward/backward rows.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fortify.audit.backdoor.detect import BACKDOOR_DETECTORS, BackdoorDetection, BackdoorDetector, check_positive
from fortify.audit.backdoor.neural_cleanse import Scale, check_statistic, model_level
from fortify.audit.backdoor.reverse import ReverseOptions, reverse_triggers


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation per image ``(N,)`` of ``x (N, C, H, W)`` (mean absolute neighbour difference)."""
    dh = (x[:, :, 1:, :] - x[:, :, :-1, :]).abs().flatten(1).mean(1)
    dw = (x[:, :, :, 1:] - x[:, :, :, :-1]).abs().flatten(1).mean(1)
    return dh + dw


def invert(model: nn.Module, shape: tuple[int, int, int], classes: int, per_class: int, steps: int,
           tv: float, gen: torch.Generator, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``(K * per_class, C, H, W)`` inputs in [0, 1] synthesised from noise, ``per_class`` per class, each
    pushed towards its class by ``steps`` Adam steps on ``CE + tv * TV``. ``model`` must be frozen."""
    labels = torch.arange(classes, device=device).repeat_interleave(per_class)
    z = (torch.rand(labels.numel(), *shape, generator=gen) * 2 - 1).to(device=device, dtype=dtype)
    z.requires_grad_(True)
    opt = torch.optim.Adam([z], lr=0.1)
    with torch.enable_grad():
        for _ in range(steps):
            xs = torch.sigmoid(z)
            loss = F.cross_entropy(model(xs), labels) + tv * total_variation(xs).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return torch.sigmoid(z).detach()


@BACKDOOR_DETECTORS.register("data-free", help="data-free trigger search on model-inverted inputs (DeepInspect spirit)")
class DataFreeScan(BackdoorDetector):
    """Model-level, no clean data: model inversion, then a minimal trigger per class and the MAD test."""

    level = "model"
    min_classes = 3  # the MAD outlier test across classes

    def __init__(self, per_class: int = 8, inversion_steps: int = 50, tv: float = 0.5, steps: int = 300,
                 batch: int = 32, lr: float = 0.1, init_cost: float = 1e-3, threshold: float | None = None,
                 seed: int = 0, batch_size: int = 256, scale: Scale = "log", fwer: float = 0.1) -> None:
        super().__init__(seed, batch_size)
        self.per_class = int(check_positive(per_class, "per_class", integer=True))
        self.inversion_steps = int(check_positive(inversion_steps, "inversion_steps", integer=True))
        if isinstance(tv, bool) or not isinstance(tv, (int, float)) or tv < 0:
            from fortify.errors import ConfigError

            raise ConfigError(f"tv must be a number >= 0, got {tv!r}")
        self.tv = float(tv)
        self.options = ReverseOptions(steps=int(check_positive(steps, "steps", integer=True)),
                                      batch=int(check_positive(batch, "batch", integer=True)),
                                      lr=float(check_positive(lr, "lr")),
                                      init_cost=float(check_positive(init_cost, "init_cost")))
        self.threshold, self.scale, self.fwer = check_statistic(threshold, scale, fwer)

    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None, classes: int) -> BackdoorDetection:
        gen = torch.Generator().manual_seed(self.seed)
        shape = (int(x.shape[1]), int(x.shape[2]), int(x.shape[3]))
        synth = invert(model, shape, classes, self.per_class, self.inversion_steps, self.tv, gen, x.device, x.dtype)
        with torch.no_grad():
            conf = float(F.softmax(model(synth), 1).max(1).values.mean())
        rev = reverse_triggers(model, synth, classes, self.options, gen)
        res = model_level(self.name, rev, self.threshold, self.scale, self.fwer)
        res.evidence["synthetic_confidence"] = conf
        res.evidence["synthetic"] = synth
        return res
