"""Deep Compression (Han, Mao & Dally 2016, "Deep Compression: compressing deep neural networks with
pruning, trained quantization and Huffman coding", ICLR).

Three stages, each measured on the real file:

1. **Prune** the smallest weights of every layer (per-layer ``sparsity``) and retrain with the
   mask fixed (:func:`fortify.compress.finetune.finetune`). With ``prune_rounds = R > 1`` the
   pruning is iterative, as in the paper (Han et al. 2015 prune and retrain repeatedly): round
   ``r = 1..R`` raises every layer's sparsity to ``s (1 - (1 - r/R)^3)`` (the cubic schedule of Zhu &
   Gupta 2018, "To prune, or not to prune") and retrains ``prune_epochs / R`` epochs (at least 1),
   so the total retraining budget is unchanged.
2. **Trained quantization / weight sharing**: the surviving weights of each layer are clustered by
   1-D k-means into ``2^bits`` centroids with linear initialisation over ``[min, max]`` (the
   paper's best init); every weight becomes its centroid. The centroids are then fine-tuned: the
   forward pass uses ``W = C[idx] * mask``, so the gradient of centroid ``c_k`` is the sum of the
   gradients of the weights in cluster ``k`` (the paper's eq. 3).
3. **Entropy coding**: :func:`fortify.compress.formats.save_compressed` with ``encoding="codebook"``
   writes the per-layer codebooks plus an LZMA-coded stream of the packed mask and ``bits``-bit
   indices (LZMA's adaptive range coder stands in for Huffman coding).

The compression ratio reported is ``bytes(dense float32 safetensors) / bytes(compressed file)``.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from fortify.compress.base import (
    TRANSFORMS, Data, Transform, TransformResult, check_data, check_fraction, check_int, count_params, weight_layers,
)
from fortify.compress.finetune import apply_masks, finetune, masks_of
from fortify.compress.prune.magnitude import _keep_top
from fortify.compress.reparam import ReparamNet
from fortify.errors import ConfigError
from fortify.models.state import train_mode
from fortify.train import Trainer, TrainConfig
from fortify.train.tasks import create as create_task


def kmeans_1d(values: torch.Tensor, k: int, iters: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means on 1-D ``values (n,)`` with linear init; returns ``(centroids (k',), labels (n,))``.

    Empty clusters are dropped, so ``k' <= k``.
    """
    v = values.double()
    c = torch.linspace(float(v.min()), float(v.max()), k, dtype=torch.float64, device=v.device)
    for _ in range(iters):
        labels = (v[:, None] - c[None, :]).abs().argmin(1)
        sums = torch.zeros_like(c).index_add_(0, labels, v)
        counts = torch.zeros_like(c).index_add_(0, labels, torch.ones_like(v))
        new = torch.where(counts > 0, sums / counts.clamp_min(1), c)
        if torch.allclose(new, c):
            break
        c = new
    labels = (v[:, None] - c[None, :]).abs().argmin(1)
    used = torch.unique(labels)
    remap = torch.full((k,), -1, dtype=torch.long, device=v.device)
    remap[used] = torch.arange(used.numel(), device=v.device)
    return c[used].float(), remap[labels]


def share_weights(model: nn.Module, bits: int | Mapping[int, int]) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Replace the non-zero weights of each Conv2d/Linear by their k-means centroid, in place.

    Returns ``{layer index: (codebook (k,), labels (nnz,))}`` in row-major order of the non-zeros.
    """
    books: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    with torch.no_grad():
        for i, m in weight_layers(model):
            b = bits.get(i, 8) if isinstance(bits, Mapping) else bits
            flat = m.weight.reshape(-1)
            nz = flat != 0
            if not bool(nz.any()):
                continue
            book, labels = kmeans_1d(flat[nz], 2 ** b)
            flat[nz] = book[labels]
            books[i] = (book, labels)
    return books


class _Codebooks(nn.Module):
    """Trainable centroids; ``weight(i, w)`` rebuilds ``W = C[idx] * mask`` (gradient sums per cluster)."""

    def __init__(self, model: nn.Module, books: Mapping[int, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Validate and store the hyper-parameters (ConfigError naming the bad one)."""
        super().__init__()
        self.centroids = nn.ParameterDict({str(i): nn.Parameter(b.clone()) for i, (b, _) in books.items()})
        self.labels = {i: lab for i, (_, lab) in books.items()}
        self.masks = masks_of(model)
        self.net = ReparamNet(model, self.weight)
        for p in model.parameters():
            p.requires_grad_(False)

    def weight(self, i: int, w: torch.Tensor) -> torch.Tensor:
        """Effective weight of layer ``i`` in the forward pass (same shape as ``w``)."""
        if i not in self.labels:
            return w
        flat = torch.zeros(w.numel(), dtype=w.dtype, device=w.device)
        flat = flat.index_put((torch.nonzero(self.masks[i].reshape(-1)).reshape(-1),), self.centroids[str(i)][self.labels[i]])
        return flat.reshape(w.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` in [0, 1] -> logits ``(N, K)``."""
        return self.net(x)

    def write_back(self, model: nn.Module) -> None:
        """Copy the shared-weight tensors ``C[idx] * mask`` into ``model``'s layers."""
        layers = dict(weight_layers(model))
        with torch.no_grad():
            for i in self.labels:
                layers[i].weight.copy_(self.weight(i, layers[i].weight))


def dense_bytes(model: nn.Module) -> int:
    """Bytes of the dense float32 safetensors file of ``model`` (the Deep Compression baseline)."""
    from fortify.compress.formats import save_compressed

    with tempfile.TemporaryDirectory(prefix="fortify-dc-") as tmp:
        return save_compressed(model, Path(tmp, "dense.safetensors"), encoding="dense").stat().st_size


def codebook_bytes(model: nn.Module) -> int:
    """Bytes of the entropy-coded codebook file of ``model``."""
    from fortify.compress.formats import save_compressed

    with tempfile.TemporaryDirectory(prefix="fortify-dc-") as tmp:
        return save_compressed(model, Path(tmp, "dc.safetensors"), encoding="codebook").stat().st_size


@TRANSFORMS.register("deep_compression", help="Deep Compression: prune, k-means weight sharing, entropy-coded file")
class DeepCompression(Transform):
    """Args: ``sparsity`` (float in [0, 1) or ``{layer index: fraction}``), ``bits`` (int 1..8 or per
    layer), ``prune_epochs`` / ``share_epochs`` of retraining (0 skips), ``task``/``task_args``
    (``pgd_at`` for a robust variant), ``config`` (TrainConfig fields), ``prune_rounds`` (iterative
    pruning on a cubic schedule, the retraining epochs split over the rounds)."""

    def __init__(self, sparsity: float | Mapping[int, float] = 0.92, bits: int | Mapping[int, int] = 5,
                 prune_epochs: int = 1, share_epochs: int = 1, task: str = "standard",
                 task_args: Mapping[str, Any] | None = None, config: Mapping[str, Any] | None = None,
                 prune_rounds: int = 1) -> None:
        """Validate and store the hyper-parameters (ConfigError naming the bad one)."""
        if isinstance(sparsity, Mapping):
            self.sparsity: float | dict[int, float] = {int(k): check_fraction(v, f"sparsity[{k}]") for k, v in sparsity.items()}
        else:
            self.sparsity = check_fraction(sparsity, "sparsity")
        for b in (bits.values() if isinstance(bits, Mapping) else [bits]):
            if check_int(b, "bits") > 8:
                raise ConfigError(f"bits must be in 1..8, got {b!r}")
        self.bits = {int(k): int(v) for k, v in bits.items()} if isinstance(bits, Mapping) else int(bits)
        self.prune_epochs = check_int(prune_epochs, "prune_epochs", lo=0)
        self.share_epochs = check_int(share_epochs, "share_epochs", lo=0)
        self.prune_rounds = check_int(prune_rounds, "prune_rounds")
        self.task, self.task_args, self.config = task, dict(task_args or {}), dict(config or {})
        self.needs_data = bool(self.prune_epochs or self.share_epochs)

    def _run(self, model: nn.Module, example_inputs: torch.Tensor, data: Data | None) -> TransformResult:
        """Run the algorithm on ``model`` (the private deep copy) and return its result and report."""
        dense = dense_bytes(model)
        cfg = {"lr": 0.01, "weight_decay": 0.0, "batch_size": 128, **self.config}
        rounds = self.prune_rounds
        for r in range(1, rounds + 1):
            frac = 1.0 - (1.0 - r / rounds) ** 3  # cubic schedule; 1.0 in the last round
            masks = {}
            for i, m in weight_layers(model):
                s = self.sparsity.get(i, 0.0) if isinstance(self.sparsity, dict) else self.sparsity
                masks[i] = _keep_top(m.weight.detach().abs().reshape(-1), s * frac).reshape(m.weight.shape)
            apply_masks(model, masks)
            if self.prune_epochs:
                epochs = max(1, round(self.prune_epochs * r / rounds) - round(self.prune_epochs * (r - 1) / rounds))
                finetune(model, check_data(data), task=self.task, task_args=self.task_args,
                         config={**cfg, "epochs": epochs})
        after_prune = count_params(model)[0]
        books = share_weights(model, self.bits)
        if self.share_epochs:
            with train_mode(model):  # the copy trains as the Trainer would train it; requires_grad restored after
                cb = _Codebooks(model, books)
                Trainer(cb, create_task(self.task, **self.task_args),
                        TrainConfig.from_dict({**cfg, "epochs": self.share_epochs}), progress=False).fit(check_data(data))
                cb.write_back(model)
        size = codebook_bytes(model)
        nnz, total = count_params(model)
        return TransformResult(model, {"bytes_dense": dense, "bytes_compressed": size, "ratio": dense / size,
                                       "params_nonzero": nnz, "params_total": total, "params_after_prune": after_prune,
                                       "clusters": {str(i): int(b.numel()) for i, (b, _) in books.items()}})


__all__ = ["DeepCompression", "codebook_bytes", "dense_bytes", "kmeans_1d", "share_weights"]
