"""FastHead: a linear layer's top-k classes by maximum inner product search instead of every logit.

For ``nn.Linear(in, C)`` with weight ``W (C, in)`` and bias ``b (C,)`` the logit of class ``c`` for features
``h (in,)`` is ``<[W_c, b_c], [h, 1]>``: the bias becomes an extra dimension, so the top-k logits are the MIPS
answers of the query ``[h, 1]`` over ``V = [W, b] (C, in + 1)``. The layer is read once at construction (its
weights are copied into the index: the model is never mutated, later changes to it are not seen).
``head(h, k, budget)`` returns ``(ids (N, k), logits (N, k))`` (exact logits of the returned classes) and records
the cost; :meth:`FastHead.compare` measures recall@k and the speed-up against the exact head (``h @ W.T + b``).
Cost per row: the index's inner products of dimension ``in + 1`` instead of ``C``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from fortify.errors import InputError
from fortify.mips.base import INDEXES, Index, SearchResult, as_matrix, recall_at_k
from fortify.mips.exact import exact_topk


def head_vectors(layer: nn.Linear) -> np.ndarray:
    """``[W, b] (C, in + 1)`` float32 of ``layer`` (zero bias column when it has none); a copy, no grad."""
    if not isinstance(layer, nn.Linear):
        raise InputError(f"FastHead needs a torch.nn.Linear output layer, got {type(layer).__name__}")
    with torch.no_grad():
        W = layer.weight.detach().to("cpu", torch.float32).numpy()
        b = (layer.bias.detach().to("cpu", torch.float32).numpy() if layer.bias is not None
             else np.zeros(W.shape[0], dtype=np.float32))
    return np.ascontiguousarray(np.hstack([W, b[:, None]]), dtype=np.float32)


@dataclass(frozen=True)
class HeadComparison:
    """FastHead vs the exact head on the same rows: mean recall@k, seconds of each, inner products per row."""

    recall: float
    k: int
    fast_seconds: float
    exact_seconds: float
    inner_products: float
    classes: int

    @property
    def speedup(self) -> float:
        return self.exact_seconds / self.fast_seconds if self.fast_seconds > 0 else float("inf")


class FastHead:
    """Top-k classes of ``model_head`` through a MIPS index (``index``: a registered name or an :class:`Index`
    class, built over ``[W, b]`` with ``options``)."""

    def __init__(self, model_head: nn.Linear, index: str | type[Index] = "ivf", **options: Any) -> None:
        V = head_vectors(model_head)
        cls = INDEXES.get(index) if isinstance(index, str) else index
        self.in_features = V.shape[1] - 1
        self.index: Index = cls.build(V, **options)
        self.last: SearchResult | None = None
        self._V: np.ndarray | None = None

    def _queries(self, h: object) -> np.ndarray:
        x = as_matrix(h, "features")
        if x.shape[1] != self.in_features:
            raise InputError(f"features have {x.shape[1]} columns but the head takes {self.in_features}")
        return np.hstack([x, np.ones((x.shape[0], 1), dtype=np.float32)])

    def __call__(self, h: object, k: int = 10, budget: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(ids (N, k), logits (N, k))`` of the head's top-k classes for features ``h (N, in)``."""
        res = self.index.search(self._queries(h), k, budget)
        self.last = res
        return res.ids, res.scores

    def exact(self, h: object, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """The exact top-k over every logit (the reference), ``(ids, logits)``."""
        q = self._queries(h)
        if k > self.index.n:
            raise InputError(f"k={k} is larger than the number of classes {self.index.n}")
        if self._V is None:
            self._V = _vectors_of(self.index)
        return exact_topk(self._V, q, k)

    def compare(self, h: object, k: int = 10, budget: int | None = None, *, exact_head: nn.Linear | None = None,
                repeats: int = 3) -> HeadComparison:
        """Recall@k of the fast head and both timings (median of ``repeats``); the exact head is
        ``exact_head(h)`` + top-k in torch when given (the model's own layer), else the chunked exact search."""
        q = as_matrix(h, "features")
        fast_t, exact_t = [], []
        truth = np.empty(0)
        for _ in range(max(1, repeats)):
            t0 = time.perf_counter()
            ids, _ = self(q, k, budget)
            fast_t.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            if exact_head is not None:
                with torch.no_grad():
                    dev = next(iter(exact_head.parameters()), torch.empty(0)).device
                    truth = torch.topk(exact_head(torch.from_numpy(q).to(dev)), k, dim=1).indices.cpu().numpy()
            else:
                truth = self.exact(q, k)[0]
            exact_t.append(time.perf_counter() - t0)
        assert self.last is not None
        return HeadComparison(recall=float(recall_at_k(ids, truth).mean()), k=k, fast_seconds=float(np.median(fast_t)),
                              exact_seconds=float(np.median(exact_t)), inner_products=self.last.cost.inner_products,
                              classes=self.index.n)


def _vectors_of(index: Index) -> np.ndarray:
    """The ``(n, d)`` vectors an index holds in original id order (for the exact reference)."""
    arrays = index._arrays()
    if "Vaug" in arrays:
        scale = float(arrays["scale"][0])
        return np.ascontiguousarray(arrays["Vaug"][:, :-1] * scale)
    V = arrays["V"]
    if "perm" in arrays:
        out = np.empty_like(V)
        out[arrays["perm"]] = V
        return out
    return V
