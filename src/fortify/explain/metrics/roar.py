"""ROAR: RemOve And Retrain (Hooker, Erhan, Kindermans & Kim 2019, "A benchmark for interpretability
methods in deep neural networks", NeurIPS).

Removing the pixels an attribution ranks highest degrades a model's accuracy partly because the
removal is out of distribution; ROAR retrains. For every fraction ``p`` in ``fractions`` (default
0.1, 0.3, 0.5, 0.7, 0.9) the ``round(p H W)`` pixels ranked first by the attribution (summed over
channels, ties in index order; one mask for all channels) are replaced by the per-channel mean of
the training images, in the training images (ranked by the method ``attribution`` +
``attribution_args`` on the *given* model, explaining their labels) and in the test images ``x``
(ranked by the ``attributions`` passed in); a **fresh model of the same architecture** (``model_factory()``;
default: a copy of ``model`` with every layer re-initialised under a seeded RNG) is trained on the
degraded training set (``retrain``: a :class:`RetrainConfig` (Adam, cross-entropy, ``epochs``) or
any callable ``(model, x, y) -> model``) and classifies the degraded test images. With
``random_baseline`` the same is done for a uniformly random ranking, the baseline an attribution
must beat (Hooker et al.: most methods do not).

``values (N,)``: the fraction of the ``K`` retrained models that still classify test image ``i``
as its ``target`` (so the mean over images is the mean accuracy over the fractions); a faithful
attribution removes the evidence, accuracy falls fast: **lower is better**. ``extra``:
``accuracy (K,)``, ``correct (N, K)``, ``fractions``, and with the baseline ``random_accuracy (K,)``,
``random_correct (N, K)``. Training data: ``train=(x_train, y_train)`` (ConfigError when missing).
Cost (expensive): ``K`` trainings (``2K`` with the baseline) of ``epochs`` passes over the training
set, one attribution of every training image, ``N K`` forward passes. On mnist-5k with small-cnn,
2 epochs and 5 fractions: ~10 trainings of ~5 s each on one CPU thread.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fortify.errors import ConfigError, InputError
from fortify.explain.base import DEFAULT_BATCH_SIZE, Attribution, check_inputs, check_positive_int
from fortify.explain.metrics.base import ATTRIBUTION_METRICS, AttributionMetric
from fortify.explain.metrics.randomisation import randomise
from fortify.explain.metrics.road import check_fractions
from fortify.explain.metrics.sensitivity import build_method
from fortify.explain.ops import predict_logits
from fortify.models.state import train_mode
from fortify.validation import check_finite_number, check_labels

__all__ = ["RemoveAndRetrain", "RetrainConfig", "remove_top", "fresh_copy"]

Retrain = Callable[[nn.Module, torch.Tensor, torch.Tensor], nn.Module]


@dataclass(frozen=True)
class RetrainConfig:
    """The default retraining: Adam (``lr``), cross-entropy, ``epochs`` passes in shuffled batches of
    ``batch`` images (seeded)."""

    epochs: int = 2
    lr: float = 1e-3
    batch: int = 64

    def __post_init__(self) -> None:
        check_positive_int(self.epochs, "retrain.epochs")
        check_positive_int(self.batch, "retrain.batch")
        if check_finite_number(self.lr, "retrain.lr") <= 0:
            raise ConfigError(f"retrain.lr must be > 0, got {self.lr!r}")

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> nn.Module:
        """Train ``model`` (owned by the caller: a fresh copy) in place; returns it. Uses the global RNG
        (the caller forks and seeds it)."""
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=self.lr)
        with train_mode(model), torch.enable_grad():
            for _ in range(self.epochs):
                perm = torch.randperm(x.shape[0]).to(x.device)
                for s in range(0, x.shape[0], self.batch):
                    idx = perm[s:s + self.batch]
                    loss = F.cross_entropy(model(x[idx]), y[idx])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
        return model


def fresh_copy(model: nn.Module, seed: int) -> nn.Module:
    """A copy of ``model`` with every parameterised module re-initialised (``reset_parameters``,
    seeded), all parameters trainable: the same architecture, untrained."""
    clone = copy.deepcopy(model)
    for j, module in enumerate(m for m in clone.modules() if any(True for _ in m.parameters(recurse=False))):
        randomise(module, seed + j)
    for p in clone.parameters():
        p.requires_grad_(True)
        p.grad = None
    return clone


def remove_top(x: torch.Tensor, scores: torch.Tensor, fraction: float, fill: torch.Tensor) -> torch.Tensor:
    """``x (N, C, H, W)`` with the ``round(fraction H W)`` pixels of highest ``scores (N, H, W)`` (ties in
    index order) set to ``fill (C,)``."""
    n, c, h, w = x.shape
    d = h * w
    order = torch.argsort(scores.reshape(n, d), dim=1, descending=True, stable=True)
    removed = torch.zeros(n, d, dtype=torch.bool, device=x.device)
    removed.scatter_(1, order[:, :round(fraction * d)], True)
    return torch.where(removed.reshape(n, 1, h, w), fill.reshape(1, c, 1, 1).to(x), x)


@ATTRIBUTION_METRICS.register("roar", help="remove-and-retrain: accuracy of a model retrained without the top pixels (lower is better)")
class RemoveAndRetrain(AttributionMetric):
    """ROAR (remove and retrain); lower is better. Needs ``train=(x_train, y_train)``."""

    higher_is_better = False
    stochastic = True

    def __init__(self, train: tuple[torch.Tensor, torch.Tensor] | None = None, attribution: str | Attribution = "saliency",
                 attribution_args: dict[str, Any] | None = None, fractions: Sequence[float] = (0.1, 0.3, 0.5, 0.7, 0.9),
                 retrain: RetrainConfig | Retrain | dict[str, Any] | None = None,
                 model_factory: Callable[[], nn.Module] | None = None, random_baseline: bool = True, seed: int = 0,
                 batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        super().__init__(batch_size)
        if train is not None and (not isinstance(train, (tuple, list)) or len(train) != 2):
            raise ConfigError("train must be a pair (x_train, y_train) of tensors")
        self.train = train
        self.method = build_method(attribution, attribution_args)
        self.fractions = check_fractions(fractions)
        self.retrain: Retrain = (RetrainConfig(**retrain) if isinstance(retrain, dict)
                                 else retrain if retrain is not None else RetrainConfig())
        if not callable(self.retrain):
            raise ConfigError(f"retrain must be a RetrainConfig, a mapping of its options or a callable, got {retrain!r}")
        if model_factory is not None and not callable(model_factory):
            raise ConfigError("model_factory must be a callable returning a fresh nn.Module")
        self.model_factory, self.random_baseline, self.seed = model_factory, bool(random_baseline), int(seed)

    def _train_data(self, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.train is None:
            raise ConfigError("roar retrains a model: give it training data, RemoveAndRetrain(train=(x_train, y_train))")
        xt = check_inputs(model, self.train[0], name="train x")
        if xt.dim() != 4 or xt.dtype != x.dtype:
            raise InputError(f"roar removes pixels: train x must be images (N, C, H, W) of x's dtype, got "
                             f"{tuple(xt.shape)} {xt.dtype}")
        classes = int(predict_logits(model, x[:1], 1).shape[1])
        return xt, check_labels(self.train[1], xt.shape[0], classes, name="train y").to(xt.device)

    def _accuracy(self, model: nn.Module, k: int, train: tuple[torch.Tensor, torch.Tensor],
                  test: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Train a fresh model on ``train`` (RNG forked, seeded per fraction) and return ``(N,)`` correct."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed + 7919 * k)
            fresh = self.model_factory() if self.model_factory is not None else fresh_copy(model, self.seed + 97 * k)
            if not isinstance(fresh, nn.Module):
                raise ConfigError(f"model_factory must return an nn.Module, got {type(fresh).__name__}")
            fresh = self.retrain(fresh, *train)
        with torch.no_grad():
            return (predict_logits(fresh, test, self.batch_size).argmax(dim=1) == target).to(test.dtype)

    def _run(self, model: nn.Module, x: torch.Tensor, attributions: torch.Tensor,
             target: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        if x.dim() != 4:
            raise InputError(f"roar removes pixels: x must be images (N, C, H, W), got shape {tuple(x.shape)}")
        xt, yt = self._train_data(model, x)
        fill = xt.mean(dim=(0, 2, 3))
        train_scores = self.method(model, xt, yt).sum(dim=1)
        test_scores = attributions.sum(dim=1)
        g = torch.Generator().manual_seed(self.seed)
        rand_train = torch.rand(train_scores.shape, generator=g).to(xt)
        rand_test = torch.rand(test_scores.shape, generator=g).to(x)
        correct, rand_correct = [], []
        for k, f in enumerate(self.fractions):
            correct.append(self._accuracy(model, k, (remove_top(xt, train_scores, f, fill), yt),
                                          remove_top(x, test_scores, f, fill), target))
            if self.random_baseline:
                rand_correct.append(self._accuracy(model, k, (remove_top(xt, rand_train, f, fill), yt),
                                                   remove_top(x, rand_test, f, fill), target))
        c = torch.stack(correct, dim=1)
        extra: dict[str, Any] = {"accuracy": c.mean(dim=0), "correct": c, "fractions": list(self.fractions)}
        if rand_correct:
            rc = torch.stack(rand_correct, dim=1)
            extra.update(random_accuracy=rc.mean(dim=0), random_correct=rc)
        return c.mean(dim=1), extra
