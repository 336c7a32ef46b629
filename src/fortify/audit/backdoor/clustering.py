"""Data-level detectors on the penultimate representation (the input of the classifier head):

* Activation clustering (Chen, Carvalho, Baracaldo, Ludwig, Edwards, Lee, Molloy & Srivastava 2018,
  "Detecting backdoor attacks on deep neural networks by activation clustering"): per label, the rows'
  activations are centred, reduced to ``dims`` dimensions (PCA by SVD; the paper uses ICA, ART uses PCA
  by default) and split by 2-means (k-means++ seeding, ``restarts`` restarts). Poisoned rows form a
  small, well-separated cluster: a label is flagged when its smaller cluster holds at most
  ``max_size`` of the rows and the split's silhouette is at least ``min_silhouette``; the rows of the
  smaller cluster of a flagged label are flagged.
* Spectral signatures (Tran, Li & Madry 2018, NeurIPS, "Spectral signatures in backdoor attacks"): per
  label, the outlier score of a row is its squared projection on the top right singular vector of the
  centred representations; the ``1.5 * eps * n`` highest-scoring rows of EVERY label are removed (the
  paper's rule; ``eps`` an upper bound on the poisoned fraction), so a clean set loses rows too. The
  verdict: per label the spectral ratio ``s1^2 / s2^2``; the label with the largest MAD anomaly index
  of that ratio is the suspected target, flagged above ``threshold``.

``layer``: ``penultimate`` (the papers' choice: the input of the last Linear layer) or ``features`` (the
input of the first Linear layer: a CNN's flattened convolutional features, where the poisoned rows of a
small MNIST network separate better; see benchmarks/README.md). Both take the training set ``x (N, C, H, W)`` with its labels ``y (N,)``. Cost: one forward pass and a
``(n_c, D)`` SVD per label (plus ``restarts`` 2-means runs of ``iters`` steps for clustering).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from fortify.audit.backdoor._ops import LAYERS, penultimate
from fortify.audit.backdoor.detect import (
    BACKDOOR_DETECTORS, BackdoorDetection, BackdoorDetector, check_positive, mad_anomaly,
)
from fortify.errors import ConfigError


def two_means(z: torch.Tensor, gen: torch.Generator, restarts: int = 5, iters: int = 50) -> torch.Tensor:
    """Cluster assignment ``(n,)`` in {0, 1} of the rows of ``z (n, d)`` by 2-means (k-means++ seeding),
    the lowest-inertia run of ``restarts``."""
    best, best_inertia = torch.zeros(z.shape[0], dtype=torch.long), math.inf
    if z.shape[0] < 2:
        return best
    for _ in range(restarts):
        c0 = z[torch.randint(0, z.shape[0], (1,), generator=gen)]
        d = ((z - c0) ** 2).sum(1)
        c1 = z[torch.multinomial(d / d.sum(), 1, generator=gen)] if float(d.sum()) > 0 else c0
        cents = torch.cat([c0, c1])
        for _ in range(iters):
            assign = torch.cdist(z, cents).argmin(1)
            new = torch.stack([z[assign == j].mean(0) if bool((assign == j).any()) else cents[j] for j in range(2)])
            if torch.allclose(new, cents):
                break
            cents = new
        inertia = float(((z - cents[assign]) ** 2).sum())
        if inertia < best_inertia:
            best, best_inertia = assign, inertia
    return best


def silhouette(z: torch.Tensor, assign: torch.Tensor) -> float:
    """Mean silhouette coefficient (Rousseeuw 1987) of a 2-cluster assignment of ``z (n, d)``; 0 when a
    cluster is empty or a singleton-only split."""
    if int(assign.min()) == int(assign.max()):
        return 0.0
    d = torch.cdist(z.double(), z.double())
    s = torch.zeros(z.shape[0], dtype=torch.float64)
    for j in (0, 1):
        own, other = assign == j, assign != j
        n_own = int(own.sum())
        a = d[own][:, own].sum(1) / max(1, n_own - 1)
        b = d[own][:, other].mean(1)
        s[own] = torch.where(torch.tensor(n_own > 1), (b - a) / torch.maximum(a, b).clamp_min(1e-12),
                             torch.zeros_like(a))
    return float(s.mean())


def reduce_pca(a: torch.Tensor, dims: int) -> torch.Tensor:
    """``(n, min(dims, n, d))`` projection of centred ``a (n, d)`` on its top principal directions."""
    a = a - a.mean(0, keepdim=True)
    _, _, vh = torch.linalg.svd(a.double(), full_matrices=False)
    return (a.double() @ vh[:dims].T).to(a.dtype)


def _check_layer(layer: object) -> str:
    if layer not in LAYERS:
        raise ConfigError(f"layer must be one of {', '.join(LAYERS)}, got {layer!r}")
    return str(layer)


def _check_fraction(v: object, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1:
        raise ConfigError(f"{name} must be a number in (0, 1), got {v!r}")
    return float(v)


@BACKDOOR_DETECTORS.register("activation-clustering", help="activation clustering (Chen et al. 2018): 2-means per label")
class ActivationClustering(BackdoorDetector):
    """Data-level: a small, well-separated cluster of a label's activations is poisoned."""

    level = "data"
    needs_labels = True

    def __init__(self, dims: int = 10, max_size: float = 0.35, min_silhouette: float = 0.25, restarts: int = 5,
                 layer: str = "penultimate", seed: int = 0, batch_size: int = 512) -> None:
        super().__init__(seed, batch_size)
        self.layer = _check_layer(layer)
        self.dims = int(check_positive(dims, "dims", integer=True))
        self.max_size = _check_fraction(max_size, "max_size")
        self.min_silhouette = _check_fraction(min_silhouette, "min_silhouette")
        self.restarts = int(check_positive(restarts, "restarts", integer=True))

    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None, classes: int) -> BackdoorDetection:
        assert y is not None
        gen = torch.Generator().manual_seed(self.seed)
        acts = penultimate(model, x, self.batch_size, self.layer).cpu()
        yc = y.cpu()
        flags = torch.zeros(x.shape[0], dtype=torch.bool)
        scores = torch.zeros(x.shape[0])
        sizes, sils = [math.nan] * classes, [math.nan] * classes
        for c in range(classes):
            rows = torch.nonzero(yc == c).flatten()
            if rows.numel() < 4:
                continue
            z = reduce_pca(acts[rows], self.dims)
            assign = two_means(z, gen, self.restarts)
            small = int((assign == 1).sum() < (assign == 0).sum())
            size = float((assign == small).float().mean())
            sil = silhouette(z, assign)
            sizes[c], sils[c] = size, sil
            in_small = assign == small
            scores[rows[in_small]] = sil
            if size <= self.max_size and sil >= self.min_silhouette:
                flags[rows[in_small]] = True
        per_class = torch.tensor([s if (not math.isnan(s) and r <= self.max_size) else 0.0
                                  for s, r in zip(sils, sizes)])
        k = int(per_class.argmax())
        flagged = bool(flags.any())
        evidence = {"relative_size": sizes, "silhouette": sils, "max_size": self.max_size,
                    "min_silhouette": self.min_silhouette, "flagged_classes": sorted(set(yc[flags].tolist()))}
        return BackdoorDetection(self.name, "data", float(per_class[k]), flagged, k if flagged else None, evidence,
                                 sample_scores=scores, sample_flags=flags, threshold=self.min_silhouette)


@BACKDOOR_DETECTORS.register("spectral-signatures", help="spectral signatures (Tran et al. 2018): top singular vector")
class SpectralSignatures(BackdoorDetector):
    """Data-level: rows with a large projection on a label's top singular direction are poisoned."""

    level = "data"
    needs_labels = True

    def __init__(self, eps: float = 0.1, threshold: float = 2.0, layer: str = "penultimate", seed: int = 0,
                 batch_size: int = 512) -> None:
        super().__init__(seed, batch_size)
        self.layer = _check_layer(layer)
        self.eps = _check_fraction(eps, "eps")
        self.threshold = float(check_positive(threshold, "threshold"))

    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None, classes: int) -> BackdoorDetection:
        assert y is not None
        acts = penultimate(model, x, self.batch_size, self.layer).cpu().double()
        yc = y.cpu()
        flags = torch.zeros(x.shape[0], dtype=torch.bool)
        scores = torch.zeros(x.shape[0], dtype=torch.float64)
        ratio = torch.full((classes,), math.nan, dtype=torch.float64)
        for c in range(classes):
            rows = torch.nonzero(yc == c).flatten()
            if rows.numel() < 3:
                continue
            r = acts[rows] - acts[rows].mean(0, keepdim=True)
            _, s, vh = torch.linalg.svd(r, full_matrices=False)
            sc = (r @ vh[0]) ** 2
            scores[rows] = sc
            ratio[c] = (s[0] ** 2 / (s[1] ** 2).clamp_min(1e-12)) if s.numel() > 1 else math.nan
            k_remove = min(rows.numel(), int(math.ceil(1.5 * self.eps * rows.numel())))
            flags[rows[sc.topk(k_remove).indices]] = True
        valid = ~torch.isnan(ratio)
        anomaly = torch.full_like(ratio, math.nan)
        anomaly[valid] = mad_anomaly(ratio[valid]) * torch.sign(ratio[valid] - ratio[valid].median())
        k = int(torch.where(valid, anomaly, torch.full_like(anomaly, -math.inf)).argmax())
        score = float(anomaly[k])
        flagged = score > self.threshold
        evidence = {"spectral_ratio": ratio.tolist(), "anomaly": anomaly.tolist(), "eps": self.eps,
                    "removed_per_class": "ceil(1.5 * eps * n_c)"}
        return BackdoorDetection(self.name, "data", score, flagged, k if flagged else None, evidence,
                                 sample_scores=scores.float(), sample_flags=flags, threshold=self.threshold)
