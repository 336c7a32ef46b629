"""STRIP (Gao, Xu, Wang, Chen, Ranasinghe & Nepal 2019, ACSAC, "STRIP: a defence against trojan attacks on
deep neural networks"): a triggered input keeps its (attack) label when other images are superimposed
on it, so its predictions have low entropy; a clean input's predictions scatter.

For an input ``x``, ``overlays`` clean images ``x_j`` are drawn from the reference set and superimposed:
``clip(x + x_j, 0, 1)`` (``superimpose="add"``, the paper's ``addWeighted(x, 1, x_j, 1)``: on dark-background
images such as MNIST the trigger survives intact) or ``0.5 x + 0.5 x_j`` (``"mean"``, which halves the trigger
and misses most BadNets / blended inputs on MNIST: FAR 35-60% vs 0.5-4% measured); the STRIP statistic is the mean Shannon entropy (nats) of the softmax over those
blends. Calibration on the clean reference set ``x`` (the call's input): the threshold is the ``frr``
quantile of the clean entropies, so a fraction ``frr`` of clean inputs is rejected (false rejection
rate; 1% by default, the paper's setting). ``scorer(x') -> (M,)`` returns ``-entropy`` (higher = more
suspicious); an input is flagged when its entropy is below the threshold. The false acceptance rate
on triggered inputs is :func:`far_at_frr`.

This is an input-level detector: ``flagged`` / ``target`` of the result are not a model verdict (False /
None); ``sample_scores`` are the reference inputs' scores. Cost: ``overlays`` forward rows per input.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from fortify.audit.backdoor._ops import predict_logits
from fortify.audit.backdoor.detect import BACKDOOR_DETECTORS, BackdoorDetection, BackdoorDetector, check_positive
from fortify.errors import ConfigError
from fortify.models.state import frozen
from fortify.validation import check_images


SUPERIMPOSE = ("add", "mean")


def strip_entropy(model: nn.Module, x: torch.Tensor, reference: torch.Tensor, overlays: int,
                  gen: torch.Generator, batch_size: int = 512, superimpose: str = "add") -> torch.Tensor:
    """Mean prediction entropy ``(N,)`` of ``x (N, C, H, W)`` superimposed (``add``: ``clip(x + x_j, 0, 1)``;
    ``mean``: ``(x + x_j) / 2``) with ``overlays`` images drawn (with replacement) from ``reference (R, C, H, W)``."""
    picks = torch.randint(0, reference.shape[0], (x.shape[0], overlays), generator=gen).to(x.device)
    mixed = (x[:, None] + reference[picks]).clamp(0, 1) if superimpose == "add" else 0.5 * (x[:, None] + reference[picks])
    blends = mixed.reshape(-1, *x.shape[1:])
    logp = F.log_softmax(predict_logits(model, blends, batch_size).double(), dim=1)
    ent = -(logp.exp() * logp).sum(1)
    return ent.view(x.shape[0], overlays).mean(1).to(torch.float32)


def far_at_frr(clean_entropy: torch.Tensor, triggered_entropy: torch.Tensor, frr: float = 0.01) -> tuple[float, float]:
    """``(FAR, threshold)``: the threshold is the ``frr`` quantile of the clean entropies ``(N,)``; FAR is the
    fraction of triggered entropies ``(M,)`` at or above it (accepted as clean)."""
    thr = float(torch.quantile(clean_entropy.double(), frr))
    return float((triggered_entropy >= thr).double().mean()), thr


@BACKDOOR_DETECTORS.register("strip", help="STRIP (Gao et al. 2019): prediction entropy under superimposition")
class Strip(BackdoorDetector):
    """Input-level: calibrate an entropy threshold on clean inputs at a fixed false-rejection rate."""

    level = "input"

    def __init__(self, overlays: int = 20, frr: float = 0.01, superimpose: str = "add", seed: int = 0,
                 batch_size: int = 512) -> None:
        super().__init__(seed, batch_size)
        if superimpose not in SUPERIMPOSE:
            raise ConfigError(f"superimpose must be one of {', '.join(SUPERIMPOSE)}, got {superimpose!r}")
        self.superimpose = superimpose
        self.overlays = int(check_positive(overlays, "overlays", integer=True))
        if isinstance(frr, bool) or not isinstance(frr, (int, float)) or not 0 < frr < 1:
            raise ConfigError(f"frr must be a number in (0, 1) (the false rejection rate), got {frr!r}")
        self.frr = float(frr)

    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None, classes: int) -> BackdoorDetection:
        gen = torch.Generator().manual_seed(self.seed)
        ent = strip_entropy(model, x, x, self.overlays, gen, self.batch_size, self.superimpose)
        thr = float(torch.quantile(ent.double(), self.frr))
        reference = x.clone()

        def scorer(xq: torch.Tensor) -> torch.Tensor:
            """``-entropy (M,)`` of ``xq (M, C, H, W)`` (higher = more likely triggered)."""
            q = check_images(xq, name="x").detach()
            with frozen(model):
                return -strip_entropy(model, q, reference, self.overlays,
                                      torch.Generator().manual_seed(self.seed + 1), self.batch_size, self.superimpose)

        evidence = {"frr": self.frr, "overlays": self.overlays, "superimpose": self.superimpose, "clean_entropy_mean": float(ent.mean()),
                    "max_entropy": math.log(classes)}
        return BackdoorDetection(self.name, "input", float("nan"), False, None, evidence, sample_scores=-ent,
                                 sample_flags=ent < thr, threshold=thr, scorer=scorer)
