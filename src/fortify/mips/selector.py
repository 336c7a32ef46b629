"""Per-query choice of index and budget: the cheapest configuration predicted to reach a target recall.

Features of a query ``u`` come from the first step of a search that the chosen configuration continues, so they
cost (almost) nothing extra. With a graph index in the pool (the default when one is): its router, the scores of
the ``sqrt(n)`` cluster keys (each cluster's longest member) and of the seeds (:meth:`GraphIndex.entry_points`),
which every graph configuration needs anyway; the pool gains ``(graph, 0)``, "stop at the entry points" (the seeds'
top-k, no beam). Without one: an IVF index's coarse clusters (``nlist`` inner products) plus an early probe of its
best cluster, which an IVF configuration continues. The features (7): ``log ||u||``; the best key/centroid score,
the gaps best - 2nd and best - 10th and the softmax entropy of the scores (all scale-free, divided by ``||u||``);
the early-probe statistic of learned adaptive early termination (Li, Zhang, Andersen, He 2020): the gap between
the k-th best inner product found so far (seeds, or the best cluster's members) and the 2nd best score, and the
same against the best. For every configuration ``(index, budget)`` a logistic model of the per-query recall@k
(soft targets, L2-regularised, fitted by Newton steps in numpy) is trained on held-out queries, and a rule picks
per query (costs: mean inner products measured on the training queries, as the selector runs them). ``rule="budget"`` (default): the target is a mean recall, so the choice is the Lagrangian relaxation of
"least mean cost subject to mean recall >= target": each query goes to the configuration maximising its predicted
recall minus a price times its cost, and queries that gain little from more work get less of it (a single fixed
configuration that overshoots the target leaves that slack unused). ``rule="threshold"``: the cheapest
configuration whose predicted recall is at least ``target + margin``. The knob (price or margin) is calibrated
out of fold: the cheapest setting whose choices keep the mean recall of each of two folds of the training queries,
less ``confidence`` standard errors, at the target (the two fold models, averaged, then predict). The
selector's cost counts its features on top of the search; the work is reused, not repeated: the graph's beam
starts from the features' seeds, an IVF fed by its own features continues from their probe order and first
cluster; any other configuration runs as it is (its full cost on top of the features).
Reported by :meth:`Selector.evaluate` as recall and cost against the best single configuration at the target.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from fortify.errors import ConfigError, InputError
from fortify.mips.base import Index, SearchCost, SearchResult, as_matrix, check_option, recall_at_k, topk_rows
from fortify.mips.exact import exact_topk
from fortify.mips.graph import GraphIndex
from fortify.mips.ivf import IVFIndex, scan_clusters

Config = tuple[str, int]


def _logistic(X: np.ndarray, y: np.ndarray, l2: float = 1e-2, steps: int = 25) -> np.ndarray:
    """Weights ``(f,)`` of a logistic model of soft targets ``y (m,)`` in [0, 1] on ``X (m, f)`` (Newton)."""
    w = np.zeros(X.shape[1])
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-np.clip(X @ w, -30, 30)))
        grad = X.T @ (p - y) / len(y) + l2 * w
        H = (X * (p * (1 - p))[:, None]).T @ X / len(y) + l2 * np.eye(X.shape[1])
        w -= np.linalg.solve(H, grad)
    return w


@dataclass
class SelectorReport:
    """Held-out result: the selector's mean recall and cost against the cheapest single configuration whose
    training recall reached the target (``best``), and every configuration's measured recall/cost."""

    target: float
    k: int
    recall: float
    inner_products: float
    best: Config | None
    best_recall: float
    best_inner_products: float
    table: dict[Config, tuple[float, float]] = field(default_factory=dict)
    choices: dict[Config, int] = field(default_factory=dict)
    #: the cheapest random mix of two fixed configurations whose training recall is the target (no per-query
    #: choice: query i goes to ``mix[0]`` with probability ``mix_weight``): its recall and cost on these queries
    mix: tuple[Config, Config] | None = None
    mix_weight: float = float("nan")
    mix_recall: float = float("nan")
    mix_inner_products: float = float("nan")

    @property
    def cost_ratio(self) -> float:
        """Best single configuration's cost over the selector's (> 1: the selector is cheaper)."""
        return self.best_inner_products / self.inner_products if self.inner_products else float("nan")


class Selector:
    """Choose ``(index, budget)`` per query among ``indexes`` (name -> built index, same ``V``) for ``target``
    recall@``k``. ``budgets``: the budgets tried per index (default: each index's ladder); ``features``: the
    index whose first search step gives the features (a :class:`GraphIndex` or an :class:`IVFIndex`; default the
    pool's ``"graph"``, else its ``"ivf"``); ``ivf``: kept for the IVF features (same as ``features=``);
    ``rule``: ``"budget"`` (least mean cost at mean recall >= target, default) or ``"threshold"`` (each query's
    predicted recall >= target + a margin); ``confidence``: standard errors of the out-of-fold mean recall kept
    above the target when calibrating (0: the plain mean)."""

    def __init__(self, indexes: Mapping[str, Index], *, target: float = 0.95, k: int = 10,
                 budgets: Mapping[str, list[int]] | None = None, ivf: IVFIndex | None = None,
                 features: Index | None = None, rule: str = "budget", confidence: float = 1.0) -> None:
        if rule not in ("budget", "threshold"):
            raise ConfigError(f"rule must be 'budget' or 'threshold', got {rule!r}")
        check_option(confidence, "confidence", minimum=0.0)
        self.rule, self.confidence = rule, float(confidence)
        if not 0 < target <= 1:
            raise ConfigError(f"target recall must be in (0, 1], got {target!r}")
        if not indexes:
            raise ConfigError("the selector needs at least one index")
        probe = features if features is not None else ivf if ivf is not None else \
            indexes.get("graph") if isinstance(indexes.get("graph"), GraphIndex) else indexes.get("ivf")
        if not isinstance(probe, (IVFIndex, GraphIndex)):
            raise ConfigError("the selector's features need a graph or IVF index: pass features= or include "
                              "'graph' or 'ivf' in indexes")
        self.indexes, self.target, self.k, self.probe = dict(indexes), float(target), int(k), probe
        self.ivf = probe if isinstance(probe, IVFIndex) else None
        self.configs: list[Config] = [(name, int(b)) for name, idx in self.indexes.items()
                                      for b in (budgets or {}).get(name, idx.budgets())]
        if isinstance(probe, GraphIndex):  # "stop at the entry points": the seeds' top-k, nothing more
            self.configs += [(name, 0) for name, idx in self.indexes.items() if idx is probe]
        self.weights = np.empty((0, 0))
        self.cost = np.empty(0)
        self.margin = 0.0
        self.mean = np.zeros(0)
        self.std = np.ones(0)

    def features(self, U: np.ndarray) -> tuple[np.ndarray, float]:
        """``(features (q, 7), inner products per query)`` of queries ``U (q, d)``."""
        F, cost, _ = self._features(U)
        return F, float(cost.mean())

    def _features(self, U: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Features, their cost, and what a search can reuse: IVF ``(probe order (q, p), early ids, scores)``;
        graph ``(router scores, seed ids, seed scores)``."""
        norm = np.maximum(np.linalg.norm(U, axis=1), 1e-30)
        if isinstance(self.probe, GraphIndex):
            seeds, ss, srt, cost = self.probe.entry_points(U)
            m = min(10, srt.shape[1])
            vals = np.where(np.isfinite(srt[:, :m]), srt[:, :m], np.nan)
            vals = np.where(np.isnan(vals), np.nanmin(vals, axis=1, keepdims=True), vals)
            s = np.where(np.isfinite(srt), srt, vals[:, -1:])
            found, _ = topk_rows(ss, min(self.k, ss.shape[1]))
            found = np.take_along_axis(ss, found, axis=1)
            reuse: tuple[np.ndarray, np.ndarray, np.ndarray] = (srt, seeds, ss)
        else:
            s = self.probe.probe_scores(U)
            order, _ = topk_rows(s, s.shape[1])
            vals = np.take_along_axis(s, order[:, :10], axis=1)
            early, found, rows = scan_clusters(self.probe.V, self.probe.perm, self.probe.offsets, U,
                                               order[:, :1], min(self.k, self.probe.n))
            cost = s.shape[1] + rows
            reuse = (order, early, found)
        v = vals / norm[:, None]
        z = (s - s.max(axis=1, keepdims=True)) / np.maximum(s.std(axis=1, keepdims=True), 1e-12)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        ent = -(p * np.log(np.maximum(p, 1e-30))).sum(axis=1)
        second = v[:, 1] if v.shape[1] > 1 else v[:, 0]
        best_found = np.max(np.where(np.isfinite(found), found, -np.inf), axis=1)
        kth = np.where(np.isfinite(found[:, -1]), found[:, -1], np.where(np.isfinite(best_found), best_found,
                                                                          second * norm)) / norm
        F = np.stack([np.log(norm), v[:, 0], v[:, 0] - second, v[:, 0] - v[:, -1], ent, kth - second,
                      kth - v[:, 0]], axis=1)
        return F, np.asarray(cost, dtype=np.float64), reuse

    def _design(self, F: np.ndarray) -> np.ndarray:
        return np.hstack([(F - self.mean) / self.std, np.ones((F.shape[0], 1))])

    def _measure(self, U: np.ndarray, truth: np.ndarray, *, standalone: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Per configuration and query: recall@k ``(c, q)`` and inner products ``(c, q)``; as the selector runs
        them (marginal cost after the features, whose probe they reuse) or ``standalone`` (each index alone)."""
        R = np.empty((len(self.configs), U.shape[0]))
        C = np.empty_like(R)
        reuse = None if standalone else self._features(U)[2]
        for i, (name, b) in enumerate(self.configs):
            if reuse is None and b == 0:  # the entry points alone, paid in full
                F = self._features(U)
                ids, _, ips = self._run(i, U, np.arange(U.shape[0]), F[2])
                ips = ips + F[1]
            elif reuse is None:
                res = self.indexes[name].search(U, self.k, b)
                ids, ips = res.ids, res.cost.per_query
            else:
                ids, _, ips = self._run(i, U, np.arange(U.shape[0]), reuse)
            R[i] = recall_at_k(ids, truth)
            C[i] = ips
        return R, C

    def _run(self, i: int, Q: np.ndarray, rows: np.ndarray,
             reuse: tuple[np.ndarray, np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Configuration ``i`` on queries ``Q[rows]``: ``(ids, scores, inner products beyond the features)``. The
        graph that gave the features starts its beam from their seeds (budget 0: returns the seeds' top-k); an IVF
        that gave them continues from their probe order and first cluster; the graph fed by IVF features starts
        from that cluster's top-k."""
        order, early, found = reuse
        name, b = self.configs[i]
        index = self.indexes[name]
        if index is self.probe and isinstance(index, GraphIndex):
            if b == 0:
                pos, sc = topk_rows(found[rows], self.k)
                ids = np.take_along_axis(early[rows], pos, axis=1)
                return np.where(np.isfinite(sc), ids, -1), sc, np.zeros(rows.size)
            if b < index.n:
                return index.search_from(Q[rows], self.k, b, (early[rows], found[rows]))
        if self.ivf is not None and index is self.ivf:
            sizes = np.diff(self.ivf.offsets)[order[rows]]
            need = np.argmax(np.cumsum(sizes, axis=1) >= self.k, axis=1) + 1  # as IVFIndex: >= k rows
            per_q = np.maximum(b, need)
            width = int(per_q.max())
            if width > 1:
                probes = np.where(np.arange(1, width)[None, :] < per_q[:, None], order[rows, 1:width], -1)
                more_i, more_s, more_rows = scan_clusters(self.ivf.V, self.ivf.perm, self.ivf.offsets, Q[rows],
                                                          probes, self.k)
            else:
                more_i = np.full((rows.size, self.k), -1, dtype=np.int64)
                more_s = np.full((rows.size, self.k), -np.inf, dtype=np.float32)
                more_rows = np.zeros(rows.size)
            all_i = np.concatenate([early[rows], more_i], axis=1)
            pos, vals = topk_rows(np.concatenate([found[rows], more_s], axis=1), self.k)
            return np.take_along_axis(all_i, pos, axis=1), vals, more_rows
        if self.ivf is not None and isinstance(index, GraphIndex) and b < index.n:
            return index.search_from(Q[rows], self.k, b, (early[rows], found[rows]))
        res = index.search(Q[rows], self.k, b)
        return res.ids, res.scores, res.cost.per_query

    def fit(self, U: object, truth: np.ndarray | None = None) -> "Selector":
        """Train on held-out queries ``U (q, d)`` (``truth (q, k)``: their exact top-k, computed if omitted)."""
        Q = as_matrix(U, "U")
        if Q.shape[0] < 10:
            raise InputError(f"the selector needs at least 10 training queries, got {Q.shape[0]}")
        truth = self._truth(Q) if truth is None else truth
        R, C = self._measure(Q, truth)
        F, _ = self.features(Q)
        self.mean, self.std = F.mean(axis=0), np.maximum(F.std(axis=0), 1e-9)
        X = self._design(F)
        self.cost = C.mean(axis=1)  # marginal: the features are paid by every query
        # out-of-fold predictions (2 folds) calibrate the margin, and the same two fold models (averaged) predict
        # at search time, so the calibration holds for the models used (a refit on every query would not be)
        fold = np.arange(Q.shape[0]) % 2
        pred = np.empty((Q.shape[0], len(self.configs)))
        ws = []
        for f in (0, 1):
            w = np.stack([_logistic(X[fold != f], R[i, fold != f]) for i in range(len(self.configs))])
            pred[fold == f] = 1.0 / (1.0 + np.exp(-np.clip(X[fold == f] @ w.T, -30, 30)))
            ws.append(w)
        self.weights = np.stack(ws)  # (2, configs, features + 1)
        self.margin = self._calibrate(pred, R, fold)  # the rule's knob: a price ("budget") or a margin
        return self

    def _calibrate(self, pred: np.ndarray, R: np.ndarray, fold: np.ndarray) -> float:
        """The rule's knob from out-of-fold predictions ``pred (q, c)`` and measured recalls ``R (c, q)``: the
        cheapest setting whose choices keep each fold's mean recall, less ``confidence`` standard errors, at
        the target. ``"threshold"``: the smallest margin over the target a query's predicted recall must clear;
        ``"budget"``: the largest price per inner product (bisection on a log scale)."""
        def ok(knob: float) -> bool:
            got = R[self._pick(pred, knob), np.arange(pred.shape[0])]
            lows = [got[fold == f].mean() - self.confidence * got[fold == f].std() / np.sqrt((fold == f).sum())
                    for f in (0, 1)]
            return min(lows) >= self.target

        if self.rule == "threshold":
            lo, hi = -1.0, 1.0
            for _ in range(30):  # smallest margin whose choices reach the target on each fold's held-out queries
                mid = 0.5 * (lo + hi)
                lo, hi = (lo, mid) if ok(mid) else (mid, hi)
            return hi
        if not ok(0.0):
            return 0.0
        lo, hi = -8.0, 4.0  # log10 of the price, inner products normalised by the dearest configuration
        for _ in range(30):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if ok(10.0 ** mid) else (lo, mid)
        return float(10.0 ** lo)

    def _truth(self, Q: np.ndarray) -> np.ndarray:
        exact = next((i for i in self.indexes.values() if i.exact), None)
        if exact is not None:
            return exact.search(Q, self.k).ids
        from fortify.mips.head import _vectors_of

        return exact_topk(_vectors_of(next(iter(self.indexes.values()))), Q, self.k)[0]

    def _predict(self, X: np.ndarray) -> np.ndarray:
        z = np.einsum("qf,mcf->mqc", X, self.weights)
        return (1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))).mean(axis=0)  # (q, c): the fold models' mean

    def _pick(self, pred: np.ndarray, knob: float) -> np.ndarray:
        """Per query a configuration. ``"threshold"``: the cheapest with predicted recall >= target + ``knob``
        (else the best predicted). ``"budget"`` (Lagrangian relaxation of "least mean cost with mean recall >=
        target"): the one maximising predicted recall - ``knob`` * cost / the dearest cost, so queries whose
        recall gains little from more work get less of it, and the mean, not each query, meets the target."""
        if self.rule == "budget":
            gain = pred - knob * (self.cost / max(float(self.cost.max()), 1e-12))[None, :]
            return np.argmax(gain - 1e-12 * self.cost[None, :], axis=1)
        order = np.argsort(self.cost, kind="stable")
        ok = pred[:, order] >= self.target + knob
        first = np.where(ok.any(axis=1), ok.argmax(axis=1), -1)
        best = order[np.argmax(pred[:, order] - 1e-9 * np.arange(len(order)), axis=1)]
        return np.where(first >= 0, order[np.maximum(first, 0)], best)

    def choose(self, U: object) -> tuple[np.ndarray, float]:
        """Configuration index per query ``(q,)`` (into :attr:`configs`) and the features' inner products."""
        if self.weights.size == 0:
            raise ConfigError("the selector is not trained: call fit(U_heldout) first")
        pick, fcost, _ = self._choose(as_matrix(U, "U"))
        return pick, float(fcost.mean())

    def _choose(self, Q: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        F, fcost, reuse = self._features(Q)
        return self._pick(self._predict(self._design(F)), self.margin), fcost, reuse

    def search(self, U: object) -> SearchResult:
        """Search every query with its chosen configuration; the cost includes the features."""
        Q = as_matrix(U, "U")
        t0 = time.perf_counter()
        if self.weights.size == 0:
            raise ConfigError("the selector is not trained: call fit(U_heldout) first")
        pick, fcost, (order, early, found) = self._choose(Q)
        ids = np.empty((Q.shape[0], self.k), dtype=np.int64)
        sc = np.empty((Q.shape[0], self.k), dtype=np.float32)
        ips = fcost.astype(np.float64)
        reuse = (order, early, found)
        for c in np.unique(pick):
            rows = np.flatnonzero(pick == c)
            ids[rows], sc[rows], more = self._run(int(c), Q, rows, reuse)
            ips[rows] += more
        sec = time.perf_counter() - t0
        return SearchResult(ids, sc, SearchCost(float(ips.mean()), ips, float(2 * Q.shape[1] * ips.sum()), sec))

    def evaluate(self, U: object, truth: np.ndarray | None = None,
                 train: tuple[np.ndarray, np.ndarray] | None = None) -> SelectorReport:
        """Selector vs the cheapest single configuration reaching the target on ``train`` (``(U, truth)`` of the
        training queries; default: the best on these queries, an optimistic baseline)."""
        Q = as_matrix(U, "U")
        truth = self._truth(Q) if truth is None else truth
        res = self.search(Q)
        rec = float(recall_at_k(res.ids, truth).mean())
        R, C = self._measure(Q, truth, standalone=True)
        if train is not None:
            Rt, Ct = self._measure(as_matrix(train[0], "U"), train[1], standalone=True)
        else:
            Rt, Ct = R, C
        ok = [i for i in range(len(self.configs)) if Rt[i].mean() >= self.target]
        best = min(ok, key=lambda i: Ct[i].mean()) if ok else None
        picks = self.choose(Q)[0]
        mix = _cheapest_mix(Rt.mean(axis=1), Ct.mean(axis=1), self.target)
        mixed: dict[str, Any] = {}
        if mix is not None:
            i, j, f = mix
            mixed = dict(mix=(self.configs[i], self.configs[j]), mix_weight=f,
                         mix_recall=float(f * R[i].mean() + (1 - f) * R[j].mean()),
                         mix_inner_products=float(f * C[i].mean() + (1 - f) * C[j].mean()))
        return SelectorReport(
            target=self.target, k=self.k, recall=rec, inner_products=res.cost.inner_products,
            best=self.configs[best] if best is not None else None,
            best_recall=float(R[best].mean()) if best is not None else float("nan"),
            best_inner_products=float(C[best].mean()) if best is not None else float("nan"),
            table={c: (float(R[i].mean()), float(C[i].mean())) for i, c in enumerate(self.configs)},
            choices={self.configs[int(c)]: int((picks == c).sum()) for c in np.unique(picks)}, **mixed)


def _cheapest_mix(rec: np.ndarray, cost: np.ndarray, target: float) -> tuple[int, int, float] | None:
    """The cheapest mix ``(i, j, f)`` of configurations ``i`` (weight ``f``) and ``j`` whose mean recall ``f
    rec_i + (1 - f) rec_j`` is ``target`` (``rec, cost (c,)``; a single configuration when ``f = 0``): the lower
    convex hull of the fixed configurations at the target, what a choice without features achieves."""
    best: tuple[float, int, int, float] | None = None
    for j in np.flatnonzero(rec >= target):
        for i in range(rec.size):
            f = 0.0 if rec[i] >= rec[j] else min(1.0, (rec[j] - target) / (rec[j] - rec[i]))
            c = f * cost[i] + (1 - f) * cost[j]
            if best is None or c < best[0]:
                best = (float(c), int(i), int(j), float(f))
    return None if best is None else best[1:]
