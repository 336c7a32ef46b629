"""Neural Cleanse (Wang, Yao, Shan, Li, Viswanath, Zheng & Zhao 2019, IEEE S&P, "Neural Cleanse: identifying
and mitigating backdoor attacks in neural networks").

A backdoor is a shortcut: the target label needs a much smaller trigger than any other label. For every
class the minimal mask + pattern is reverse-engineered on clean reference inputs
(:func:`fortify.audit.backdoor.reverse.reverse_triggers`, batched over classes), and the L1 norms of the
masks go through the MAD outlier test: anomaly index ``(median - |m_k|) / (1.4826 MAD)``; the model is
flagged when the smallest mask's index exceeds ``threshold`` (2 in the paper), and that class is the
suspected target. A reversed trigger that does not reach the success threshold keeps its last mask.

``x``: clean reference images ``(N, C, H, W)`` (labels unused; 100-500 suffice). Evidence: ``norms``,
``anomaly`` (per class), ``success`` (per class), ``masks (K, 1, H, W)`` and ``patterns (K, C, H, W)``.
Cost: ``steps * K * batch`` forward/backward rows (``K`` classes).
"""
from __future__ import annotations

import torch
from torch import nn

from fortify.audit.backdoor.detect import BACKDOOR_DETECTORS, BackdoorDetection, BackdoorDetector, check_positive
from fortify.audit.backdoor.reverse import ReverseOptions, ReversedTriggers, reverse_triggers


def verdict(rev: ReversedTriggers, threshold: float) -> tuple[float, bool, int, torch.Tensor]:
    """``(score, flagged, target, anomaly (K,))`` from reversed triggers: MAD on the mask norms, one-sided
    (only masks smaller than the median count as suspicious)."""
    norms = rev.norms.double()
    med = norms.median()
    mad = (norms - med).abs().median() * 1.4826
    anomaly = (med - norms) / mad.clamp_min(1e-12)
    k = int(norms.argmin())
    score = float(anomaly[k])
    return score, score > threshold, k, anomaly


def model_level(name: str, rev: ReversedTriggers, threshold: float) -> BackdoorDetection:
    """The shared model-level result of a trigger-reversal detector."""
    score, flagged, k, anomaly = verdict(rev, threshold)
    evidence = {"norms": rev.norms.tolist(), "anomaly": anomaly.tolist(), "success": rev.success.tolist(),
                "masks": rev.masks, "patterns": rev.patterns, "threshold": threshold}
    return BackdoorDetection(name, "model", score, flagged, k if flagged else None, evidence,
                             threshold=threshold)


@BACKDOOR_DETECTORS.register("neural-cleanse", help="Neural Cleanse (Wang et al. 2019): minimal trigger per class, MAD")
class NeuralCleanse(BackdoorDetector):
    """Model-level: reverse-engineer a minimal trigger per class, flag an outlier-small one."""

    level = "model"
    min_classes = 3  # the MAD outlier test across classes

    def __init__(self, steps: int = 300, batch: int = 32, lr: float = 0.1, init_cost: float = 1e-3,
                 threshold: float = 2.0, max_reference: int = 256, seed: int = 0, batch_size: int = 256) -> None:
        super().__init__(seed, batch_size)
        self.options = ReverseOptions(steps=int(check_positive(steps, "steps", integer=True)),
                                      batch=int(check_positive(batch, "batch", integer=True)),
                                      lr=float(check_positive(lr, "lr")),
                                      init_cost=float(check_positive(init_cost, "init_cost")))
        self.threshold = float(check_positive(threshold, "threshold"))
        self.max_reference = int(check_positive(max_reference, "max_reference", integer=True))

    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None, classes: int) -> BackdoorDetection:
        gen = torch.Generator().manual_seed(self.seed)
        ref = x[torch.randperm(x.shape[0], generator=gen)[: self.max_reference].to(x.device)]
        rev = reverse_triggers(model, ref, classes, self.options, gen)
        return model_level(self.name, rev, self.threshold)
