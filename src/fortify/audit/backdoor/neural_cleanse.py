"""Neural Cleanse (Wang, Yao, Shan, Li, Viswanath, Zheng & Zhao 2019, IEEE S&P, "Neural Cleanse: identifying
and mitigating backdoor attacks in neural networks").

A backdoor is a shortcut: the target label needs a much smaller trigger than any other label. For every
class the minimal mask + pattern is reverse-engineered on clean reference inputs
(:func:`fortify.audit.backdoor.reverse.reverse_triggers`, batched over classes), and the L1 norms of the
masks go through the paper's one-sided MAD outlier test: anomaly index ``(median - v_k) / (1.4826 MAD)``, only
classes below the median count; the most anomalous class is the suspected target.

Two corrections to the paper's test, both measured on the backdoor zoo (benchmarks/README.md, Backdoors):

* ``scale="log"`` (default): ``v_k = log |m_k|_1``. Mask sizes are scale quantities that vary multiplicatively
  across clean classes (an MNIST "1" needs ~2-3x the mask of a "0"); on the linear scale a trigger of norm 0
  can reach at most ``median / (1.4826 MAD)``, about 2-3 on a ten-class model, so a tiny BadNets trigger
  scores no higher than a clean class's natural spread. ``scale="linear"`` is the paper's statistic.
* ``threshold=None`` (default): the threshold is the ``1 - fwer`` quantile of the largest one-sided index
  among ``K`` i.i.d. normal values (:func:`null_threshold`, ~3.15 at ``K = 10, fwer = 0.1``). The paper's 2 is a
  per-class 95% rule, but the verdict takes the most anomalous of ``K`` classes with the MAD estimated from
  those same ``K`` values: under that null a clean 10-class model is flagged ~33% of the time at 2.

Only classes whose reversed trigger reached the attack-success target (``reached``) enter the statistic and
can be flagged (the others keep their last mask, which is no minimal trigger); with fewer than 3 such classes
all classes are used. The median is the midpoint median (``numpy.median``, as in the paper's code).

``x``: clean reference images ``(N, C, H, W)`` (labels unused; 100-500 suffice). Evidence: ``norms``,
``anomaly`` (per class), ``success`` and ``reached`` (per class), ``masks (K, 1, H, W)``, ``patterns (K, C, H, W)``,
``threshold`` (the one applied), ``scale``. Cost: ``steps * K * batch`` forward/backward rows (``K`` classes).
"""
from __future__ import annotations

import functools
from typing import Literal

import torch
from torch import nn

from fortify.audit.backdoor.detect import (
    BACKDOOR_DETECTORS,
    MAD_CONSTANT,
    BackdoorDetection,
    BackdoorDetector,
    check_positive,
)
from fortify.audit.backdoor.reverse import ReverseOptions, ReversedTriggers, reverse_triggers
from fortify.errors import ConfigError

Scale = Literal["log", "linear"]


def one_sided_anomaly(values: torch.Tensor) -> torch.Tensor:
    """``(K,)`` one-sided MAD anomaly index ``(median - v) / (1.4826 MAD)`` of ``values (..., K)`` along the last
    axis (midpoint median; a zero MAD is clamped to 1e-12)."""
    med = values.quantile(0.5, dim=-1, keepdim=True)
    mad = (values - med).abs().quantile(0.5, dim=-1, keepdim=True) * MAD_CONSTANT
    return (med - values) / mad.clamp_min(1e-12)


@functools.lru_cache(maxsize=64)
def null_threshold(classes: int, fwer: float, draws: int = 20000) -> float:
    """The ``1 - fwer`` quantile of ``max_k`` one-sided anomaly index over ``classes`` i.i.d. standard normal
    values (fixed-seed Monte Carlo, ``draws`` draws): a clean model whose (log) mask norms are normal is flagged
    with probability ``fwer``. Depends on ``classes`` and ``fwer`` only, never on a model."""
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(draws, classes, generator=gen, dtype=torch.float64)
    top = one_sided_anomaly(v).max(1).values
    return float(top.quantile(1 - fwer))


def verdict(rev: ReversedTriggers, threshold: float | None = None, *, scale: Scale = "log",
            fwer: float = 0.1) -> tuple[float, bool, int, torch.Tensor, float]:
    """``(score, flagged, target, anomaly (K,), threshold)`` from reversed triggers (module docstring): the
    one-sided MAD index on the (log) mask norms of the classes that reached the success target."""
    norms = rev.norms.double().cpu()
    valid = rev.reached.bool().cpu()
    if int(valid.sum()) < 3:
        valid = torch.ones_like(valid)
    v = norms.clamp_min(1e-6).log() if scale == "log" else norms
    sub = one_sided_anomaly(v[valid])
    anomaly = torch.full_like(v, float("nan"))
    anomaly[valid] = sub
    k = int(torch.nonzero(valid).flatten()[int(sub.argmax())])
    thr = null_threshold(int(valid.sum()), fwer) if threshold is None else float(threshold)
    score = float(anomaly[k])
    return score, score > thr, k, anomaly, thr


def check_statistic(threshold: object, scale: object, fwer: object) -> tuple[float | None, Scale, float]:
    """Validated ``(threshold or None, scale, fwer)`` of a trigger-reversal detector (ConfigError otherwise)."""
    thr = None if threshold is None else float(check_positive(threshold, "threshold"))
    if scale not in ("log", "linear"):
        raise ConfigError(f"scale must be 'log' or 'linear', got {scale!r}")
    if isinstance(fwer, bool) or not isinstance(fwer, (int, float)) or not 0 < fwer < 1:
        raise ConfigError(f"fwer must be a number in (0, 1), got {fwer!r}")
    return thr, scale, float(fwer)  # type: ignore[return-value]


def model_level(name: str, rev: ReversedTriggers, threshold: float | None, scale: Scale = "log",
                fwer: float = 0.1) -> BackdoorDetection:
    """The shared model-level result of a trigger-reversal detector."""
    score, flagged, k, anomaly, thr = verdict(rev, threshold, scale=scale, fwer=fwer)
    evidence = {"norms": rev.norms.tolist(), "anomaly": anomaly.tolist(), "success": rev.success.tolist(),
                "reached": rev.reached.tolist(), "masks": rev.masks, "patterns": rev.patterns, "threshold": thr,
                "scale": scale, "fwer": fwer}
    return BackdoorDetection(name, "model", score, flagged, k if flagged else None, evidence, threshold=thr)


@BACKDOOR_DETECTORS.register("neural-cleanse", help="Neural Cleanse (Wang et al. 2019): minimal trigger per class, MAD")
class NeuralCleanse(BackdoorDetector):
    """Model-level: reverse-engineer a minimal trigger per class, flag an outlier-small one."""

    level = "model"
    min_classes = 3  # the MAD outlier test across classes

    def __init__(self, steps: int = 300, batch: int = 32, lr: float = 0.1, init_cost: float = 1e-3,
                 threshold: float | None = None, max_reference: int = 256, seed: int = 0, batch_size: int = 256,
                 scale: Scale = "log", fwer: float = 0.1) -> None:
        super().__init__(seed, batch_size)
        self.options = ReverseOptions(steps=int(check_positive(steps, "steps", integer=True)),
                                      batch=int(check_positive(batch, "batch", integer=True)),
                                      lr=float(check_positive(lr, "lr")),
                                      init_cost=float(check_positive(init_cost, "init_cost")))
        self.threshold, self.scale, self.fwer = check_statistic(threshold, scale, fwer)
        self.max_reference = int(check_positive(max_reference, "max_reference", integer=True))

    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None, classes: int) -> BackdoorDetection:
        gen = torch.Generator().manual_seed(self.seed)
        ref = x[torch.randperm(x.shape[0], generator=gen)[: self.max_reference].to(x.device)]
        rev = reverse_triggers(model, ref, classes, self.options, gen)
        return model_level(self.name, rev, self.threshold, self.scale, self.fwer)
