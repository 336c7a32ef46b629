"""A real many-class output layer for benchmarks: the item factors of a BPR matrix-factorisation model trained on
a generated implicit-feedback ratings set (no download; deterministic in ``seed``).

Data (generated): ``users`` users and ``items`` items with hidden tastes in ``taste`` dimensions grouped into
genres, Zipf item popularity; each user consumes ``per_user`` distinct items drawn by Gumbel-top-k from
``softmax(<p_u, q_i> + log popularity_i)``. Model: BPR (Rendle et al. 2009, "BPR: Bayesian personalized ranking
from implicit feedback"): user factors ``P (users, dim)``, item factors ``Q (items, dim)``, item bias ``b``; loss
``-log sigmoid(x_ui - x_uj)`` with ``x_ui = <p_u, q_i> + b_i`` over (user, consumed item, random item) triples,
Adam, ``epochs`` passes. The head is the linear layer ``x -> Q x + b`` with ``items`` classes: MIPS over
``V = [Q, b] (items, dim + 1)`` with queries ``[p_u, 1]``; its norms grow with popularity (unnormalised, like
real recommenders). Cost: ``epochs * users * per_user`` triples of ``O(dim)`` each (seconds to a few minutes).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fortify.io import atomic_target


@dataclass(frozen=True)
class RealHead:
    """The trained head: ``layer`` (``nn.Linear(dim, items)``), the users' factors ``users (u, dim)`` (its
    inputs), and the MIPS view ``V (items, dim + 1)`` / ``queries (u, dim + 1)``; ``final_loss`` of training."""

    layer: nn.Linear
    users: np.ndarray
    final_loss: float

    @property
    def V(self) -> np.ndarray:
        return np.hstack([self.layer.weight.detach().cpu().numpy(), self.layer.bias.detach().cpu().numpy()[:, None]])

    @property
    def queries(self) -> np.ndarray:
        return np.hstack([self.users, np.ones((self.users.shape[0], 1), dtype=np.float32)])


def ratings(users: int, items: int, *, per_user: int = 40, taste: int = 16, genres: int = 50,
            seed: int = 0) -> np.ndarray:
    """``(users * per_user, 2)`` int64 (user, item) consumption pairs of the generated set."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((genres, taste)).astype(np.float32)
    q = centres[rng.integers(0, genres, items)] + 0.5 * rng.standard_normal((items, taste)).astype(np.float32)
    p = centres[rng.integers(0, genres, users)] + 0.5 * rng.standard_normal((users, taste)).astype(np.float32)
    logpop = -1.1 * np.log(rng.permutation(items) + 1.0).astype(np.float32)
    out = np.empty((users, per_user), dtype=np.int64)
    for s in range(0, users, 256):
        z = p[s:s + 256] @ q.T / np.sqrt(taste) * 2.0 + logpop
        z += rng.gumbel(size=z.shape).astype(np.float32)
        out[s:s + 256] = np.argpartition(-z, per_user - 1, axis=1)[:, :per_user]
    return np.stack([np.repeat(np.arange(users), per_user), out.ravel()], axis=1)


def train_bpr(pairs: np.ndarray, users: int, items: int, *, dim: int = 64, epochs: int = 4, batch: int = 8192,
              lr: float = 0.01, reg: float = 1e-5, seed: int = 0) -> RealHead:
    """BPR matrix factorisation on ``pairs (m, 2)``; returns the trained :class:`RealHead`."""
    g = torch.Generator().manual_seed(seed)
    P = nn.Embedding(users, dim)
    Q = nn.Embedding(items, dim)
    b = nn.Embedding(items, 1)
    with torch.no_grad():
        P.weight.normal_(0, 0.1, generator=g)
        Q.weight.normal_(0, 0.1, generator=g)
        b.weight.zero_()
    opt = torch.optim.Adam([*P.parameters(), *Q.parameters(), *b.parameters()], lr=lr)
    data = torch.from_numpy(pairs)
    loss_v = float("nan")
    for _ in range(epochs):
        order = torch.randperm(data.shape[0], generator=g)
        for s in range(0, data.shape[0], batch):
            uu, ii = data[order[s:s + batch]].T
            jj = torch.randint(0, items, ii.shape, generator=g)
            pu = P(uu)
            xi = (pu * Q(ii)).sum(1) + b(ii)[:, 0]
            xj = (pu * Q(jj)).sum(1) + b(jj)[:, 0]
            loss = -nn.functional.logsigmoid(xi - xj).mean() + reg * (pu.square().sum() + Q(ii).square().sum()
                                                                     + Q(jj).square().sum()) / uu.numel()
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss_v = float(loss.detach())
    layer = nn.Linear(dim, items)
    with torch.no_grad():
        layer.weight.copy_(Q.weight)
        layer.bias.copy_(b.weight[:, 0])
    return RealHead(layer=layer, users=P.weight.detach().cpu().numpy().astype(np.float32), final_loss=loss_v)


def real_head(items: int = 50_000, users: int = 20_000, *, dim: int = 64, epochs: int = 4, seed: int = 0,
              cache: str | os.PathLike[str] | None = None) -> RealHead:
    """Generate the ratings, train BPR and return the head; with ``cache`` (an ``.npz`` path) reuse or write it."""
    path = Path(cache) if cache is not None else None
    if path is not None and path.is_file():
        with np.load(path, allow_pickle=False) as z:
            W, bias, U, loss = z["weight"], z["bias"], z["users"], float(z["loss"][0])
        if W.shape == (items, dim) and U.shape == (users, dim):
            layer = nn.Linear(dim, items)
            with torch.no_grad():
                layer.weight.copy_(torch.from_numpy(W))
                layer.bias.copy_(torch.from_numpy(bias))
            return RealHead(layer=layer, users=U, final_loss=loss)
    head = train_bpr(ratings(users, items, seed=seed), users, items, dim=dim, epochs=epochs, seed=seed)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_target(path, what="real-head cache") as tmp, open(tmp, "wb") as fh:
            np.savez(fh, weight=head.layer.weight.detach().cpu().numpy(), bias=head.layer.bias.detach().cpu().numpy(),
                     users=head.users, loss=np.array([head.final_loss]))
    return head
